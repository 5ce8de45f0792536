"""Classification and calibration metrics for class-posterior arrays.

All functions take plain arrays (numpy or jax): `labels` [N] integers in
[0, C) and `probs` [N, C] class probabilities, and return plain Python floats
so the results can go straight into JSON or a TensorBoard scalar.

Absent classes. A split may lack a class altogether (a small test set, a
site with no malignant cases). Quantities defined per true class are then
undefined for that class and are reported as float('nan') rather than raising:
`sensitivity` / `specificity` of a missing class, and `auc` whenever any of the
C classes is missing (its one-vs-rest ROC curve has no positives, so neither
that AUC nor a macro average over all C classes exists). The macro averages
`balanced_accuracy` and multi-class `f1` average over the classes present in
`labels`, which is scikit-learn's definition of balanced accuracy.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

# Probabilities are clipped to [_NLL_EPS, 1] before the log, so a saturated
# wrong prediction costs -log(1e-12) ~ 27.6 nats instead of infinity.
_NLL_EPS = 1e-12


def _check(labels, probs, num_classes: int | None = None):
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  if probs.ndim != 2 or probs.shape[0] == 0:
    raise ValueError(
        f"probs must have shape [N, C] with N > 0, got {probs.shape}.")
  if labels.shape != (probs.shape[0],):
    raise ValueError(f"labels must have shape [{probs.shape[0]}], got "
                     f"{labels.shape}.")
  if num_classes is not None and probs.shape[1] != num_classes:
    raise ValueError(f"probs has {probs.shape[1]} columns but num_classes is "
                     f"{num_classes}.")
  if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
    raise ValueError(f"labels must lie in [0, {probs.shape[1]}).")
  return labels.astype(np.int64), probs


def reliability_bins(probs, labels, num_bins: int = 15):
  """Bins top-label confidence into `num_bins` equal-width bins on [0, 1].

  Bin b holds the examples whose confidence max_y p(y | x) lies in
  (b / num_bins, (b + 1) / num_bins] (the first bin also holds 0).

  Returns:
    (counts, confidence, accuracy), each [num_bins]: the number of examples,
    their mean confidence and the fraction whose argmax is the label. Empty
    bins have count 0 and NaN confidence and accuracy.
  """
  labels, probs = _check(labels, probs)
  confidence = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # side="left" on the interior edges puts a confidence equal to an edge in
  # the bin below it, giving the (lo, hi] convention of Guo et al. (2017).
  bin_index = np.searchsorted(edges[1:-1], confidence, side="left")
  counts = np.bincount(bin_index, minlength=num_bins).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_conf = np.bincount(bin_index, confidence, num_bins) / counts
    accuracy = np.bincount(bin_index, correct, num_bins) / counts
  return counts, mean_conf, accuracy


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
  """Top-label expected calibration error with equal-width bins.

  ECE = sum_b (n_b / N) |accuracy_b - confidence_b| over the bins of
  `reliability_bins`: 0 for a perfectly calibrated classifier, and 1 minus
  the accuracy for one that always reports probability 1.
  """
  counts, confidence, accuracy = reliability_bins(probs, labels, num_bins)
  filled = counts > 0
  weights = counts[filled] / counts.sum()
  return float(np.sum(weights * np.abs(accuracy[filled] - confidence[filled])))


def _roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
  """ROC AUC, or NaN when either class is missing (AUC undefined)."""
  if is_positive.all() or not is_positive.any():
    return float("nan")
  return float(skm.roc_auc_score(is_positive, scores))


def per_class_recall(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """[C] recall of each class (sensitivity), NaN for a class with no examples in `labels`."""
  support = np.bincount(labels, minlength=num_classes)
  hits = np.bincount(labels[preds == labels], minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(support > 0, hits / support, np.nan)


def discrimination_metrics(labels, scores) -> dict[str, float]:
  """AUC and, for two classes, sensitivity and specificity of the argmax decision.

  The part of `classification_metrics` that a bootstrap resamples (thousands
  of calls): `labels` [N] int64 in [0, C), `scores` [N, C] float posteriors or
  log-posteriors (they rank and decide alike). Same definitions and NaNs as
  `classification_metrics`.
  """
  num_classes = scores.shape[1]
  if num_classes == 2:
    recall = per_class_recall(labels, scores.argmax(axis=1), 2)
    return {"auc": _roc_auc(labels == 1, scores[:, 1]), "sensitivity": float(recall[1]),
            "specificity": float(recall[0])}
  # Averaging the binary AUCs by hand (rather than roc_auc_score's "ovr" mode) is the same
  # macro average but also accepts log-probabilities, which do not sum to one.
  return {"auc": float(np.mean([_roc_auc(labels == c, scores[:, c])
                                for c in range(num_classes)]))}


def classification_metrics(labels, probs, num_classes: int, *,
                           log_probs=None) -> dict[str, float]:
  """Computes the summary metrics of a classifier's posteriors.

  Args:
    labels: [N] integer labels in [0, num_classes).
    probs: [N, num_classes] class probabilities p(y | x).
    num_classes: C. C == 2 is treated as a binary task with class 1 positive.
    log_probs: optional [N, C] log p(y | x) matching `probs`. When given, AUC
      and NLL use it instead of `probs`: it ranks the same but keeps the order
      of images whose probabilities have saturated to exactly 0 or 1 (which
      would otherwise tie and distort the AUC), and it gives the exact NLL
      rather than one clipped at -log(1e-12).

  Returns:
    A dict of Python floats:
      accuracy: fraction of argmax predictions equal to the label.
      balanced_accuracy: mean per-class recall over the classes in `labels`.
      auc: binary: ROC AUC of the class-1 score; multi-class: macro average of
        one-vs-rest ROC AUCs. NaN if any class is absent from `labels`.
      f1: binary: F1 of class 1 (NaN if class 1 is neither in `labels` nor
        predicted); multi-class: macro F1 over the classes in `labels`.
      nll: mean negative log-probability of the true label, in nats.
      ece: top-label expected calibration error (15 bins).
      sensitivity, specificity (binary only): recall of class 1 and of class
        0; NaN if that class is absent from `labels`.
  """
  labels, probs = _check(labels, probs, num_classes)
  if log_probs is None:
    scores = probs
    true_log_prob = np.log(np.clip(probs[np.arange(labels.size), labels],
                                   _NLL_EPS, 1.0))
  else:
    scores = np.asarray(log_probs, dtype=np.float64)
    if scores.shape != probs.shape:
      raise ValueError(f"log_probs must have shape {probs.shape}, got "
                       f"{scores.shape}.")
    true_log_prob = scores[np.arange(labels.size), labels]
  preds = probs.argmax(axis=1)
  present = np.unique(labels)
  recall = per_class_recall(labels, preds, num_classes)

  result = {
      "accuracy": float(skm.accuracy_score(labels, preds)),
      "balanced_accuracy": float(np.nanmean(recall)),
      "nll": float(-np.mean(true_log_prob)),
      "ece": expected_calibration_error(probs, labels),
      # Sensitivity of every class (NaN where a class has no examples): what a
      # balanced accuracy averages, and what class imbalance hurts first.
      "per_class_sensitivity": [float(r) for r in recall],
  }
  result.update(discrimination_metrics(labels, scores))
  if num_classes == 2:
    # F1 = 2 TP / (2 TP + FP + FN) is 0/0 only when class 1 is neither in
    # `labels` nor predicted; that case is undefined, hence NaN.
    result["f1"] = float(skm.f1_score(labels, preds, labels=[1],
                                      average="macro", zero_division=np.nan))
  else:
    result["f1"] = float(skm.f1_score(labels, preds, labels=present,
                                      average="macro"))
  return result
