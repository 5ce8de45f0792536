"""Score-based generative classification in JAX.

`sgc_jax.load(workdir)` restores a trained model (see `sgc_jax.api`).
"""


def __getattr__(name):
  # Imported on first use, so `import sgc_jax.data...` alone does not pull in the models and orbax.
  if name == "load":
    from sgc_jax.api import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f"module 'sgc_jax' has no attribute {name!r}")
