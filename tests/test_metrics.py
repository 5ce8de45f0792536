"""Tests for classification/calibration metrics and the evaluation plots."""
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from sgc_jax import metrics
from sgc_jax import plots


def _binary_probs(p1):
  p1 = np.asarray(p1, dtype=np.float64)
  return np.stack([1.0 - p1, p1], axis=1)


# Six negatives (five right, one wrong) and four positives (three right, one
# wrong). Confidences avoid bin edges so the ECE is easy to compute by hand.
_LABELS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
_P1 = np.array([0.18, 0.18, 0.18, 0.18, 0.18, 0.62, 0.7, 0.7, 0.7, 0.38])


def test_binary_metrics_match_hand_computation():
  result = metrics.classification_metrics(_LABELS, _binary_probs(_P1), 2)
  assert result["accuracy"] == pytest.approx(8 / 10)
  assert result["sensitivity"] == pytest.approx(3 / 4)
  assert result["specificity"] == pytest.approx(5 / 6)
  assert result["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
  # TP = 3, FP = 1, FN = 1: F1 = 2 * 3 / (2 * 3 + 1 + 1).
  assert result["f1"] == pytest.approx(6 / 8)
  # Of the 24 positive/negative pairs only (0.38 vs 0.62) is misordered.
  assert result["auc"] == pytest.approx(23 / 24)
  nll = -(5 * math.log(0.82) + math.log(0.38) + 3 * math.log(0.7)
          + math.log(0.38)) / 10
  assert result["nll"] == pytest.approx(nll)
  # Top-label confidences 0.82 (5 right), 0.62 (2 wrong) and 0.7 (3 right)
  # fall in three different bins of width 1/15.
  ece = (5 * abs(1 - 0.82) + 2 * abs(0 - 0.62) + 3 * abs(1 - 0.7)) / 10
  assert result["ece"] == pytest.approx(ece)
  # Per-class sensitivity: specificity and sensitivity, in class order.
  assert result.pop("per_class_sensitivity") == pytest.approx([5 / 6, 3 / 4])
  assert all(type(v) is float for v in result.values())


def test_ece_of_known_miscalibration():
  # Bin (0.8, 0.9]: 4 at 0.85 with 2 right -> gap 0.35.
  # Bin (0.6, 0.7]: 6 at 0.65 with 3 right -> gap 0.15.
  p1 = np.array([0.85] * 4 + [0.65] * 6)
  labels = np.array([1, 1, 0, 0] + [1, 1, 1, 0, 0, 0])
  ece = metrics.expected_calibration_error(_binary_probs(p1), labels,
                                           num_bins=10)
  assert ece == pytest.approx(0.4 * 0.35 + 0.6 * 0.15)


def test_ece_of_perfect_calibration_is_zero():
  # Confidence 0.75 right 3 times in 4; confidence 0.95 right 19 times in 20.
  p1 = np.array([0.75] * 4 + [0.95] * 20)
  labels = np.array([1, 1, 1, 0] + [1] * 19 + [0])
  assert metrics.expected_calibration_error(_binary_probs(p1),
                                            labels) == pytest.approx(0.0)


def test_ece_of_sampled_calibrated_predictions_is_small():
  rng = np.random.default_rng(0)
  p1 = rng.uniform(0, 1, 20000)
  labels = (rng.uniform(0, 1, 20000) < p1).astype(int)
  assert metrics.expected_calibration_error(_binary_probs(p1), labels) < 0.02


def test_reliability_bins_edge_convention():
  # A confidence equal to an edge belongs to the bin below it: (lo, hi].
  edge = np.linspace(0.0, 1.0, 6)[3]
  counts, _, _ = metrics.reliability_bins(_binary_probs([edge, 1.0]), [1, 1],
                                          num_bins=5)
  np.testing.assert_array_equal(counts, [0, 0, 1, 0, 1])


def test_auc_perfect_and_random():
  rng = np.random.default_rng(1)
  labels = np.repeat([0, 1], 2000)
  separated = np.where(labels == 1, rng.uniform(0.6, 1, 4000),
                       rng.uniform(0, 0.4, 4000))
  random_scores = rng.uniform(0, 1, 4000)
  assert metrics.classification_metrics(
      labels, _binary_probs(separated), 2)["auc"] == 1.0
  assert metrics.classification_metrics(
      labels, _binary_probs(random_scores), 2)["auc"] == pytest.approx(
          0.5, abs=0.05)


def test_log_probs_keep_order_and_exact_nll_when_saturated():
  # Probabilities of class 1 all round to exactly 0 or 1, so they tie; the
  # log-probabilities still order the images.
  labels = np.array([0, 1, 0, 1])
  log_odds = np.array([-900.0, -800.0, 700.0, 800.0])
  log_p1 = -np.logaddexp(0.0, -log_odds)
  log_probs = np.stack([log_p1 - log_odds, log_p1], axis=1)
  probs = np.exp(log_probs)
  from_probs = metrics.classification_metrics(labels, probs, 2)
  from_logs = metrics.classification_metrics(labels, probs, 2,
                                             log_probs=log_probs)
  assert from_probs["auc"] == pytest.approx(0.5)
  assert from_logs["auc"] == pytest.approx(0.75)
  # Wrong on images 1 (800 nats) and 2 (700 nats).
  assert from_logs["nll"] == pytest.approx((800.0 + 700.0) / 4)
  assert from_probs["nll"] == pytest.approx(2 * -math.log(1e-12) / 4)


def test_multiclass_metrics_match_sklearn():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, 300)
  logits = rng.standard_normal((300, 3)) + 1.5 * np.eye(3)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  preds = probs.argmax(axis=1)
  result = metrics.classification_metrics(labels, probs, 3)
  assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
  assert result["balanced_accuracy"] == pytest.approx(
      skm.balanced_accuracy_score(labels, preds))
  assert result["f1"] == pytest.approx(
      skm.f1_score(labels, preds, average="macro"))
  assert result["auc"] == pytest.approx(
      skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
  assert "sensitivity" not in result
  # Log-probabilities rank the same, so they give the same AUC.
  assert metrics.classification_metrics(
      labels, probs, 3, log_probs=np.log(probs))["auc"] == pytest.approx(
          result["auc"])


def test_absent_class_gives_nan_not_a_crash():
  labels = np.array([0, 0, 0])
  result = metrics.classification_metrics(labels,
                                          _binary_probs([0.1, 0.7, 0.2]), 2)
  assert math.isnan(result["auc"])
  assert math.isnan(result["sensitivity"])
  assert result["specificity"] == pytest.approx(2 / 3)
  assert result["balanced_accuracy"] == pytest.approx(2 / 3)
  assert result["f1"] == 0.0  # one false positive, so F1 is defined

  multi = metrics.classification_metrics(
      np.array([0, 1, 1]), np.eye(3)[[0, 1, 2]] * 0.9 + 0.1 / 3, 3)
  assert math.isnan(multi["auc"])
  assert multi["balanced_accuracy"] == pytest.approx((1 + 0.5) / 2)


def test_metrics_reject_bad_shapes():
  with pytest.raises(ValueError):
    metrics.classification_metrics(np.array([0, 1]), np.ones((3, 2)) / 2, 2)
  with pytest.raises(ValueError):
    metrics.classification_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, 2)
  with pytest.raises(ValueError):
    metrics.classification_metrics(np.array([0, 2]), np.ones((2, 2)) / 2, 2)


