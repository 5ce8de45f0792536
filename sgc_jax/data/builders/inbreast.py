"""INbreast as TFDS records: one record per full-field image.

The release has 410 DICOMs named `<file id>_<patient hash>_MG_<L|R>_<CC|ML>_ANON.dcm`
in `AllDICOMs/` and a table (`INbreast.csv`, semicolon-separated, or
`INbreast.xls`) with one row per file id: 'Patient ID', 'Patient age',
'Laterality', 'View', 'Acquisition date', 'File Name', 'ACR', 'Bi-Rads'. The
table's patient columns are anonymised ("removed"), so the patient is the hash
in the file name.

Labels (method §2): Bi-Rads 4 (4a/4b/4c), 5 and 6 -> malignant (1); 1-3 -> benign
(0). There is no official split: patients (not images) go to train or test
with a fixed seed, stratified by whether the patient has a malignant image, so
no patient is in both and both splits have both classes. Table rows without a
DICOM have no patient, so they are reported without a split.
"""
from __future__ import annotations

import csv
import math
import os
import re

import numpy as np

from sgc_jax.data import decode_cache
from sgc_jax.data.builders import mammography

TABLES = ("INbreast.csv", "INbreast.xls", "INbreast.xlsx")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
_FILENAME = re.compile(r"^(?P<file_id>\d+)_(?P<patient>[0-9A-Za-z]+)_MG_(?P<side>[LR])_"
                       r"(?P<view>[A-Z]+)_ANON\.dcm$", re.IGNORECASE)
_REQUIRED_COLUMNS = ("Laterality", "View", "File Name", "Bi-Rads")


