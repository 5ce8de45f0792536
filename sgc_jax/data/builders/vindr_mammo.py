"""VinDr-Mammo (PhysioNet) as TFDS records: one record per full-field image.

Labels (method §2): the breast-level BI-RADS of `breast-level_annotations.csv`,
"BI-RADS 4" and "BI-RADS 5" -> malignant (1), "BI-RADS 1".."BI-RADS 3" -> benign
(0). Splits: the official `split` column, "training" -> train, "test" -> test
(16,000 / 4,000 images). The method reports offline CLAHE for VinDr with unknown
parameters; the `*_clahe` configs apply skimage's with its defaults.
"""
from __future__ import annotations

import csv
import os
import re

import numpy as np

from sgc_jax.data import decode_cache
from sgc_jax.data.builders import mammography

ANNOTATIONS = "breast-level_annotations.csv"
_REQUIRED_COLUMNS = ("study_id", "series_id", "image_id", "laterality", "view_position",
                     "height", "width", "breast_birads", "breast_density", "split")
_SPLITS = {"training": "train", "test": "test"}


class VindrMammo(mammography.MammographyBuilder):
  """VinDr-Mammo full-field digital mammograms, BI-RADS 1-3 (0) vs 4-5 (1)."""

  BUILDER_CONFIGS = [
      mammography.make_config("full_384", 384, "Full-field mammograms, 384x384, 16-bit."),
      mammography.make_config("full_384_clahe", 384,
                              "Full-field mammograms with CLAHE, 384x384, 16-bit.", clahe=True),
      mammography.make_config("full_64", 64, "Full-field mammograms, 64x64, 8-bit (tests).",
                              bit_depth=8),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "full_384"
  METADATA_FEATURES = {
      "series_id": np.str_,
      "birads": np.int64,  # Breast-level BI-RADS, 1..5.
      "breast_density": np.str_,  # "DENSITY A".."DENSITY D".
  }
  DESCRIPTION = ("VinDr-Mammo: 20,000 full-field digital mammograms from 5,000 exams "
                 "with breast-level BI-RADS; benign (1-3) vs malignant (4-5).")
  HOMEPAGE = "https://physionet.org/content/vindr-mammo/1.0.0/"
  CITATION = """@article{nguyen2023vindr,
  title = {VinDr-Mammo: A large-scale benchmark dataset for computer-aided diagnosis
           in full-field digital mammography},
  author = {Nguyen, Hieu T. and Nguyen, Ha Q. and Pham, Hieu H. and Lam, Khanh and
            Le, Linh T. and Dao, Minh and Vu, Van},
  journal = {Scientific Data},
  volume = {10},
  pages = {277},
  year = {2023},
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download VinDr-Mammo 1.0.0 from PhysioNet
  (https://physionet.org/content/vindr-mammo/1.0.0/, credentialed access) and
  pass the folder holding breast-level_annotations.csv and images/ as
  --manual_dir (a parent folder also works):

    <manual_dir>/breast-level_annotations.csv
    <manual_dir>/images/<study_id>/<image_id>.dicom

  The table is found up to four folders below --manual_dir; images/ must sit
  beside it. A partial download converts the images that are there and
  reports the rest; `sgc-convert vindr_mammo --manual_dir=DIR --check` says in
  seconds which rows have their image.
  """

  @classmethod
  def read_release(cls, manual_dir, config):
    """One Source per row of breast-level_annotations.csv."""
    table = mammography.find_file(manual_dir, [ANNOTATIONS])
    if table is None:
      raise mammography.ReleaseError(f"{ANNOTATIONS} not found under {manual_dir}; "
                                     f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    images_dir = os.path.join(os.path.dirname(table), "images")
    resolution = mammography.Resolution(manual_dir, image_roots=[images_dir])
    named = set()
    rows = 0
    with open(table, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      header = [h.strip() for h in reader.fieldnames or []]
      missing = [c for c in _REQUIRED_COLUMNS if c not in header]
      if missing:
        raise mammography.ReleaseError(f"{table}: missing columns {missing}; found {header}")
      for line, raw in enumerate(reader, start=2):
        rows += 1
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        key, where = row["image_id"], f"{ANNOTATIONS}:{line}"
        split = _SPLITS.get(row["split"].lower())
        birads = _birads(row["breast_birads"])
        path = os.path.join(images_dir, row["study_id"], f"{row['image_id']}.dicom")
        named.add(path)
        if split is None or birads is None:
          field = "split" if split is None else "breast_birads"
          resolution.skip(decode_cache.Skipped(
              row["split"], key, where, "BadTableValueError",
              f"{where}: {field} {row[field]!r} is not understood"))
          continue
        if not os.path.isfile(path):
          resolution.skip(mammography.missing_file(split, key, path, where), int(birads >= 4))
          continue
        resolution.add(decode_cache.Source(
            key=key, split=split, label=int(birads >= 4), path=path,
            laterality=row["laterality"].upper(),
            metadata={
                "study_id": row["study_id"],
                "series_id": row["series_id"],
                "image_id": row["image_id"],
                "view": row["view_position"].upper(),
                "birads": birads,
                "breast_density": row["breast_density"],
            }))
    resolution.tables[table] = rows
    resolution.unnamed = [path for path in _image_files(images_dir) if path not in named]
    return resolution


def _image_files(images_dir: str) -> list[str]:
  """Every .dicom file in images/<study>/, sorted."""
  found = []
  for folder, _, files in sorted(os.walk(images_dir)):
    found += [os.path.join(folder, name) for name in sorted(files)
              if name.lower().endswith(".dicom")]
  return found


def _birads(text: str):
  """"BI-RADS 4" -> 4; None when there is no 1..5 in it."""
  match = re.search(r"([1-5])", text)
  return int(match.group(1)) if match else None
