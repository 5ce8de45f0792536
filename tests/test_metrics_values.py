"""metrics.json's flow diagnostics and sample-quality values, recomputed, not only present."""
import csv
import json
import os
import shutil

import flax.serialization
import jax
import numpy as np

from sgc_jax import baseline, evaluation, flow_diagnostics, train_state
from sgc_jax.evaluators import common
from tiny import tiny_sample_quality_config


def _table(path):
  with open(path, encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  labels = np.array([int(r["label"]) for r in rows])
  return labels, np.array([[float(r[f"log_likelihood_{c}"]) for c in range(10)] for r in rows])


def _copy(source, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir, ignore=shutil.ignore_patterns("eval_*", "calibration_*",
                                                                  "baseline"))
  return workdir


def test_flow_diagnostics_in_metrics_json_are_those_of_the_two_written_tables(
    trained_tiny_digits, tmp_path, monkeypatch):
  config, source, state, model = trained_tiny_digits
  workdir = _copy(source, tmp_path)
  config = config.copy_and_resolve_references()
  config.eval.num_samples, config.eval.calibrate = 0, False
  config.eval.max_examples, config.eval.num_time_samples = 8, 8
  # The bound's half-sample tables, which predictions.csv does not hold.
  tables = []
  real_score_source = common.score_source
  monkeypatch.setattr(common, "score_source",
                      lambda *a, **k: tables.append(real_score_source(*a, **k)) or tables[-1])
  evaluation.evaluate(config, workdir, estimators=("ode", "denoising"),
                      variables=train_state.inference_variables(state), model=model)
  halves = tables[1]["half_log_likelihoods"]
  with open(os.path.join(workdir, "eval_test", "metrics.json"), encoding="utf-8") as f:
    written = json.load(f)["flow_diagnostics"]
  labels, ode = _table(os.path.join(workdir, "eval_test", "predictions.csv"))
  labels_bound, bound = _table(os.path.join(workdir, "eval_test_denoising", "predictions.csv"))
  np.testing.assert_array_equal(labels, labels_bound)
  # The decision agreement, counted by hand from the two tables.
  agreement = float(np.mean(ode.argmax(1) == bound.argmax(1)))
  assert written["images"] == 8
  assert written["decision_agreement"] == agreement
  # Every value, recomputed from the tables as written (4 decimals).
  again = flow_diagnostics.flow_diagnostics(ode, bound, labels,
                                            bound_halves=(halves[:, 0], halves[:, 1]))
  assert set(again) == set(written) and written["bound_noise_from"] == "halves"
  for key, value in again.items():
    if isinstance(value, str):
      assert written[key] == value, key
    else:
      np.testing.assert_allclose(written[key], value, rtol=1e-3, atol=1e-3, err_msg=key)
  # The gaps by hand: ODE minus bound, at the true class and over the wrong ones.
  gap = ode - bound
  true = np.eye(10, dtype=bool)[labels]
  np.testing.assert_allclose(written["gap_true_class"], gap[true].mean(), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(written["gap_wrong_classes"], gap[~true].mean(), rtol=1e-3,
                             atol=1e-3)


def test_sample_quality_in_metrics_json_is_the_baselines_recognition_rate(trained_tiny_digits,
                                                                          tmp_path):
  config, source, state, model = trained_tiny_digits
  workdir = _copy(source, tmp_path)
  config = tiny_sample_quality_config(config, per_class=3)
  # A baseline that calls every image a 0: exactly the class-0 samples are
  # recognised, so the score is 1/10 whatever the samples look like.
  cnn = baseline.SmallCNN(num_classes=10, width=config.baseline.width)
  params = cnn.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
  params = jax.tree_util.tree_map(np.asarray, params)
  dense = [name for name in params if name.startswith("Dense")]
  assert len(dense) == 1
  params[dense[0]]["kernel"] = np.zeros_like(params[dense[0]]["kernel"])
  params[dense[0]]["bias"] = np.eye(10, dtype=np.float32)[0] * 10.0
  os.makedirs(os.path.join(workdir, "baseline"))
  with open(os.path.join(workdir, "baseline", "params.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(params))
  evaluation.evaluate(config, workdir, variables=train_state.inference_variables(state),
                      model=model)
  with open(os.path.join(workdir, "eval_test", "metrics.json"), encoding="utf-8") as f:
    written = json.load(f)
  assert written["sample_quality_euler_maruyama"] == 0.1
  assert written["sample_nfe_euler_maruyama"] == 4.0
  with open(os.path.join(workdir, "eval_test", "sample_quality.json"), encoding="utf-8") as f:
    detail = json.load(f)["samplers"]["euler_maruyama"]
  assert detail["per_class"] == [1.0] + [0.0] * 9
