"""Classification by log p(x|y): the class-likelihood table, calibrated metrics and plots.

For each estimator asked for: the split's table, a temperature fitted on the
held-out validation images, metrics (raw and calibrated), bits/dim and cost;
`predictions.csv` and the ROC / confusion / reliability PNGs in the
estimator's output directory, and `WORKDIR/calibration_<estimator>.json`
(temperature, prior, OOD threshold) for `sgc-score`.
"""
from __future__ import annotations

import csv
import functools
import math
import os

import jax
import numpy as np

from sgc_jax import classifier, likelihood, metrics, model_calibration, plots
from sgc_jax.data import reader

PER_ESTIMATOR = True


def image_calibration(job, estimator: str):
  """(the image-level calibration, the validation table it was fitted on or None).

  The configured prior; the temperature fitted on the held-out validation
  images when `eval.calibrate` and there are some, else T = 1.
  """
  model = job.model
  ev = model.config.eval
  log_prior = classifier.log_prior(ev.prior, model.num_classes,
                                   train_labels=reader.labels_of(job.data.train_source)
                                   if ev.prior == "empirical" else None)
  calibration = classifier.Calibration(temperature=1.0, log_prior=log_prior)
  val_scored = job.tables.get(estimator, "validation") if ev.calibrate else None
  if val_scored is not None:
    ok = val_scored["success"].all(axis=1)
    calibration = classifier.calibrate(val_scored["log_likelihood"][ok],
                                       val_scored["label"][ok], log_prior)
  return calibration, val_scored


def run(job, estimator: str) -> dict:
  """Scores the split (and validation) with `estimator`; writes its outputs; returns metrics."""
  model = job.model
  config = model.config
  scored = job.tables.get(estimator)
  calibration, val_scored = image_calibration(job, estimator)
  report = summarize(config, scored, calibration, model.spec, estimator=estimator)
  if val_scored is not None:
    report["validation_images"] = int(len(val_scored["label"]))
  if jax.process_index() == 0:
    write_outputs(job.out_dir(estimator), scored, calibration)
    # Temperature, prior and OOD thresholds for sgc-score, next to the checkpoint.
    val_ok = None if val_scored is None else np.flatnonzero(val_scored["success"].all(axis=1))
    val_ll = None if val_ok is None else val_scored["log_likelihood"][val_ok]
    # The complexity score compresses the images themselves; row i is record i.
    val_images = None if val_ok is None else (job.data.val_source[int(i)]["image"] for i in val_ok)
    dims = math.prod(model.spec.input_shape(config.data.num_channels))
    model_calibration.save(job.workdir, model_calibration.fit(
        calibration, val_ll, dims, config.data, estimator=estimator, step=model.step,
        validation_images=val_images))
  return report


def summarize(config, scored, calibration, spec, *, estimator: str) -> dict:
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
  dims = math.prod(spec.input_shape(config.data.num_channels))
  bpd = functools.partial(likelihood.bits_per_dim, num_dims=dims, bit_depth=config.data.bit_depth,
                          data_range=tuple(config.data.range))
  true_ll = ll[ok][np.arange(ok.sum()), labels[ok]]
  marginal_ll = np.logaddexp.reduce(ll[ok] + calibration.log_prior, axis=1)
  return {
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
      "estimator": estimator,
  }


def write_outputs(out_dir, scored, calibration):
  """predictions.csv and the ROC / confusion / reliability PNGs of a scored split."""
  os.makedirs(out_dir, exist_ok=True)
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
