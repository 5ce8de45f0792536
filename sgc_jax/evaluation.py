"""Scores a split with a trained score model and reports calibrated classification.

`evaluate(config, workdir)` loads the latest checkpoint (EMA parameters,
BatchNorm running averages), computes log p(x|y) for every image and class on
all devices (each device runs its own solves under `shard_map`: adaptive solves
take different step counts per device, so no collective may sit inside them),
fits a temperature on the held-out validation part of train, and writes
`metrics.json`, `predictions.csv` and PNG plots to `workdir/eval_<split>/`
(`eval_<split>_denoising/` for the denoising estimator).
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import PartitionSpec as P

from sgc_jax import (api, classifier, flow_diagnostics, inputs, likelihood, metrics,
                     model_calibration, plots, run_dir, sampling, sharding)
from sgc_jax import sample_quality
from sgc_jax import scorer as scorer_lib
from sgc_jax.config_validation import validate_config
from sgc_jax.data import reader, records


def score_source(config, scorer, source, *, mesh, key, desc: str, max_examples: int = 0):
  """Scores every record of `source`; returns a dict of numpy arrays in record order.

  With several processes, each scores records process_index::process_count on
  its local `mesh` (`eval.batch_size` images per process and batch), and the
  results are gathered so that every process returns the whole split.
  """
  batch_size = math.ceil(config.eval.batch_size / mesh.size) * mesh.size
  n = len(source) if not max_examples else min(max_examples, len(source))
  if n < len(source):
    source = reader.SubsetSource(source, np.arange(n))
  process, processes = jax.process_index(), jax.process_count()
  positions = np.arange(process, n, processes)
  deq_key, probe_key = jax.random.split(key)
  fields = ("image", "label", "id") if "id" in source[0] else ("image", "label")
  out = {"log_likelihood": [], "nfe": [], "success": [], "label": [], "id": []}
  prepare = jax.jit(functools.partial(scorer_lib.per_image_inputs, config=config))
  start = time.perf_counter()
  done = 0
  with tqdm.tqdm(total=len(positions), desc=desc, unit="img", disable=process != 0,
                 mininterval=5.0) as progress:
    for batch, n_valid in reader.eval_batches(source, batch_size=batch_size, fields=fields,
                                              shard_index=process, shard_count=processes):
      # Without stored ids an image is named by its position in the split.
      ids = batch["id"] if "id" in batch else np.resize(positions[done:done + n_valid], batch_size)
      x = prepare(deq_key, np.asarray(ids), batch["image"])
      x = jax.device_put(x, sharding.batch_sharded(mesh))
      result = jax.device_get(scorer(x, np.asarray(ids), probe_key))
      out["log_likelihood"].append(result.log_likelihood[:n_valid])
      out["nfe"].append(result.num_function_evals[:n_valid])
      out["success"].append(result.success[:n_valid])
      out["label"].append(batch["label"][:n_valid])
      out["id"].append(np.asarray(ids)[:n_valid])
      done += n_valid
      progress.update(n_valid)
  seconds = time.perf_counter() - start
  result = {k: np.concatenate(v) for k, v in out.items()}
  result["position"] = positions
  result = sharding.gather_from_processes(result)
  order = np.argsort(result.pop("position"), kind="stable")
  result = {k: v[order] for k, v in result.items()}
  # The slowest process sets the pace of the whole split.
  result["seconds"] = float(np.max(sharding.gather_from_processes(
      {"seconds": np.asarray([seconds])})["seconds"]))
  return result


def evaluate(config, workdir: str, *, variables=None, model=None, mesh=None) -> dict:
  """Classifies `config.eval.split` and writes metrics, predictions and plots.

  Args:
    config: the run's config.
    workdir: the training workdir (checkpoints are read from it when
      `variables` is None); outputs go to `workdir/eval_<split>/`.
    variables, model: a trained model's inference variables and module, to
      skip the checkpoint restore.
    mesh: the devices to score on; default this process's local devices.
      In a multi-process job every process scores its share of the split and
      process 0 writes the outputs.

  Returns:
    The metrics dict written to `metrics.json` (the same on every process).
  """
  sharding.maybe_initialize_distributed()
  mesh = mesh or sharding.make_mesh(jax.local_devices())
  builder = reader.load_builder(config.data)
  config = validate_config(config, builder)
  if variables is None:
    trained = api.load(workdir, config, mesh=mesh)
  else:
    trained = api.from_variables(config, sharding.replicate_locally(variables, mesh),
                                 spec=run_dir.ModelSpec.from_builder(builder, config.data),
                                 workdir=workdir, step=run_dir.latest_step(workdir), mesh=mesh,
                                 model=model)
  config, score_fn, sde, scorer, step = (trained.config, trained.score_fn, trained.sde,
                                         trained.scorer, trained.step)
  ev = config.eval
  num_classes = config.data.num_classes
  key = jax.random.PRNGKey(config.seed + 1)

  eval_source = records.data_source(builder, ev.split)
  train_source, val_source = reader.training_sources(builder, config.data, seed=config.seed)
  log_prior = classifier.log_prior(ev.prior, num_classes,
                                   train_labels=reader.labels_of(train_source)
                                   if ev.prior == "empirical" else None)
  scored = score_source(config, scorer, eval_source, mesh=mesh, key=key, desc=f"score {ev.split}",
                        max_examples=ev.max_examples)
  calibration = classifier.Calibration(temperature=1.0, log_prior=log_prior)
  val_scored = None
  if ev.calibrate and val_source is not None:
    val_scored = score_source(config, scorer, val_source, mesh=mesh, key=key,
                              desc="score validation", max_examples=ev.max_examples)
    ok = val_scored["success"].all(axis=1)
    calibration = classifier.calibrate(val_scored["log_likelihood"][ok],
                                       val_scored["label"][ok], log_prior)

  report = summarize(config, scored, calibration, builder)
  if ev.estimator == "ode" and ev.flow_diagnostics:
    report["flow_diagnostics"] = _flow_diagnostics(config, score_fn, sde, mesh, eval_source,
                                                   scored, key)
  if val_scored is not None:
    report["validation_images"] = int(len(val_scored["label"]))
  suffix = "" if ev.estimator == "ode" else f"_{ev.estimator}"
  out_dir = os.path.join(workdir, f"eval_{ev.split}{suffix}")
  if ev.num_samples:
    # How recognisable the samples are, beside the sample grid (every process, same result).
    report.update(sample_quality.evaluate(config, workdir, score_fn, sde,
                                          inputs.image_shape(config, builder), out_dir=out_dir))
  if jax.process_index() == 0:
    write_outputs(out_dir, config, scored, calibration, report, score_fn, sde,
                  image_shape=inputs.image_shape(config, builder))
    # Temperature, prior and OOD threshold for sgc-score, next to the checkpoint.
    val_ll = (None if val_scored is None else
              val_scored["log_likelihood"][val_scored["success"].all(axis=1)])
    model_calibration.save(workdir, model_calibration.fit(
        calibration, val_ll, math.prod(inputs.image_shape(config, builder)), config.data,
        estimator=ev.estimator,
        step=step))
  return report


def _flow_diagnostics(config, score_fn, sde, mesh, source, scored, key) -> dict:
  """Scores the same images with the denoising bound; compares it with the ODE (see
  `sgc_jax.flow_diagnostics`)."""
  bound_config = config.copy_and_resolve_references()
  bound_config.eval.estimator = "denoising"
  bound_scorer = scorer_lib.make_class_scorer(bound_config, score_fn, sde,
                                              config.data.num_classes, mesh)
  bound = score_source(bound_config, bound_scorer, source, mesh=mesh, key=key,
                       desc="bound for flow diagnostics", max_examples=config.eval.max_examples)
  return flow_diagnostics.flow_diagnostics(scored["log_likelihood"], bound["log_likelihood"],
                                           scored["label"])


def summarize(config, scored, calibration, builder) -> dict:
  """Metrics of a scored split: classification (raw and calibrated), bits/dim, cost."""
  num_classes = config.data.num_classes
  ll, labels, success = scored["log_likelihood"], scored["label"], scored["success"]
  ok = success.all(axis=1)
  raw_logpost = classifier.log_posteriors(ll[ok], calibration.log_prior)
  cal_logpost = calibration.apply(ll[ok])
  raw = metrics.classification_metrics(labels[ok], np.exp(raw_logpost), num_classes,
                                       log_probs=raw_logpost)
  cal = metrics.classification_metrics(labels[ok], np.exp(cal_logpost), num_classes,
                                       log_probs=cal_logpost)
  h, w, _ = builder.info.features["image"].shape
  dims = h * w * config.data.num_channels
  bpd = functools.partial(likelihood.bits_per_dim, num_dims=dims, bit_depth=config.data.bit_depth,
                          data_range=tuple(config.data.range))
  true_ll = ll[ok][np.arange(ok.sum()), labels[ok]]
  marginal_ll = np.logaddexp.reduce(ll[ok] + calibration.log_prior, axis=1)
  report = {
      **cal,
      "ece_uncalibrated": raw["ece"],
      "nll_uncalibrated": raw["nll"],
      "temperature": float(calibration.temperature),
      "bits_per_dim": float(np.mean(bpd(true_ll))),
      "bits_per_dim_marginal": float(np.mean(bpd(marginal_ll))),
      "mean_nfe": float(np.mean(scored["nfe"])),
      "images": int(len(labels)),
      "failed_images": int((~ok).sum()),
      "images_per_s": float(len(labels) / max(scored["seconds"], 1e-9)),
      "seconds": float(scored["seconds"]),
      "estimator": config.eval.estimator,
  }
  return report


def write_outputs(out_dir, config, scored, calibration, report, score_fn, sde, *, image_shape):
  """metrics.json, predictions.csv, ROC / confusion / reliability / sample PNGs."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  ll, labels, success = scored["log_likelihood"], scored["label"], scored["success"]
  num_classes = ll.shape[1]
  logpost = calibration.apply(np.where(np.isfinite(ll), ll, -np.inf))
  with open(os.path.join(out_dir, "predictions.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "label", "prediction", "success"]
                    + [f"log_likelihood_{c}" for c in range(num_classes)]
                    + [f"probability_{c}" for c in range(num_classes)])
    for i in range(len(labels)):
      ok = bool(success[i].all())
      pred = int(np.argmax(logpost[i])) if ok else -1
      writer.writerow([int(scored["id"][i]), int(labels[i]), pred, ok]
                      + [f"{v:.4f}" for v in ll[i]]
                      + [f"{v:.6f}" for v in np.exp(logpost[i])])
  ok = success.all(axis=1)
  probs = np.exp(logpost[ok])
  raw_probs = np.exp(classifier.log_posteriors(ll[ok], calibration.log_prior))
  plots.roc_curve(labels[ok], logpost[ok], os.path.join(out_dir, "roc.png"))
  plots.confusion_matrix(labels[ok], probs.argmax(1), os.path.join(out_dir, "confusion.png"))
  plots.reliability_diagram(labels[ok], {"raw": raw_probs, "calibrated": probs},
                            os.path.join(out_dir, "reliability.png"))
  ev = config.eval
  if ev.num_samples:
    sample_labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ev.num_samples)
    images = sampling.sample(score_fn, sde, sample_labels, image_shape,
                             key=jax.random.PRNGKey(config.seed + 2), method=ev.sampler,
                             num_steps=ev.sampler_steps, rtol=ev.rtol, atol=ev.atol).images
    lo, hi = config.data.range
    images = np.clip((np.asarray(images) - lo) / (hi - lo), 0.0, 1.0)
    plots.image_grid(images, os.path.join(out_dir, "samples.png"),
                     labels=np.asarray(sample_labels), ncols=ev.num_samples,
                     title="class-conditional samples (rows: classes)")
