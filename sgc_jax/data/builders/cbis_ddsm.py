"""CBIS-DDSM (TCIA) as TFDS records: full-field mammograms or ROI crops.

Record choice:
* full-field configs (`full_*`): one record per full mammogram (one DICOM,
  named in the description CSVs by its TCIA subject folder, e.g.
  `Mass-Training_P_00001_LEFT_CC`). An image can hold several abnormalities
  (several CSV rows): its label is malignant if any of them is MALIGNANT.
  Mass and calcification images are separate DICOMs in the release, so each
  becomes its own record.
* ROI configs (`roi_*`): one record per abnormality row, the release's
  "cropped image" of it, labelled by that row's pathology.

Labels (method §2): BENIGN and BENIGN_WITHOUT_CALLBACK -> 0, MALIGNANT -> 1.
Splits: the official ones, Training CSVs -> train, Test CSVs -> test.

The CSV paths (`<subject>/<StudyInstanceUID>/<SeriesInstanceUID>/000000.dcm`)
do not match what the NBIA Data Retriever writes, so they are resolved. Images
are looked for in every `CBIS-DDSM/` folder up to two levels below the manual
dir (the retriever writes `<destination>/manifest-<n>/CBIS-DDSM/`; several
manifests may be downloaded into one destination) and in the manual dir itself.
The series folder is the one the retriever's `metadata.csv` (beside
`CBIS-DDSM/`) gives for the series UID, when there is one; else, below the
subject folder, a study folder named by the UID ("classic" layout) or ending in
the UID's last five digits ("descriptive" layout, `07-20-2016-DDSM-74994`), then
the series folder the same way. In it, the named file if present or else the
folder's only DICOM. In the release the crop and mask columns are sometimes
swapped and both files can sit in one series folder; the crop is the candidate
whose size differs from the full mammogram's (the mask is full size).

A partial download converts what is there: a missing CSV or image is reported
(see `mammography.Resolution`), not fatal, unless no CSV is found at all.
"""
from __future__ import annotations

import collections
import csv
import os
import re

import numpy as np

from sgc_jax.data import decode_cache
from sgc_jax.data.builders import mammography

_CSV_FILES = {
    "train": ("mass_case_description_train_set.csv", "calc_case_description_train_set.csv"),
    "test": ("mass_case_description_test_set.csv", "calc_case_description_test_set.csv"),
}
_REQUIRED_COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id",
                     "abnormality type", "assessment", "pathology", "image file path",
                     "cropped image file path", "ROI mask file path")