def _assert_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path):
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 3, 200)
  logits = 2.0 * rng.standard_normal((200, 3)) + 2.0 * np.eye(3)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  sharp = probs**4 / (probs**4).sum(axis=1, keepdims=True)
  names = ["normal", "benign", "malignant"]
  binary_labels = (labels > 0).astype(int)
  binary_probs = _binary_probs(probs[:, 1:].sum(axis=1))

  written = [
      plots.roc_curve(binary_labels, binary_probs, tmp_path / "roc2.png"),
      plots.roc_curve(labels, probs, tmp_path / "roc3.png", class_names=names),
      plots.confusion_matrix(labels, probs.argmax(axis=1),
                             tmp_path / "sub" / "confusion.png",
                             class_names=names),
      plots.reliability_diagram(labels, probs, tmp_path / "rel1.png"),
      plots.reliability_diagram(
          labels, {"uncalibrated": sharp, "calibrated": probs},
          tmp_path / "rel2.png", title="Calibration"),
      plots.image_grid(rng.uniform(0, 1, (10, 16, 16, 1)),
                       tmp_path / "gray.png", labels=names * 3 + ["x"],
                       ncols=4, title="samples"),
      plots.image_grid(rng.uniform(0, 1, (3, 16, 16, 3)),
                       tmp_path / "rgb.png"),
  ]
  for path in written:
    assert isinstance(path, str)
    _assert_png(path)


def test_image_grid_rejects_bad_channels(tmp_path):
  with pytest.raises(ValueError, match="shape"):
    plots.image_grid(np.zeros((2, 8, 8, 2)), tmp_path / "bad.png")
