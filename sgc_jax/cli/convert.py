"""sgc-convert: turns a mammography release into TFDS records.

  sgc-convert DATASET --manual_dir=DIR [--data_dir=DIR] [--config=full_384] [--workers=N]
  sgc-convert DATASET --manual_dir=DIR --check

DATASET is cbis_ddsm, inbreast or vindr_mammo. `--check` matches every table
row to a file without decoding and prints, in seconds, what a conversion would
do: tables found, entries per split and class, resolved and unresolved (first
reasons), duplicates, files no table names; it writes resolve_report.csv and
exits with status 1 if a table or listed image is missing. A conversion prints
the same summary before decoding, converts what is there (unless --strict),
then prints the QC summary; resolve_report.csv and errors.csv are written in
<data_dir>/<dataset>/<config>/, qc_summary.json and preview.png next to the
records. Rerunning reuses finished records and already decoded images.
"""
from __future__ import annotations

import os

import sys

from absl import app, flags

from sgc_jax.cli import common

_DATASETS = ("cbis_ddsm", "inbreast", "vindr_mammo")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "The release as downloaded (see the dataset's instructions).")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "TFDS data dir; default $SGC_DATA_DIR or ~/.cache/sgc_jax/tfds.")
_CONFIG = flags.DEFINE_string("config", None,
                              "Builder config, e.g. full_384, roi_384, full_64; default full_384.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Decoding processes.")
_PREVIEW = flags.DEFINE_integer("preview_images", 16, "Images in preview.png (0: none).")
_CHECK = flags.DEFINE_bool("check", False,
                           "Only match every table row to a file (no decoding), print what "
                           "was found and write resolve_report.csv; exit 1 if anything a "
                           "split needs is missing.")
_STRICT = flags.DEFINE_bool("strict", False,
                            "Stop before decoding if a table or listed image is missing; "
                            "by default what is there is converted and the rest reported.")


def main(argv):
  """Converts the dataset named on the command line, or with --check only resolves it."""
  from sgc_jax.data import convert  # pylint: disable=g-import-not-at-top
  from sgc_jax.data.builders import mammography  # pylint: disable=g-import-not-at-top
  if len(argv) != 2 or argv[1] not in _DATASETS:
    raise app.UsageError("usage: sgc-convert DATASET --manual_dir=DIR [--data_dir=DIR] "
                         "[--config=NAME] [--workers=N] [--check] [--strict]; DATASET is one "
                         f"of {', '.join(_DATASETS)}")
  if not _MANUAL_DIR.value:
    raise app.UsageError("--manual_dir is required: the folder holding the downloaded release")
  try:
    if _CHECK.value:
      resolution, report_file = convert.check_dataset(argv[1], _MANUAL_DIR.value,
                                                      _DATA_DIR.value, _CONFIG.value)
      print(mammography.format_resolution(resolution, report_file))
      return 1 if resolution.missing() else 0
    summary = convert.convert_dataset(argv[1], _MANUAL_DIR.value, _DATA_DIR.value,
                                      _CONFIG.value, _WORKERS.value,
                                      preview_images=_PREVIEW.value, strict=_STRICT.value,
                                      echo=print)
  except mammography.ReleaseError as e:
    # What was (not) found is the message; a traceback would only hide it.
    sys.exit(f"sgc-convert: {e}")
  print(convert.format_summary(summary))
  return 0


def run():
  """Console-script entry point."""
  common.run(main)


if __name__ == "__main__":
  run()
