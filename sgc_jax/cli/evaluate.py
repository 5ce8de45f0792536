"""sgc-evaluate: classify a split with the latest checkpoint of a workdir.

    sgc-evaluate --workdir /tmp/digits                  # the config the run saved
    sgc-evaluate --workdir /tmp/digits --config.eval.estimator=denoising   # eval overrides only

Runs the evaluators `config.eval.evaluators` names and writes
WORKDIR/eval_<split>/metrics.json, predictions.csv and PNG plots. A --config
may differ from the trained run's only in its eval block.
"""
import json

from absl import flags, logging
from ml_collections import config_flags

from sgc_jax import evaluation
from sgc_jax.cli import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to the run's ml_collections config file, "
                                "to change eval fields (default: WORKDIR/config.json).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  # Orbax and TFDS log every save at INFO; progress bars and reports say what matters.
  logging.set_verbosity(logging.WARNING)
  reports = evaluation.evaluate(FLAGS.config, FLAGS.workdir)
  print(json.dumps(reports, indent=2))


def run():
  common.run(main, config_from_workdir_flags=True)


if __name__ == "__main__":
  run()