class Inbreast(mammography.MammographyBuilder):
  """INbreast full-field digital mammograms, Bi-Rads 1-3 (0) vs 4-6 (1)."""

  BUILDER_CONFIGS = [
      mammography.make_config("full_384", 384, "Full-field mammograms, 384x384, 16-bit."),
      mammography.make_config("full_64", 64, "Full-field mammograms, 64x64, 8-bit (tests).",
                              bit_depth=8),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "full_384"
  METADATA_FEATURES = {
      "birads": np.str_,  # As in the table: "1".."6", "4a", "4b", "4c".
      "acr": np.str_,  # ACR breast density "1".."4" ("" when blank).
      "acquisition_date": np.str_,
  }
  DESCRIPTION = ("INbreast: 410 full-field digital mammograms with per-image BI-RADS; "
                 "benign (1-3) vs malignant (4-6), patient-level split with seed 0.")
  HOMEPAGE = "https://doi.org/10.1016/j.acra.2011.09.014"
  CITATION = """@article{moreira2012inbreast,
  title = {INbreast: toward a full-field digital mammographic database},
  author = {Moreira, In{\\^e}s C. and Amaral, Igor and Domingues, In{\\^e}s and
            Cardoso, Ant{\\'o}nio and Cardoso, Maria Jo{\\~a}o and Cardoso, Jaime S.},
  journal = {Academic Radiology},
  volume = {19},
  number = {2},
  pages = {236--248},
  year = {2012},
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Request INbreast from its authors (the release is not openly downloadable)
  and pass the release folder (e.g. "INbreast Release 1.0") as --manual_dir:

    <manual_dir>/INbreast.csv   (or INbreast.xls / .xlsx)
    <manual_dir>/AllDICOMs/<file id>_<patient>_MG_<L|R>_<CC|ML>_ANON.dcm

  The table is found up to four folders below --manual_dir, AllDICOMs/ beside
  it (or, failing that, anywhere up to four folders below --manual_dir).
  Reading the .xls or .xlsx needs python-calamine (in the `dicom` extra); the .csv
  needs nothing. `sgc-convert inbreast --manual_dir=DIR --check` says in
  seconds which table rows have their DICOM.
  """

  @classmethod
  def read_release(cls, manual_dir, config):
    """One Source per DICOM that has a table row; patient-level split."""
    table_path = mammography.find_file(manual_dir, TABLES)
    if table_path is None:
      raise mammography.ReleaseError(f"none of {TABLES} found under {manual_dir}; "
                                     f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    table = _read_table(table_path)
    dicom_dir = os.path.join(os.path.dirname(table_path), "AllDICOMs")
    if not os.path.isdir(dicom_dir):
      found = mammography.find_file(manual_dir, ["AllDICOMs"])
      if found is None:
        raise mammography.ReleaseError(
            f"{table_path} found, but no AllDICOMs/ folder under {manual_dir}; "
            f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      dicom_dir = found
    resolution = mammography.Resolution(manual_dir, tables={table_path: len(table)},
                                         image_roots=[dicom_dir])

    candidates = []
    seen = set()
    for name in sorted(os.listdir(dicom_dir)):
      if not name.lower().endswith(".dcm"):
        continue
      path = os.path.join(dicom_dir, name)
      match = _FILENAME.match(name)
      if match is None:
        resolution.skip(decode_cache.Skipped(
            "", name, path, "BadFileNameError",
            f"{path}: name is not <file id>_<patient>_MG_<L|R>_<view>_ANON.dcm"))
        continue
      file_id = match["file_id"]
      row = table.get(file_id)
      if row is None:
        resolution.unnamed.append(path)
        continue
      seen.add(file_id)
      label = _label(row["Bi-Rads"])
      if label is None:
        resolution.skip(decode_cache.Skipped(
            "", file_id, path, "BadTableValueError",
            f"{path}: Bi-Rads {row['Bi-Rads']!r} is not 1..6 ({table_path})"))
        continue
      candidates.append((match, row, label, path))
    for file_id, row in table.items():
      if file_id not in seen:
        resolution.skip(mammography.missing_file(
            "", file_id, os.path.join(dicom_dir, f"{file_id}_*_ANON.dcm"),
            f"listed in {os.path.basename(table_path)}"), _label(row["Bi-Rads"]))

    test_patients = _test_patients({(m["patient"], label) for m, _, label, _ in candidates})
    for match, row, label, path in candidates:
      resolution.add(decode_cache.Source(
          key=match["file_id"], split="test" if match["patient"] in test_patients else "train",
          label=label, path=path,
          laterality=(row.get("Laterality") or match["side"]).upper(),
          metadata={
              "patient_id": match["patient"],
              "image_id": match["file_id"],
              "view": _view(row.get("View") or match["view"]),
              "birads": row["Bi-Rads"],
              "acr": row.get("ACR", ""),
              "acquisition_date": row.get("Acquisition date", ""),
          }))
    return resolution


def _cell_text(value) -> str:
  """A table cell as text: spreadsheets store file ids and BI-RADS 1-6 as numbers."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def _read_table(path: str) -> dict[str, dict]:
  """file id -> row (stripped strings), from the release's CSV or spreadsheet."""
  if path.lower().endswith(".csv"):
    with open(path, newline="", encoding="utf-8-sig") as f:
      text = f.read()
    first_line = text.splitlines()[0] if text else ""
    delimiter = ";" if first_line.count(";") >= first_line.count(",") else ","
    raw_rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
  else:
    import pandas as pd  # pylint: disable=g-import-not-at-top
    try:
      # calamine reads both the release's Excel 97 .xls and .xlsx.
      frame = pd.read_excel(path, engine="calamine")
    except ImportError as e:
      raise ImportError(f"{path}: reading it needs python-calamine (the `dicom` extra), or "
                        "export it to INbreast.csv") from e
    raw_rows = frame.to_dict("records")
  rows = {}
  for raw in raw_rows:
    row = {str(k).strip(): _cell_text(v) for k, v in raw.items() if k is not None}
    missing = [c for c in _REQUIRED_COLUMNS if c not in row]
    if missing:
      raise mammography.ReleaseError(
          f"{path}: missing columns {missing}; found {sorted(row)}")
    file_id = row["File Name"].split(".")[0]  # Spreadsheets may give "22678622.0".
    if file_id:  # The release ends with blank rows.
      rows[file_id] = row
  return rows


def _label(birads: str):
  match = re.match(r"\s*([1-6])", birads or "")
  return None if match is None else int(int(match.group(1)) >= 4)


def _view(text: str) -> str:
  text = text.upper()
  return "MLO" if text in ("ML", "MLO") else text


def _test_patients(patient_labels) -> set[str]:
  """Patients drawn for test: TEST_FRACTION of each stratum, seed SPLIT_SEED."""
  malignant = {p for p, label in patient_labels if label == 1}
  benign = {p for p, _ in patient_labels} - malignant
  rng = np.random.default_rng(SPLIT_SEED)
  test = set()
  for stratum in (sorted(benign), sorted(malignant)):
    if len(stratum) < 2:
      continue  # A lone patient stays in train.
    count = max(1, round(TEST_FRACTION * len(stratum)))
    test.update(rng.permutation(stratum)[:count].tolist())
  return test
