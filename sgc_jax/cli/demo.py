"""sgc-demo: the main job on the embedded default dataset (scikit-learn digits).

    sgc-demo --workdir /tmp/sgc_demo

Builds the digits records, trains the generative classifier, classifies the
test split with the probability-flow likelihood, trains the discriminative
baseline, prints both side by side and writes WORKDIR/report.json;
--results also copies it there (the README's demo table quotes
tools/results/demo.json, bound by tests/test_readme_figures.py).
"""
import os
import shutil

from absl import flags, logging

from sgc_jax import demo
from sgc_jax.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "sgc_demo", "Where checkpoints, plots and report.json go.")
flags.DEFINE_string("results", None, "Also copy report.json here (e.g. tools/results/demo.json, "
                    "the file the README's demo table quotes).")


def main(argv):
  del argv
  # Orbax and TFDS log every save at INFO; progress bars and reports say what matters.
  logging.set_verbosity(logging.WARNING)
  demo.run_demo(FLAGS.workdir)
  if FLAGS.results:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.results)), exist_ok=True)
    shutil.copyfile(os.path.join(FLAGS.workdir, "report.json"), FLAGS.results)
    print(f"results: {FLAGS.results}")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
