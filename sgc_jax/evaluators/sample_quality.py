"""Samples: the class-conditional sample grid, and how recognisable the samples are.

With `eval.num_samples`, draws that many samples per class with `eval.sampler`
(`samples.png`); with the baseline CNN trained in the workdir, it classifies
`eval.sample_quality_per_class` samples per class from each of
`eval.sample_quality_samplers` (`sgc_jax.sample_quality`): metrics
`sample_quality_<sampler>` and `sample_nfe_<sampler>`, detail in
`sample_quality.json`. The baseline is given, never trained here: `sgc-train`
(`trainer.train_and_evaluate`) trains it before evaluating.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from sgc_jax import evaluators, plots, sample_quality, sampling

PER_ESTIMATOR = False


def needs_baseline(config) -> bool:
  """Whether the configured evaluation scores sample quality (and so needs the baseline CNN)."""
  ev = config.eval
  return bool("sample_quality" in evaluators.chosen(config) and ev.num_samples
              and ev.sample_quality_samplers and ev.sample_quality_per_class)


def run(job, estimator: str) -> dict:
  """Draws the grid and scores the samplers; returns the sample-quality metrics."""
  model = job.model
  config, ev = model.config, model.config.eval
  if not ev.num_samples:
    return {}
  out_dir = job.out_dir(estimator)
  shape = model.spec.input_shape(config.data.num_channels)
  if jax.process_index() == 0:
    _sample_grid(model, shape, os.path.join(out_dir, "samples.png"))
  if not needs_baseline(config):
    return {}
  logits_fn = job.baseline_logits_fn
  if logits_fn is None:
    logging.warning("sample quality: no baseline CNN in %s/baseline (sgc-train trains one); "
                    "skipped", job.workdir)
    return {}
  results = sample_quality.score_samplers(
      model.score_fn, model.sde, logits_fn, num_classes=model.num_classes, image_shape=shape,
      samplers=tuple(ev.sample_quality_samplers), per_class=ev.sample_quality_per_class,
      key=jax.random.PRNGKey(config.seed + 4), data_range=tuple(config.data.range),
      num_steps=ev.sampler_steps, rtol=ev.rtol, atol=ev.atol)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "sample_quality.json"), "w", encoding="utf-8") as f:
      json.dump({"classifier": "baseline", "per_class_samples": ev.sample_quality_per_class,
                 "num_steps": ev.sampler_steps, "samplers": results}, f, indent=2)
  report = {}
  for name, result in results.items():
    report[f"sample_quality_{name}"] = result["score"]
    report[f"sample_nfe_{name}"] = result["mean_nfe"]
  return report


def _sample_grid(model, shape, path: str) -> None:
  """`eval.num_samples` samples of every class, one row per class."""
  config, ev = model.config, model.config.eval
  labels = jnp.repeat(jnp.arange(model.num_classes, dtype=jnp.int32), ev.num_samples)
  images = sampling.sample(model.score_fn, model.sde, labels, shape,
                           key=jax.random.PRNGKey(config.seed + 2), method=ev.sampler,
                           num_steps=ev.sampler_steps, rtol=ev.rtol, atol=ev.atol).images
  lo, hi = config.data.range
  images = np.clip((np.asarray(images) - lo) / (hi - lo), 0.0, 1.0)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  plots.image_grid(images, path, labels=np.asarray(labels), ncols=ev.num_samples,
                   title="class-conditional samples (rows: classes)")
