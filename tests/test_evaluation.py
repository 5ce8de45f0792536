"""End to end on the real digits: train a tiny model, evaluate, baseline, demo report."""
import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sgc_jax import baseline, demo, estimators, evaluation, inputs, models, train_state
from sgc_jax import sde as sde_lib
from sgc_jax.data import reader, records


def read_predictions(path):
  """(ids, labels, log-likelihood table [images, 10]) of a predictions.csv."""
  with open(path, encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  ids = [int(r["id"]) for r in rows]
  labels = [int(r["label"]) for r in rows]
  ll = np.array([[float(r[f"log_likelihood_{c}"]) for c in range(10)] for r in rows])
  return ids, labels, ll


@pytest.fixture(scope="module")
def trained(trained_tiny_digits):
  return trained_tiny_digits


def test_evaluate_from_checkpoint_writes_metrics_predictions_and_plots(trained):
  config, workdir, _, _ = trained
  report = evaluation.evaluate(config, workdir)
  out = os.path.join(workdir, "eval_test")
  on_disk = json.load(open(os.path.join(out, "metrics.json"), encoding="utf-8"))
  # JSON text compares NaNs (classes absent from 8 images) and nested lists.
  assert json.dumps(on_disk, sort_keys=True) == json.dumps(report, sort_keys=True)
  for key in ("accuracy", "balanced_accuracy", "auc", "f1", "bits_per_dim", "mean_nfe",
              "images_per_s", "ece", "ece_uncalibrated", "temperature"):
    assert key in report
  assert report["images"] == 8 and report["failed_images"] == 0
  # The class Gaussians alone classify digits well (measured: 0.75 of these 8
  # images, chance 0.1); labels misaligned with their likelihoods would not.
  assert report["accuracy"] >= 0.5
  assert report["bits_per_dim"] > 0 and report["mean_nfe"] > 1
  for name in ("roc.png", "confusion.png", "reliability.png", "samples.png"):
    assert os.path.getsize(os.path.join(out, name)) > 1000
  rows = open(os.path.join(out, "predictions.csv"), encoding="utf-8").read().splitlines()
  assert len(rows) == 1 + 8 and rows[0].startswith("id,label,prediction,success")


def test_checkpoint_and_in_memory_variables_give_the_same_likelihoods(trained):
  config, workdir, state, model = trained
  config = config.copy_and_resolve_references()
  config.eval.calibrate = False
  config.eval.num_samples = 0
  predictions = os.path.join(workdir, "eval_test", "predictions.csv")
  from_ckpt = evaluation.evaluate(config, workdir)
  ids_ckpt, labels_ckpt, ll_ckpt = read_predictions(predictions)
  in_memory = evaluation.evaluate(config, workdir, variables=train_state.inference_variables(state),
                                  model=model)
  ids_mem, labels_mem, ll_mem = read_predictions(predictions)
  assert from_ckpt["bits_per_dim"] == pytest.approx(in_memory["bits_per_dim"], rel=1e-6)
  # The whole per-image, per-class table (written to 4 decimals), not one mean.
  assert ids_ckpt == ids_mem and labels_ckpt == labels_mem
  assert np.isfinite(ll_ckpt).all() and np.ptp(ll_ckpt) > 1.0
  np.testing.assert_allclose(ll_ckpt, ll_mem, rtol=1e-6, atol=1e-4)


def test_denoising_estimator_runs_through_the_same_pipeline(trained):
  config, workdir, state, model = trained
  config = config.copy_and_resolve_references()
  config.eval.estimator = "denoising"
  config.eval.num_time_samples = 8
  config.eval.num_samples = 0
  report = evaluation.evaluate(config, workdir)
  assert report["mean_nfe"] == 8.0
  assert os.path.exists(os.path.join(workdir, "eval_test_denoising", "metrics.json"))
  ids, labels, table = read_predictions(
      os.path.join(workdir, "eval_test_denoising", "predictions.csv"))
  # The same table computed directly: the test split's first 8 records, each
  # dequantized with the key of its id, scored by the estimator in one batch.
  source = records.data_source(reader.load_builder(config.data), "test")
  rows = [source[i] for i in range(8)]
  assert ids == [int(r["id"]) for r in rows] and labels == [int(r["label"]) for r in rows]
  deq_key, probe_key = jax.random.split(jax.random.PRNGKey(config.seed + 1))
  x = np.concatenate([inputs.model_inputs(jax.random.fold_in(deq_key, r["id"]),
                                          np.asarray(r["image"])[None], config) for r in rows])
  sde = sde_lib.from_config(config.sde)
  score_fn = models.make_score_fn(model, train_state.inference_variables(state), sde.marginal_std)
  direct = estimators.denoising_log_likelihoods(score_fn, sde, x, 10, key=probe_key,
                                                num_time_samples=8, eps=config.eval.eps)
  np.testing.assert_allclose(table, np.asarray(direct.log_likelihood), rtol=1e-5, atol=2e-3)


def test_baseline_reports_the_same_metrics(trained):
  config, workdir, _, _ = trained
  report = baseline.train_and_evaluate(config, workdir)
  assert {"accuracy", "auc", "f1", "ece", "temperature"} <= set(report)
  assert report["images"] == 360          # the whole digits test split
  assert report["accuracy"] > 0.3         # 150 steps already beat chance (0.1) by far


def test_demo_table_lists_all_three_classifiers():
  metrics = {"accuracy": 0.9, "balanced_accuracy": 0.9, "auc": 0.99, "f1": 0.9, "nll": 0.3,
             "ece_uncalibrated": 0.1, "ece": 0.02, "bits_per_dim": 3.2, "mean_nfe": 100.0}
  table = demo.format_table(metrics, metrics, metrics)
  assert "generative (ODE)" in table and "discriminative" in table
  assert len(table.splitlines()) == 10


def test_evaluate_cli_without_checkpoint_names_the_workdir(tmp_path):
  config_path = os.path.join(os.path.dirname(__file__), "..", "configs", "digits.py")
  result = subprocess.run(
      [sys.executable, "-m", "sgc_jax.cli.evaluate", f"--config={config_path}",
       f"--workdir={tmp_path}", f"--config.data.data_dir={tmp_path / 'tfds'}"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "no checkpoint" in result.stderr and str(tmp_path) in result.stderr
