"""sgc-demo: the main job on the embedded default dataset (scikit-learn digits).

    sgc-demo --workdir /tmp/sgc_demo

Builds the digits records, trains the generative classifier, classifies the
test split with the probability-flow likelihood, trains the discriminative
baseline, prints both side by side and writes WORKDIR/report.json.
"""
from absl import flags, logging

from sgc_jax import demo
from sgc_jax.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "sgc_demo", "Where checkpoints, plots and report.json go.")


def main(argv):
  del argv
  # Orbax and TFDS log every save at INFO; progress bars and reports say what matters.
  logging.set_verbosity(logging.WARNING)
  demo.run_demo(FLAGS.workdir)


def run():
  common.run(main)


if __name__ == "__main__":
  run()