# The mass CSVs say "breast_density", the calcification CSVs "breast density".
_DENSITY_COLUMNS = ("breast_density", "breast density")
_LABELS = {"BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0, "MALIGNANT": 1}
_PATH_COLUMNS = ("image file path", "cropped image file path", "ROI mask file path")
# Tables and image folders are looked for this many folders below the manual dir.
_SEARCH_DEPTH = 2
_IMAGE_FOLDER = "CBIS-DDSM"
_RETRIEVER_METADATA = "metadata.csv"
_SUBJECT = re.compile(r"^(Mass|Calc)-(Training|Test)_P_\d+_(LEFT|RIGHT)_(CC|MLO)(_\d+)?$")


class CbisDdsm(mammography.MammographyBuilder):
  """CBIS-DDSM mass and calcification cases, benign (0) vs malignant (1)."""

  BUILDER_CONFIGS = [
      mammography.make_config("full_384", 384, "Full-field mammograms, 384x384, 16-bit."),
      mammography.make_config("roi_384", 384, "ROI crops of each abnormality, 384x384, 16-bit.",
                              roi=True),
      mammography.make_config("full_64", 64, "Full-field mammograms, 64x64, 8-bit (tests).",
                              bit_depth=8),
      mammography.make_config("roi_64", 64, "ROI crops, 64x64, 16-bit (tests).", roi=True),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "full_384"
  METADATA_FEATURES = {
      "pathology": np.str_,  # Full field: the worst over the image's abnormalities.
      "abnormality_type": np.str_,  # "mass", "calcification" or both, comma-joined.
      "abnormality_ids": np.str_,  # Comma-joined "abnormality id" values.
      "assessment": np.int64,  # BI-RADS assessment (max over the image's rows).
      "breast_density": np.int64,
  }
  DESCRIPTION = ("CBIS-DDSM: scanned film mammograms with verified pathology; "
                 "benign vs malignant, official train/test split.")
  HOMEPAGE = "https://www.cancerimagingarchive.net/collection/cbis-ddsm/"
  CITATION = """@misc{CBIS_DDSM_Citation,
  doi = {10.7937/k9/tcia.2016.7o02s9cy},
  author = {Sawyer-Lee, Rebecca and Gimenez, Francisco and Hoogi, Assaf and Rubin, Daniel},
  title = {Curated Breast Imaging Subset of DDSM},
  publisher = {The Cancer Imaging Archive},
  year = {2016},
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download CBIS-DDSM from The Cancer Imaging Archive
  (https://www.cancerimagingarchive.net/collection/cbis-ddsm/): the DICOM
  images with the NBIA Data Retriever (either directory type), and the four
  description CSVs mass_case_description_train_set.csv,
  mass_case_description_test_set.csv, calc_case_description_train_set.csv and
  calc_case_description_test_set.csv. Save the CSVs in the retriever's
  destination folder and pass that folder as --manual_dir:

    <manual_dir>/mass_case_description_train_set.csv (and the other three)
    <manual_dir>/manifest-<n>/metadata.csv
    <manual_dir>/manifest-<n>/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<study>/<series>/1-1.dcm

  What works: the CSVs anywhere up to two folders below --manual_dir; images
  in any `CBIS-DDSM/` folder up to two folders below it (so several manifests
  in one destination, or `<manual_dir>/CBIS-DDSM/` directly), or in subject
  folders directly in --manual_dir. Passing the `manifest-<n>` or `CBIS-DDSM`
  folder itself works when the CSVs are inside it. A partial download (some
  CSVs, some images) converts what is there and reports the rest; run
  `sgc-convert cbis_ddsm --manual_dir=DIR --check` first to see, in seconds,
  what resolves.
  """

  @classmethod
  def read_release(cls, manual_dir, config):
    """One Source per full image or per abnormality (ROI configs); see module doc."""
    resolution = mammography.Resolution(manual_dir)
    rows_by_split = {}
    for split, names in _CSV_FILES.items():
      rows_by_split[split] = []
      for name in names:
        path = mammography.find_file(manual_dir, [name], max_depth=_SEARCH_DEPTH)
        if path is None:
          resolution.missing_tables.append(name)
          continue
        rows = _read_csv(path, name)
        resolution.tables[path] = len(rows)
        rows_by_split[split].extend(rows)
    if not resolution.tables:
      names = [n for split_names in _CSV_FILES.values() for n in split_names]
      raise mammography.ReleaseError(
          f"none of the description CSVs {names} is under {manual_dir} (searched "
          f"{_SEARCH_DEPTH} folders deep).\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    resolver = _Resolver(manual_dir)
    resolution.image_roots = resolver.roots
    for split, rows in rows_by_split.items():
      (_roi_sources if config.roi else _full_sources)(rows, split, resolver, resolution)
    named = {_subject(row[c]) for rows in rows_by_split.values() for row in rows
             for c in _PATH_COLUMNS if row[c]}
    resolution.unnamed = resolver.subject_folders_not_in(named)
    return resolution


def _read_csv(path: str, name: str) -> list[dict]:
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in _REQUIRED_COLUMNS if c not in header]
    if missing:
      raise mammography.ReleaseError(f"{path}: missing columns {missing}; found {header}")
    rows = []
    for line, raw in enumerate(reader, start=2):
      row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
      row["_csv"] = f"{name}:{line}"
      rows.append(row)
  return rows


def _label(row):
  return _LABELS.get(row["pathology"].upper())


def _int(value: str) -> int:
  try:
    return int(float(value))
  except ValueError:
    return 0


def _density(row) -> int:
  return next((_int(row[c]) for c in _DENSITY_COLUMNS if row.get(c)), 0)


def _side(row) -> str:
  return {"LEFT": "L", "RIGHT": "R"}.get(row["left or right breast"].upper(), "")


def _subject(csv_path: str) -> str:
  return csv_path.replace("\\", "/").strip("/").split("/")[0]


def _full_sources(rows, split, resolver, resolution):
  by_image = collections.OrderedDict()
  for row in rows:
    key = _subject(row["image file path"])
    if _label(row) is None:
      resolution.skip(decode_cache.Skipped(
          split, key, row["_csv"], "UnknownPathologyError",
          f"{row['_csv']}: pathology {row['pathology']!r} is not one of {sorted(_LABELS)}"))
      continue
    by_image.setdefault(key, []).append(row)
  for key, image_rows in by_image.items():
    first = image_rows[0]
    label = max(_label(r) for r in image_rows)
    try:
      path = resolver.resolve_full(first["image file path"])
    except FileNotFoundError as e:
      resolution.skip(mammography.missing_file(split, key, first["image file path"], str(e)),
                      label)
      continue
    pathologies = {r["pathology"].upper() for r in image_rows}
    worst = ("MALIGNANT" if label else
             "BENIGN" if "BENIGN" in pathologies else "BENIGN_WITHOUT_CALLBACK")
    resolution.add(decode_cache.Source(
        key=key, split=split, label=label, path=path, laterality=_side(first),
        metadata={
            "patient_id": first["patient_id"],
            "view": first["image view"].upper(),
            "pathology": worst,
            "abnormality_type": ",".join(sorted({r["abnormality type"] for r in image_rows})),
            "abnormality_ids": ",".join(r["abnormality id"] for r in image_rows),
            "assessment": max(_int(r["assessment"]) for r in image_rows),
            "breast_density": _density(first),
        }))


def _roi_sources(rows, split, resolver, resolution):
  for row in rows:
    key = _subject(row["cropped image file path"])
    if _label(row) is None:
      resolution.skip(decode_cache.Skipped(
          split, key, row["_csv"], "UnknownPathologyError",
          f"{row['_csv']}: pathology {row['pathology']!r} is not one of {sorted(_LABELS)}"))
      continue
    try:
      path = resolver.resolve_crop(row["cropped image file path"], row["ROI mask file path"],
                                   row["image file path"])
    except FileNotFoundError as e:
      resolution.skip(mammography.missing_file(split, key, row["cropped image file path"],
                                               str(e)), _label(row))
      continue
    resolution.add(decode_cache.Source(
        key=key, split=split, label=_label(row), path=path, laterality=_side(row),
        metadata={
            "patient_id": row["patient_id"],
            "view": row["image view"].upper(),
            "pathology": row["pathology"].upper(),
            "abnormality_type": row["abnormality type"],
            "abnormality_ids": row["abnormality id"],
            "assessment": _int(row["assessment"]),
            "breast_density": _density(row),
        }))


class _Resolver:
  """Maps the CSVs' UID paths to files of either NBIA Data Retriever layout."""

  def __init__(self, manual_dir: str):
    self.roots = mammography.find_all(manual_dir, [_IMAGE_FOLDER], _SEARCH_DEPTH) + [manual_dir]
    self._listings = {}
    self._series = {}  # Series UID -> folder, from the retriever's metadata.csv files.
    for root in self.roots[:-1]:
      self._series.update(_retriever_series(os.path.dirname(root)))

  def subject_folders_not_in(self, named: set[str]) -> list[str]:
    """Subject folders on disk that no CSV row names."""
    return [os.path.join(root, name) for root in self.roots for name in self._listdir(root)
            if _SUBJECT.match(name) and name not in named]

  def resolve_full(self, csv_path: str) -> str:
    """The full mammogram's DICOM; FileNotFoundError says where it looked."""
    series_dir, filename = self._series_dir(csv_path)
    files = self._dicoms(series_dir)
    if filename in files:
      return os.path.join(series_dir, filename)
    if len(files) == 1:
      return os.path.join(series_dir, files[0])
    raise FileNotFoundError(f"{series_dir} holds {len(files)} DICOM files "
                            f"{files[:4]}, none named {filename!r}")

  def resolve_crop(self, crop_path: str, mask_path: str, full_path: str) -> str:
    """The abnormality's cropped image, told apart from its full-size mask."""
    candidates, problems = [], []
    for csv_path in (crop_path, mask_path):
      try:
        series_dir, _ = self._series_dir(csv_path)
      except FileNotFoundError as e:
        problems.append(str(e))
        continue
      for name in self._dicoms(series_dir):
        path = os.path.join(series_dir, name)
        if path not in candidates:
          candidates.append(path)
    if not candidates:
      raise FileNotFoundError("; ".join(dict.fromkeys(problems)) or
                              "no DICOM in the cropped-image or ROI-mask series folders")
    if len(candidates) == 1:
      return candidates[0]
    try:
      full_shape = _header(self.resolve_full(full_path))[0]
      crops = [p for p in candidates if _header(p)[0] != full_shape]
    except FileNotFoundError:
      # Without the full image, fall back to the series descriptions the
      # release writes ("cropped images" / "ROI mask images").
      full_shape = None
      crops = [p for p in candidates if "crop" in _header(p)[1]]
    if len(crops) == 1:
      return crops[0]
    raise FileNotFoundError(
        f"cannot tell the cropped image from the ROI mask among {candidates}: "
        f"{len(crops)} of them look like crops (full mammogram size {full_shape})")

  def _series_dir(self, csv_path: str):
    parts = csv_path.replace("\\", "/").strip().strip("/").split("/")
    if len(parts) != 4:
      raise FileNotFoundError(f"{csv_path!r} is not <subject>/<study UID>/<series UID>/<file>")
    subject, study_uid, series_uid, filename = parts
    if series_uid in self._series:
      return self._series[series_uid], filename
    looked = []
    for root in self.roots:
      subject_dir = os.path.join(root, subject)
      looked.append(subject_dir)
      study = _match(self._listdir(subject_dir), study_uid)
      if study is None:
        continue
      study_dir = os.path.join(subject_dir, study)
      series = _match(self._listdir(study_dir), series_uid)
      if series is not None:
        return os.path.join(study_dir, series), filename
      looked.append(study_dir)
    raise FileNotFoundError(f"no folder for study {study_uid} / series {series_uid} in "
                            f"{' or '.join(looked)}")

  def _listdir(self, folder: str) -> list[str]:
    if folder not in self._listings:
      try:
        self._listings[folder] = sorted(
            e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e)))
      except OSError:
        self._listings[folder] = []
    return self._listings[folder]

  @staticmethod
  def _dicoms(folder: str) -> list[str]:
    try:
      return sorted(e for e in os.listdir(folder) if e.lower().endswith(".dcm"))
    except OSError:
      return []


