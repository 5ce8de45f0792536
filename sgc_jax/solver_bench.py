"""Solver accuracy against speed: a grid of scoring settings against a tight reference.

`run_grid(score_fn, sde, x, labels, num_classes, grid)` scores the same images
with every setting of a grid (`configs/solver_grid.py`), times each (compiled
once first, then the median of `grid.repeats` runs, each ended by
`block_until_ready`), and compares log p(x|y) with a tight float64 reference.
`write_report` writes JSON, CSV and the work-precision plots, and names the
Pareto front and the recommended "exact" and "fast" settings.

Every setting scores each (image, class) on its own (per-image keys, per-solve
step control), so the numbers do not depend on how the images are batched;
`throughput` measures how the cost per image grows with the batch.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sgc_jax import api, classifier, exponential_integrator, likelihood, metrics, plots, scorer
from sgc_jax.data import records

FAMILIES = ("adaptive", "fixed", "expint", "probes", "denoising")


def settings(grid) -> list[dict]:
  """The grid's settings: dicts with name, family and the estimator's keyword options."""
  div = dict(divergence=grid.divergence, probe=grid.probe, num_probes=grid.num_probes)
  out = []
  for solver in grid.adaptive.solvers:
    for tol in grid.adaptive.tols:
      out.append(dict(name=f"{solver} tol {tol:g}", family="adaptive",
                      options=dict(solver=solver, adaptive=True, rtol=tol, atol=tol, **div)))
  for family in ("fixed", "expint"):
    block = grid[family]
    for solver in block.solvers:
      for steps in block.steps:
        out.append(dict(name=f"{solver} {steps} steps ({block.grid})", family=family,
                        options=dict(solver=solver, adaptive=False, num_steps=steps,
                                     grid=block.grid, **div)))
  block = grid.probes
  base = dict(solver=block.base_solver, adaptive=False, num_steps=block.base_steps,
              grid=block.grid)
  for kind in block.kinds:
    if kind == "exact":
      out.append(dict(name=f"{block.base_solver} {block.base_steps}, exact", family="probes",
                      options=dict(divergence="exact", **base)))
      continue
    for count in block.counts:
      for resample in block.resample:
        out.append(dict(name=f"{block.base_solver} {block.base_steps}, {count} {kind}"
                        + (" fresh per step" if resample else ""), family="probes",
                        options=dict(divergence="hutchinson", probe=kind, num_probes=count,
                                     resample_probes=resample, **base)))
  for samples in grid.denoising.samples:
    out.append(dict(name=f"denoising {samples} samples", family="denoising",
                    options=dict(estimator="denoising", num_time_samples=samples)))
  return out


def make_estimator(score_fn, sde, num_classes: int, eps: float, options: dict) -> Callable:
  """(x, keys [B]) -> LikelihoodResult for one setting's options (`scorer.ESTIMATORS`)."""
  options = dict(options)
  estimate = scorer.ESTIMATORS[options.pop("estimator", "ode")].estimate
  return lambda x, keys: estimate(score_fn, sde, x, num_classes, keys, eps=eps, **options)


def timed(fn: Callable, repeats: int):
  """(result, median seconds): one untimed compile run, then `repeats` timed runs."""
  result = jax.block_until_ready(fn())
  seconds = []
  for _ in range(max(repeats, 1)):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - start)
  return result, statistics.median(seconds)


def reference(score_fn, sde, x, keys, num_classes: int, grid):
  """The tight reference: (log p [B, C], description), solved in float64."""
  ref = grid.reference
  exact = x[0].size <= ref.max_exact_dims
  # An exponential integrator takes `ref.steps` fixed steps; a Diffrax solver adapts to ref.tol.
  fixed = ref.solver in exponential_integrator.SOLVERS
  options = dict(solver=ref.solver, adaptive=not fixed, rtol=ref.tol, atol=ref.tol,
                 num_steps=ref.steps, grid="logsnr" if fixed else "quadratic",
                 max_steps=ref.max_steps, dtype=jnp.float64,
                 divergence="exact" if exact else "hutchinson", probe="gaussian",
                 num_probes=1 if exact else ref.num_probes)
  with jax.enable_x64(True):
    result = likelihood.class_log_likelihoods(score_fn, sde, jnp.asarray(x, jnp.float64),
                                              num_classes, key=keys, eps=grid.eps, **options)
    result = jax.device_get(result)
  description = (f"{ref.solver}, " + (f"{ref.steps} steps" if fixed else
                                        f"rtol = atol = {ref.tol:g}") + ", float64, "
                 + ("exact divergence" if exact else f"{ref.num_probes} Gaussian probes"))
  if not bool(np.all(result.success)):
    raise RuntimeError(f"reference: {int((~np.asarray(result.success)).sum())} solves failed "
                       f"({description}); raise reference.max_steps")
  return np.asarray(result.log_likelihood, np.float64), description


