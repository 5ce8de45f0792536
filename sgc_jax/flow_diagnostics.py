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
  * `gap_true_class`, `gap_wrong_classes`: mean ODE - bound in nats for the
    true and for the other classes. A bound is below the SDE model's likelihood,
    so a positive gap is expected; a gap much larger for the wrong classes than
    for the true one means the flow gives density to the wrong classes that
    the SDE model does not.
"""
from __future__ import annotations

import numpy as np


def flow_diagnostics(ode_log_likelihood, bound_log_likelihood, labels) -> dict:
  """The agreement of ODE and bound scores of the same images ([N, C] nats each, labels [N]).

  Rows where either table is not finite are left out (`images` says how many
  were used).
  """
  ode = np.asarray(ode_log_likelihood, np.float64)
  bound = np.asarray(bound_log_likelihood, np.float64)
  labels = np.asarray(labels)
  if ode.shape != bound.shape or ode.ndim != 2 or labels.shape != ode.shape[:1]:
    raise ValueError(f"flow_diagnostics: tables {ode.shape} and {bound.shape} with labels "
                     f"{labels.shape} must be [N, C], [N, C] and [N]")
  ok = np.isfinite(ode).all(axis=1) & np.isfinite(bound).all(axis=1)
  ode, bound, labels = ode[ok], bound[ok], labels[ok]
  if not len(labels):
    raise ValueError("flow_diagnostics: no image has finite ODE and bound scores")
  ode_c = (ode - ode.mean(axis=1, keepdims=True)).ravel()
  bound_c = (bound - bound.mean(axis=1, keepdims=True)).ravel()
  slope = float(np.dot(ode_c, bound_c) / max(np.dot(bound_c, bound_c), 1e-300))
  correlation = float(np.corrcoef(ode_c, bound_c)[0, 1])
  true = np.zeros(ode.shape, bool)
  true[np.arange(len(labels)), labels] = True
  gap = ode - bound
  return {
      "images": int(len(labels)),
      "decision_agreement": float(np.mean(ode.argmax(1) == bound.argmax(1))),
      "centred_slope": slope,
      "centred_correlation": correlation,
      "gap_true_class": float(gap[true].mean()),
      "gap_wrong_classes": float(gap[~true].mean()) if (~true).any() else float("nan"),
  }