def _retriever_series(folder: str) -> dict[str, str]:
  """Series UID -> series folder, from the NBIA Data Retriever's metadata.csv in folder."""
  path = os.path.join(folder, _RETRIEVER_METADATA)
  if not os.path.isfile(path):
    return {}
  series = {}
  with open(path, newline="", encoding="utf-8-sig") as f:
    for row in csv.DictReader(f):
      uid, location = (row.get("Series UID") or "").strip(), row.get("File Location") or ""
      # Written as ".\CBIS-DDSM\..." on Windows and "./CBIS-DDSM/..." elsewhere.
      location = location.strip().replace("\\", "/")
      location = location[2:] if location.startswith("./") else location
      series_dir = os.path.join(folder, *location.split("/"))
      if uid and location and os.path.isdir(series_dir):
        series[uid] = series_dir
  return series


def _match(names: list[str], uid: str) -> str | None:
  """The folder for a UID: named by it, or by its last five digits (descriptive)."""
  if uid in names:
    return uid
  tail = [n for n in names if n.endswith("-" + uid[-5:])]
  if len(tail) == 1:
    return tail[0]
  return names[0] if len(names) == 1 else None


def _header(path: str):
  """((Rows, Columns), lower-case SeriesDescription) from the header alone."""
  import pydicom  # pylint: disable=g-import-not-at-top
  try:
    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=["Rows", "Columns", "SeriesDescription"])
    return (int(ds.Rows), int(ds.Columns)), str(ds.get("SeriesDescription", "")).lower()
  except Exception:  # pylint: disable=broad-except
    # An unreadable candidate is decoded (and reported) later if chosen.
    return None, ""