def compare(log_likelihood, ref, labels, num_classes: int) -> dict:
  """Errors against the reference and the classification quality of one setting."""
  ll = np.asarray(log_likelihood, np.float64)
  diff = np.abs(ll - ref)
  finite = np.isfinite(ll).all(axis=1)
  logpost = classifier.log_posteriors(np.where(np.isfinite(ll), ll, -1e30),
                                      np.full(num_classes, -math.log(num_classes)))
  quality = metrics.classification_metrics(labels, np.exp(logpost), num_classes,
                                           log_probs=logpost)
  return {
      "mean_abs_dlogp": float(np.nanmean(diff)), "max_abs_dlogp": float(np.nanmax(diff)),
      "agreement": float(np.mean((ll.argmax(1) == ref.argmax(1)) & finite)),
      "accuracy": quality["accuracy"], "auc": quality["auc"],
      "failed": int((~finite).sum()),
  }


def run_grid(score_fn, sde, x, labels, num_classes: int, grid, *, keys, log=print) -> dict:
  """Scores `x` with the reference and every setting of `grid`; returns the report dict."""
  dims = int(np.prod(x.shape[1:]))
  log(f"reference on {len(x)} images x {num_classes} classes ...")
  start = time.perf_counter()
  ref, ref_description = reference(score_fn, sde, x, keys, num_classes, grid)
  ref_seconds = time.perf_counter() - start
  rows = []
  for setting in settings(grid):
    estimate = make_estimator(score_fn, sde, num_classes, grid.eps, setting["options"])
    result, seconds = timed(lambda estimate=estimate: estimate(x, keys), grid.repeats)
    row = {"name": setting["name"], "family": setting["family"],
           "options": setting["options"],
           "nfe": float(np.mean(result.num_function_evals)),
           "seconds": seconds, "ms_per_image": 1e3 * seconds / len(x),
           **compare(result.log_likelihood, ref, labels, num_classes)}
    row["mean_abs_dbpd"] = row["mean_abs_dlogp"] / (dims * math.log(2.0))
    row["disagreement"] = 1.0 - row["agreement"]
    rows.append(row)
    log(f"{row['name']:<40} nfe {row['nfe']:7.1f}  {seconds:7.3f} s  "
        f"|dlogp| {row['mean_abs_dlogp']:8.4f}  agree {row['agreement']:.3f}")
  ref_row = compare(ref, ref, labels, num_classes)
  report = {"device": jax.devices()[0].device_kind, "images": int(len(x)),
            "classes": num_classes, "dims": dims, "reference": ref_description,
            "reference_seconds": ref_seconds, "reference_metrics": ref_row, "rows": rows}
  report["pareto"] = [rows[i]["name"] for i in pareto_front(rows)]
  # Decisions against network evaluations: what the "fast" setting is chosen on.
  report["pareto_decisions"] = [rows[i]["name"]
                                for i in pareto_front(rows, cost="nfe", error="disagreement")]
  report["recommended"] = recommend(rows, grid)
  return report


def pareto_front(rows, cost: str = "seconds", error: str = "mean_abs_dbpd") -> list[int]:
  """Indices of the rows no other row beats on both cost and error (ties kept), cheapest first."""
  front = []
  for i, a in enumerate(rows):
    dominated = any(b[cost] <= a[cost] and b[error] <= a[error]
                    and (b[cost] < a[cost] or b[error] < a[error]) for b in rows)
    if not dominated and np.isfinite(a[error]):
      front.append(i)
  return sorted(front, key=lambda i: rows[i][cost])


def recommend(rows, grid) -> dict:
  """The cheapest "exact" (error <= grid.exact_bits_per_dim) and "fast" (agreement) settings."""
  def cheapest(ok):
    chosen = [r for r in rows if ok(r) and r["failed"] == 0]
    return min(chosen, key=lambda r: r["seconds"])["name"] if chosen else None
  return {"exact": cheapest(lambda r: r["mean_abs_dbpd"] <= grid.exact_bits_per_dim),
          "fast": cheapest(lambda r: r["agreement"] >= grid.fast_agreement)}


