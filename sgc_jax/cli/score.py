"""sgc-score: score every DICOM of an archive with a trained model, resumably.

    sgc-score --workdir /tmp/cbis --input /archive/dicoms --output /tmp/scores

--input (repeatable): a directory (walked recursively), a text file of paths,
a DICOM file, or tfds:NAME[/CONFIG]:SPLIT. The model's config is read from
WORKDIR/config.json; --config.eval.FIELD=VALUE overrides its eval fields
(e.g. --config.eval.estimator=denoising), with or without --config (the run's
config file). Writes OUT/scores.parquet
(one row per scored image), OUT/errors.parquet (one row per input that could
not be scored, with its reason) and OUT/summary.json. Killed, the same command
resumes: committed chunks are kept and every input ends up in exactly one table;
a file changed since its row was committed is rescored. An OUT made with another
checkpoint or other settings is refused, naming what differs.
"""
import os

import jax
from absl import flags, logging
from ml_collections import config_flags

from sgc_jax import scoring
from sgc_jax.cli import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "The training run's config file, to override --config.eval.* fields "
    "(default: WORKDIR/config.json as trained).", lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
flags.DEFINE_multi_string("input", None, "A directory, a text file of paths, a DICOM file or "
                          "tfds:NAME[/CONFIG]:SPLIT (repeatable).")
flags.DEFINE_string("output", None, "Output directory (a rerun with the same model and "
                    "settings resumes in it).")
flags.DEFINE_integer("per_device_batch", 4, "Images per device and scoring call; keep it fixed "
                     "to get identical rows on any device count.")
flags.DEFINE_integer("decode_workers", min(8, os.cpu_count() or 1),
                     "Decoding processes running ahead of the scorer (0: no overlap).")
flags.DEFINE_integer("chunk_size", 256, "Rows per committed chunk (the most a kill can lose).")
flags.DEFINE_bool("csv", False, "Also write scores.csv and errors.csv.")
flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv):
  del argv
  # Orbax and TFDS log every restore at INFO; the progress bar and summary say what matters.
  logging.set_verbosity(logging.WARNING)
  trained = scoring.load_model(FLAGS.workdir, FLAGS.config)
  summary = scoring.score_archive(
      trained, FLAGS.input, FLAGS.output, per_device_batch=FLAGS.per_device_batch,
      decode_workers=FLAGS.decode_workers, chunk_size=FLAGS.chunk_size, write_csv=FLAGS.csv)
  if jax.process_index() == 0:
    print(scoring.format_summary(summary))


def run():
  common.run(main, config_from_workdir_flags=True)


if __name__ == "__main__":
  run()
