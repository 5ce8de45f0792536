"""End to end on the real digits: train a tiny model, evaluate, baseline, demo report."""
import csv
import json
import os
import shutil
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
import pytest

from sgc_jax import baseline, demo, estimators, evaluation, inputs, models, train_state
from sgc_jax import sde as sde_lib
from sgc_jax.data import reader, records
from sgc_jax.evaluators import common
from tiny import tiny_sample_quality_config


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
  report = evaluation.evaluate(config, workdir)["ode"]
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
  from_ckpt = evaluation.evaluate(config, workdir)["ode"]
  ids_ckpt, labels_ckpt, ll_ckpt = read_predictions(predictions)
  in_memory = evaluation.evaluate(config, workdir, variables=train_state.inference_variables(state),
                                  model=model)["ode"]
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
  report = evaluation.evaluate(config, workdir)["denoising"]
  assert report["mean_nfe"] == 8.0 and "flow_diagnostics" not in report
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


def test_two_tables_in_one_evaluation_share_the_bound(trained, tmp_path, monkeypatch):
  config, source, state, model = trained
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir, ignore=shutil.ignore_patterns("eval_*", "calibration_*"))
  config = config.copy_and_resolve_references()
  config.eval.num_samples, config.eval.calibrate = 0, False
  config.eval.max_examples, config.eval.num_time_samples = 4, 8
  scored, tables = [], []
  real_score_source = common.score_source

  def score_source(*args, **kwargs):
    scored.append(kwargs["desc"])
    tables.append(real_score_source(*args, **kwargs))
    return tables[-1]

  monkeypatch.setattr(common, "score_source", score_source)
  reports = evaluation.evaluate(config, workdir, estimators=("ode", "denoising"),
                                variables=train_state.inference_variables(state), model=model)
  # The flow diagnostics reuse the reported bound: each table is scored once.
  assert scored == ["score test (ode)", "score test (denoising)"]
  # The bound's noise is measured from its two half-sample tables, whose mean it is.
  assert reports["ode"]["flow_diagnostics"]["bound_noise_from"] == "halves"
  assert "half_log_likelihoods" not in tables[0]
  bound = tables[1]
  assert bound["half_log_likelihoods"].shape == (4, 2, 10)
  np.testing.assert_allclose(bound["half_log_likelihoods"].mean(axis=1), bound["log_likelihood"],
                             rtol=1e-6, atol=1e-4)
  assert set(reports) == {"ode", "denoising"}
  assert reports["ode"]["estimator"] == "ode" and reports["denoising"]["mean_nfe"] == 8.0
  assert reports["ode"]["flow_diagnostics"]["images"] == 4
  assert "flow_diagnostics" not in reports["denoising"]
  for estimator, name in (("ode", "eval_test"), ("denoising", "eval_test_denoising")):
    with open(os.path.join(workdir, name, "metrics.json"), encoding="utf-8") as f:
      assert json.dumps(json.load(f), sort_keys=True) == json.dumps(reports[estimator],
                                                                   sort_keys=True)
    assert os.path.exists(os.path.join(workdir, f"calibration_{estimator}.json"))
  # Asking for the tables, not flipping the estimator: the ODE's table is the evaluation's.
  _, _, ode_table = read_predictions(os.path.join(workdir, "eval_test", "predictions.csv"))
  _, _, bound_table = read_predictions(os.path.join(workdir, "eval_test_denoising",
                                                    "predictions.csv"))
  assert not np.allclose(ode_table, bound_table)


def test_sample_quality_is_judged_by_a_given_baseline_never_a_trained_one(trained, tmp_path):
  config, source, _, _ = trained
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir, ignore=shutil.ignore_patterns("eval_*", "baseline"))
  config = tiny_sample_quality_config(config, per_class=2)
  report = evaluation.evaluate(config, workdir)["ode"]
  # No baseline in the workdir: the samples are drawn, not judged, and no CNN is trained.
  assert not os.path.exists(os.path.join(workdir, "baseline"))
  assert os.path.getsize(os.path.join(workdir, "eval_test", "samples.png")) > 1000
  assert not any(k.startswith("sample_") for k in report)
  assert "flow_diagnostics" not in report      # not among the chosen evaluators
  # A saved baseline (here an untrained one) is what judges them.
  cnn = baseline.SmallCNN(num_classes=10, width=config.baseline.width)
  params = cnn.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
  os.makedirs(os.path.join(workdir, "baseline"))
  with open(os.path.join(workdir, "baseline", "params.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(params))
  report = evaluation.evaluate(config, workdir)["ode"]
  assert 0.0 <= report["sample_quality_euler_maruyama"] <= 1.0
  assert report["sample_nfe_euler_maruyama"] == 4.0
  with open(os.path.join(workdir, "eval_test", "sample_quality.json"), encoding="utf-8") as f:
    assert json.load(f)["samplers"]["euler_maruyama"]["score"] == report[
        "sample_quality_euler_maruyama"]


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
