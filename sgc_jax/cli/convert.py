"""sgc-convert: turns a mammography release into TFDS records.

  sgc-convert DATASET --manual_dir=DIR [--data_dir=DIR] [--config=full_384] [--workers=N]

DATASET is cbis_ddsm, inbreast or vindr_mammo. Prints the QC summary; writes
errors.csv, qc_summary.json and preview.png next to the records. Rerunning
reuses finished records and already decoded images.
"""
from __future__ import annotations

import os

from absl import app, flags

from sgc_jax.cli import common

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "The release as downloaded (see the dataset's instructions).")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "TFDS data dir; default $SGC_DATA_DIR or ~/.cache/sgc_jax/tfds.")
_CONFIG = flags.DEFINE_string("config", None,
                              "Builder config, e.g. full_384, roi_384, full_64; default full_384.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Decoding processes.")
_PREVIEW = flags.DEFINE_integer("preview_images", 16, "Images in preview.png (0: none).")


def main(argv):
  """Converts the dataset named on the command line and prints the QC summary."""
  from sgc_jax.data import convert  # pylint: disable=g-import-not-at-top
  if len(argv) != 2:
    raise app.UsageError("usage: sgc-convert DATASET --manual_dir=DIR [--data_dir=DIR] "
                         "[--config=NAME] [--workers=N]; DATASET is one of cbis_ddsm, "
                         "inbreast, vindr_mammo")
  if not _MANUAL_DIR.value:
    raise app.UsageError("--manual_dir is required: the folder holding the downloaded release")
  summary = convert.convert_dataset(argv[1], _MANUAL_DIR.value, _DATA_DIR.value, _CONFIG.value,
                                    _WORKERS.value, preview_images=_PREVIEW.value)
  print(convert.format_summary(summary))


def run():
  """Console-script entry point."""
  common.run(main)


if __name__ == "__main__":
  run()
