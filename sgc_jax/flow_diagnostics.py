"""Does the probability-flow density agree with the denoising bound? Flow-quality diagnostics.

The exact ODE likelihood and the denoising bound (`sgc_jax.estimators`) judge
the same score network in two ways: the bound is the reverse SDE's evidence
lower bound, which the training loss controls; the ODE's density is a different
model that first-order score matching does not control (Lu et al., ICML 2022).
When the network is the true score both give the same log p(x|y) (the bound is
then tight for every image and class). When the flow is fit badly the ODE's
class differences drift away from the bound's, and its decisions with them.

For every image the class-centred scores c_y = log p(x|y) - mean_y' log p(x|y')
carry the decision (the image's own normaliser cancels). We report:
  * `decision_agreement`: fraction of images whose argmax class is the same;
  * `centred_slope`, `centred_correlation`: least-squares slope and Pearson
    correlation of the ODE's centred scores against the bound's, over all
    (image, class) entries. Slope ~ 1 and correlation ~ 1: the flow separates
    classes as much as the bound does; slope << 1: the flow compresses class
    differences (decisions left to noise); slope >> 1: it exaggerates them;
  * `centred_slope_deming`, `bound_noise_std`, `bound_noise_from`: the same
    slope corrected for the bound's own Monte Carlo noise. Least squares treats
    the bound as exact, so noise of variance s^2 in its centred scores pulls the
    slope towards 0 by the factor var(signal) / (var(signal) + s^2) (errors in
    variables) even when the flow is perfect. The correction is Deming
    regression. Given `bound_halves`, two independent estimates of the bound
    from half of its samples each, s^2 is measured as a quarter of their mean
    squared centred difference (the noise of their mean, exactly when the bound
    is their mean), and the slope is cov / (var(bound) - s^2): Deming's fit for
    the error-variance ratio these moments imply, consistent whatever the ODE's
    own noise or misfit (if independent of the bound's noise). Without halves
    it is the orthogonal fit (Deming with ratio 1: both scores assumed equally
    noisy), and `bound_noise_std` is the noise that fit attributes to each
    score; it is unbiased only if they are: below the true slope when the ODE
    scatters less about the line than the bound, above it when the ODE
    scatters more (its own noise or misfit). Pass halves for a trained model;
  * `gap_true_class`, `gap_wrong_classes`: mean ODE - bound in nats for the
    true and for the other classes. A bound is below the SDE model's likelihood,
    so a positive gap is expected; a gap much larger for the wrong classes than
    for the true one means the flow gives density to the wrong classes that
    the SDE model does not.
"""
from __future__ import annotations

import numpy as np


def _deming_slope(var_x, var_y, cov, ratio):
  """Deming regression's slope of y on x for error-variance ratio var(e_y) / var(e_x).

  The root of cov b^2 - (var_y - ratio var_x) b - ratio cov = 0 that has the
  sign of the covariance (the roots' product is -ratio); ratio 1 is the
  orthogonal (total least squares) fit.
  """
  if cov == 0.0:
    return float("nan")
  spread = var_y - ratio * var_x
  return float((spread + np.hypot(spread, 2.0 * np.sqrt(ratio) * cov)) / (2.0 * cov))


def _centred(table):
  """Every row minus its mean over classes, flattened: the scores that decide."""
  return (table - table.mean(axis=1, keepdims=True)).ravel()


def flow_diagnostics(ode_log_likelihood, bound_log_likelihood, labels, *,
                     bound_halves=None) -> dict:
  """The agreement of ODE and bound scores of the same images ([N, C] nats each, labels [N]).

  `bound_halves`, optional: a pair of [N, C] tables, independent estimates of
  the bound from half of its samples each (their mean is the bound), from which
  the bound's noise is measured for `centred_slope_deming`; without them that
  slope is the orthogonal fit (module docstring).

  Rows where any table is not finite are left out (`images` says how many
  were used).
  """
  ode = np.asarray(ode_log_likelihood, np.float64)
  bound = np.asarray(bound_log_likelihood, np.float64)
  labels = np.asarray(labels)
  halves = [] if bound_halves is None else [np.asarray(h, np.float64) for h in bound_halves]
  if bound_halves is not None and len(halves) != 2:
    raise ValueError(f"flow_diagnostics: bound_halves must be two tables, got {len(halves)}")
  if (ode.shape != bound.shape or ode.ndim != 2 or labels.shape != ode.shape[:1]
      or any(h.shape != bound.shape for h in halves)):
    raise ValueError(f"flow_diagnostics: tables {ode.shape} and {bound.shape} (and bound "
                     f"halves) with labels {labels.shape} must be [N, C], [N, C] and [N]")
  ok = np.isfinite(ode).all(axis=1) & np.isfinite(bound).all(axis=1)
  for half in halves:
    ok &= np.isfinite(half).all(axis=1)
  ode, bound, labels = ode[ok], bound[ok], labels[ok]
  if not len(labels):
    raise ValueError("flow_diagnostics: no image has finite ODE and bound scores")
  ode_c, bound_c = _centred(ode), _centred(bound)
  # Row-centred scores have mean 0 overall, so these are their (co)variances.
  var_bound, var_ode = np.mean(bound_c**2), np.mean(ode_c**2)
  cov = np.mean(ode_c * bound_c)
  slope = float(cov / max(var_bound, 1e-300))
  correlation = float(np.corrcoef(ode_c, bound_c)[0, 1])
  if halves:
    # (a - b) / 2 has the distribution of the noise of (a + b) / 2, without its signal.
    noise_var = float(np.mean((_centred(halves[0][ok]) - _centred(halves[1][ok]))**2) / 4)
    signal_var = var_bound - noise_var
    # Noise as large as the whole spread leaves no signal to fit a slope to.
    deming = float(cov / signal_var) if signal_var > 0 else float("nan")
  else:
    deming = _deming_slope(var_bound, var_ode, cov, 1.0)
    # The fit's own split of the bound's variance: signal var = cov / slope.
    noise_var = max(var_bound - cov / deming, 0.0) if np.isfinite(deming) else float("nan")
  true = np.zeros(ode.shape, bool)
  true[np.arange(len(labels)), labels] = True
  gap = ode - bound
  return {
      "images": int(len(labels)),
      "decision_agreement": float(np.mean(ode.argmax(1) == bound.argmax(1))),
      "centred_slope": slope,
      "centred_correlation": correlation,
      "centred_slope_deming": deming,
      "bound_noise_std": float(np.sqrt(noise_var)),
      "bound_noise_from": "halves" if halves else "orthogonal fit",
      "gap_true_class": float(gap[true].mean()),
      "gap_wrong_classes": float(gap[~true].mean()) if (~true).any() else float("nan"),
  }
