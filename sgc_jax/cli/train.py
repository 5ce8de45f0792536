"""sgc-train: train a class-conditional score model (resumes from --workdir).

    sgc-train --config configs/digits.py --workdir /tmp/digits
"""
from absl import flags, logging
from ml_collections import config_flags

from sgc_jax import trainer
from sgc_jax.cli import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluation.")
flags.DEFINE_bool("evaluate", True, "Classify the evaluation split after training.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # Orbax and TFDS log every save at INFO; progress bars and reports say what matters.
  logging.set_verbosity(logging.WARNING)
  if FLAGS.evaluate:
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    trainer.train(FLAGS.config, FLAGS.workdir)


def run():
  common.run(main)


if __name__ == "__main__":
  run()
