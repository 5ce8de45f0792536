"""sgc-bench-solvers: solver accuracy against speed on a trained model.

    sgc-bench-solvers --workdir /tmp/digits --output /tmp/digits/solvers
    sgc-bench-solvers --workdir /tmp/digits --output /tmp/s --num_images 32 \
        --grid configs/solver_grid.py --grid.expint.steps="(12,27)"

Scores the first --num_images of --split with every setting of the grid
(`configs/solver_grid.py`), against a tight float64 reference, and writes
results.json, results.csv, work_precision.png and agreement_vs_nfe.png to
--output; prints the Pareto front and the recommended "exact" and "fast"
settings.
"""
import os

from absl import flags, logging
from ml_collections import config_flags

from sgc_jax import solver_bench
from sgc_jax.cli import common

_DEFAULT_GRID = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "solver_grid.py")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("grid", _DEFAULT_GRID, "Path to the solver-grid config.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "A trained sgc-train workdir.")
flags.DEFINE_string("output", None, "Directory for results.json, results.csv and the plots.")
flags.DEFINE_string("split", "test", "The split whose first images are scored.")
flags.DEFINE_integer("num_images", 64, "How many images of the split to score.")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  solver_bench.bench(FLAGS.workdir, FLAGS.grid, output=FLAGS.output, split=FLAGS.split,
                     num_images=FLAGS.num_images)


def run():
  common.run(main)


if __name__ == "__main__":
  run()
