"""Bayes decision layer: class log-likelihoods -> calibrated class posteriors.

A score-based generative classifier gives, for every image x and class y, the
log-likelihood log p(x | y) in nats (an array `log_likelihoods` [N, C]). Bayes'
rule turns these into posteriors p(y | x) proportional to p(x | y) p(y).

The raw likelihoods are of a whole image (D pixels), so class gaps are hundreds
of nats and softmax posteriors saturate at exactly 0 or 1. The likelihood is
over-confident because the model's per-pixel evidence is not independent; we
correct that with a single temperature T on the likelihood term,

  log p_T(y | x) = log_softmax_y( log p(x | y) / T + log p(y) ),

i.e. the tempered likelihood p(x | y)^(1/T). T is fitted by minimising the
negative log-likelihood of the labels on a held-out split (`fit_temperature`).

Where T goes, and what it changes:
  * Only the likelihood is divided; the prior is not. Dividing the prior too
    would flatten the class frequencies along with the evidence, so log p(y)
    would stop meaning "class frequency".
  * With a uniform prior the prior term is the same for every class, so for
    each image the class ranking (and the argmax) is that of log p(x | y) for
    every T > 0: calibration changes the probabilities, not the decisions.
  * With a non-uniform prior the argmax can change with T, and only through
    the prior: T sets how much evidence the likelihood carries against the
    prior. The argmax at the fitted T is the Bayes decision under the
    calibrated model, which is the intended behaviour.
  * For two classes the log-odds are (gap in log-likelihoods) / T + a constant,
    an increasing function of the gap for every image alike, so ROC curves and
    AUC do not depend on T or the prior at all.

Everything here is plain numpy in float64 (inputs may be jax arrays): the
arrays are small, and float64 keeps log-posteriors exact where the
probabilities have saturated. This module deliberately depends on nothing else
in sgc_jax, so it can be used on saved likelihood arrays alone.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize
from scipy import special

# Search range for log T. exp(-3) ~ 0.05 covers likelihoods that are
# under-confident; exp(12) ~ 1.6e5 covers gaps of tens of thousands of nats.
_LOG_T_BOUNDS = (-3.0, 12.0)
# Coarse grid points on log T before the local bounded refinement.
_GRID_SIZE = 61


def _as_log_likelihoods(log_likelihoods) -> np.ndarray:
  ll = np.asarray(log_likelihoods, dtype=np.float64)
  if ll.ndim != 2:
    raise ValueError(
        f"log_likelihoods must have shape [N, C], got shape {ll.shape}.")
  return ll


def _as_labels(labels, num_examples: int | None, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape [N], got shape {labels.shape}.")
  if num_examples is not None and labels.shape[0] != num_examples:
    raise ValueError(
        f"labels has {labels.shape[0]} entries but there are {num_examples} "
        "examples.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"labels must lie in [0, {num_classes}), got range "
        f"[{labels.min()}, {labels.max()}].")
  return labels


def log_prior(kind: str, num_classes: int, train_labels=None) -> np.ndarray:
  """Returns the log class prior log p(y), shape [num_classes].

  Args:
    kind: "uniform" (every class 1 / num_classes) or "empirical" (class
      frequencies of `train_labels`, with add-one smoothing so that a class
      missing from the training labels gets a small probability instead of
      -inf, which would rule it out for every image).
    num_classes: number of classes C.
    train_labels: integer labels in [0, C); required for "empirical".

  Raises:
    ValueError: on an unknown `kind`, or on missing or out-of-range labels.
  """
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}.")
  if kind == "uniform":
    return np.full(num_classes, -np.log(num_classes))
  if kind == "empirical":
    if train_labels is None:
      raise ValueError('log_prior("empirical") needs train_labels.')
    labels = _as_labels(train_labels, None, num_classes)
    counts = np.bincount(labels, minlength=num_classes) + 1.0
    return np.log(counts) - np.log(counts.sum())
  raise ValueError(
      f"Unknown prior kind {kind!r}; expected 'uniform' or 'empirical'.")


def log_posteriors(log_likelihoods, log_prior, temperature: float = 1.0
                  ) -> np.ndarray:
  """Returns log p_T(y | x) = log_softmax(log p(x | y) / T + log p(y)).

  The temperature divides the likelihood term only; see the module docstring
  for why, and for what it does and does not change (per-image ranking is
  T-independent under a uniform prior; under a non-uniform prior the argmax
  may move with T, through the prior only).

  Args:
    log_likelihoods: [N, C] log p(x | y) in nats.
    log_prior: [C] log p(y), e.g. from `log_prior`.
    temperature: T > 0.

  Returns:
    [N, C] float64 log-posteriors; each row's exp sums to 1. They stay exact
    (finite, ordered) where the probabilities themselves round to 0 or 1.
  """
  if not (np.isfinite(temperature) and temperature > 0):
    raise ValueError(f"temperature must be positive and finite, got "
                     f"{temperature}.")
  ll = _as_log_likelihoods(log_likelihoods)
  prior = np.asarray(log_prior, dtype=np.float64)
  if prior.shape != (ll.shape[1],):
    raise ValueError(f"log_prior must have shape [{ll.shape[1]}], got "
                     f"{prior.shape}.")
  # log_softmax is shift-invariant per row: removing the row maximum first
  # keeps the division by a small T from overflowing on likelihoods of
  # thousands of nats.
  ll = ll - ll.max(axis=1, keepdims=True)
  return special.log_softmax(ll / temperature + prior, axis=1)


def predict(log_posteriors) -> np.ndarray:
  """Returns the predicted class (argmax of the posteriors), shape [N]."""
  return np.argmax(np.asarray(log_posteriors), axis=1)


def binary_log_odds(log_posteriors) -> np.ndarray:
  """Returns log p(1 | x) - log p(0 | x), shape [N], for a two-class task.

  Use this rather than p(1 | x) as the ROC/AUC score: it is rank-equivalent
  but does not tie where the probabilities saturate at 0 or 1.
  """
  lp = np.asarray(log_posteriors, dtype=np.float64)
  if lp.ndim != 2 or lp.shape[1] != 2:
    raise ValueError(
        f"binary_log_odds needs log_posteriors of shape [N, 2], got {lp.shape}.")
  return lp[:, 1] - lp[:, 0]


def _label_nll(log_t: float, ll: np.ndarray, labels: np.ndarray,
               prior: np.ndarray) -> float:
  """Mean negative log-likelihood of the labels at temperature exp(log_t)."""
  lp = log_posteriors(ll, prior, float(np.exp(log_t)))
  return float(-np.mean(lp[np.arange(labels.shape[0]), labels]))


def fit_temperature(log_likelihoods, labels, log_prior) -> float:
  """Fits the temperature T that minimises the NLL of `labels`.

  Fit on a held-out split, never on the test set. The search runs over log T
  in [exp(-3), exp(12)] ~ [0.05, 1.6e5], so it covers both already-calibrated
  likelihoods (T ~ 1) and whole-image likelihoods whose class gaps are
  hundreds of nats (T in the hundreds).

  The NLL is convex in 1/T (log-softmax is concave in its logits, which are
  linear in 1/T), hence unimodal in log T. It is however nearly flat at large
  T, where every posterior tends to the prior, so a coarse grid on log T
  locates the basin and a bounded Brent search refines it between the grid
  neighbours. If the labels are perfectly separated the NLL keeps decreasing
  as T -> 0 and the lower bound is returned.

  Args:
    log_likelihoods: [N, C] log p(x | y) in nats on the calibration split.
    labels: [N] integer labels in [0, C).
    log_prior: [C] log p(y) that will be used with the fitted T.

  Returns:
    The fitted temperature as a Python float.
  """
  ll = _as_log_likelihoods(log_likelihoods)
  if ll.shape[0] == 0:
    raise ValueError("fit_temperature needs at least one example.")
  if not np.all(np.isfinite(ll)):
    raise ValueError("log_likelihoods contain non-finite values; the "
                     "temperature fit would be meaningless.")
  labels = _as_labels(labels, ll.shape[0], ll.shape[1])
  prior = np.asarray(log_prior, dtype=np.float64)

  lo, hi = _LOG_T_BOUNDS
  grid = np.linspace(lo, hi, _GRID_SIZE)
  nll = np.array([_label_nll(g, ll, labels, prior) for g in grid])
  best = int(np.argmin(nll))
  bracket = (grid[max(best - 1, 0)], grid[min(best + 1, _GRID_SIZE - 1)])
  result = optimize.minimize_scalar(
      _label_nll, bounds=bracket, args=(ll, labels, prior), method="bounded",
      options={"xatol": 1e-6})
  # Brent never evaluates the grid point itself, so on a nearly flat NLL it
  # can end marginally worse than it; keep whichever is better.
  log_t = result.x if result.fun <= nll[best] else grid[best]
  return float(np.exp(log_t))


# eq=False: field-wise equality would compare the prior arrays elementwise and
# fail; identity equality (and hashing) is what a fitted object needs.
@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
  """A fitted temperature together with the prior it was fitted with."""

  temperature: float
  log_prior: np.ndarray

  def apply(self, log_likelihoods) -> np.ndarray:
    """Returns the calibrated log-posteriors [N, C] for `log_likelihoods`."""
    return log_posteriors(log_likelihoods, self.log_prior, self.temperature)


def calibrate(log_likelihoods, labels, log_prior) -> Calibration:
  """Fits the temperature on a held-out split; see `fit_temperature`."""
  prior = np.asarray(log_prior, dtype=np.float64)
  return Calibration(
      temperature=fit_temperature(log_likelihoods, labels, prior),
      log_prior=prior)