def throughput(score_fn, sde, x, num_classes: int, options: dict, batch_sizes, *, eps: float,
               repeats: int, keys) -> list[dict]:
  """images * classes / s of one setting against the batch size (cycling through `x`)."""
  estimate = make_estimator(score_fn, sde, num_classes, eps, options)
  out = []
  for size in batch_sizes:
    take = np.arange(size) % len(x)
    _, seconds = timed(lambda take=take: estimate(x[take], keys[take]), repeats)
    out.append({"batch_size": int(size), "seconds": seconds,
                "image_classes_per_s": size * num_classes / seconds})
  return out


def write_report(report: dict, output: str) -> dict:
  """results.json, results.csv and the two PNG diagrams in `output`; returns their paths."""
  os.makedirs(output, exist_ok=True)
  paths = {"json": os.path.join(output, "results.json"),
           "csv": os.path.join(output, "results.csv"),
           "work_precision": os.path.join(output, "work_precision.png"),
           "agreement": os.path.join(output, "agreement_vs_nfe.png")}
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  fields = ["name", "family", "nfe", "seconds", "ms_per_image", "mean_abs_dlogp",
            "max_abs_dlogp", "mean_abs_dbpd", "agreement", "accuracy", "auc", "failed"]
  with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(report["rows"])
  rows = report["rows"]
  by_family = functools.partial(_series, rows)
  plots.work_precision(by_family("seconds", "mean_abs_dbpd"), paths["work_precision"],
                       xlabel="seconds", ylabel="mean |Δ| bits/dim vs reference",
                       title=f"work-precision ({report['images']} images)", log_y=True)
  plots.work_precision(by_family("nfe", "agreement"), paths["agreement"],
                       xlabel="network evaluations per (image, class)",
                       ylabel="decision agreement with reference", title="decisions vs cost",
                       log_y=False)
  return paths


def _series(rows, x: str, y: str) -> dict:
  """{family or solver line: (xs, ys)}: one line per solver within the solver families."""
  lines = {}
  for r in rows:
    key = r["family"] if r["family"] in ("probes", "denoising") else (
        f"{r['family']}: {r['options']['solver']}")
    xs, ys = lines.setdefault(key, ([], []))
    xs.append(r[x])
    ys.append(max(r[y], 1e-12) if y != "agreement" else r[y])
  return lines


def bench(workdir: str, grid, *, output: str, split: str = "test", num_images: int = 64,
          log=print) -> dict:
  """Runs `grid` on the first `num_images` of a trained workdir's `split`; writes the report.

  Images are dequantized, and their probes drawn, from the evaluation's key
  folded with each image's position, as `sgc-evaluate` does.
  """
  trained = api.load(workdir)
  source = records.data_source(trained.builder, split)
  n = min(num_images, len(source))
  if n < 1:
    raise ValueError(f"--split: {split!r} of {workdir} holds no images")
  batch = [source[i] for i in range(n)]
  images = np.stack([r["image"] for r in batch])
  labels = np.array([r["label"] for r in batch])
  ids = jnp.arange(n, dtype=jnp.uint32)
  deq_key, probe_key = jax.random.split(jax.random.PRNGKey(trained.config.seed + 1))
  x = jax.jit(functools.partial(scorer.per_image_inputs, config=trained.config))(
      deq_key, ids, images)
  keys = jax.vmap(lambda i: jax.random.fold_in(probe_key, i))(ids)
  report = run_grid(trained.score_fn, trained.sde, x, labels, trained.num_classes, grid,
                    keys=keys, log=log)
  report.update(workdir=os.path.abspath(workdir), split=split, step=trained.step)
  by_name = {r["name"]: r for r in report["rows"]}
  report["throughput"] = {}
  # The recommended settings, and the cheapest adaptive one for contrast: a vmapped adaptive
  # solve runs until its slowest member is done, so its per-image cost can grow with the batch.
  adaptive = [r for r in report["rows"] if r["family"] == "adaptive" and r["failed"] == 0]
  contrast = [min(adaptive, key=lambda r: r["seconds"])["name"]] if adaptive else []
  for name in dict.fromkeys(list(report["recommended"].values()) + contrast):
    if name is not None:
      report["throughput"][name] = throughput(
          trained.score_fn, trained.sde, x, trained.num_classes, by_name[name]["options"],
          grid.batch_sizes, eps=grid.eps, repeats=grid.repeats, keys=keys)
  paths = write_report(report, output)
  log("Pareto front (seconds vs bits/dim error): " + "; ".join(report["pareto"]))
  log(f"recommended: exact (<= {grid.exact_bits_per_dim} bits/dim): "
      f"{report['recommended']['exact']}; fast (>= {grid.fast_agreement:.0%} agreement): "
      f"{report['recommended']['fast']}")
  log("wrote " + ", ".join(paths.values()))
  return report
