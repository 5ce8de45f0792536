"""Flow diagnostics: does the ODE's density agree with the denoising bound on the same images?

Compares the split's ODE table with the bound's (`sgc_jax.flow_diagnostics`),
reusing the bound's table when the evaluation reports it too, scoring it
otherwise. The bound's two half-sample estimates (an even number of time
samples) measure its noise for `centred_slope_deming`. Part of a report that
holds the ODE's table; nothing without it.
"""
from __future__ import annotations

from sgc_jax import flow_diagnostics

PER_ESTIMATOR = False
_FLOW, _BOUND = "ode", "denoising"


def run(job, estimator: str) -> dict:
  """{"flow_diagnostics": ...} when the evaluation reports the ODE's table; else {}."""
  del estimator  # runs once, whichever table its report holds
  if _FLOW not in job.estimators:
    return {}
  ode, bound = job.tables.get(_FLOW), job.tables.get(_BOUND)
  halves = bound.get("half_log_likelihoods")
  return {"flow_diagnostics": flow_diagnostics.flow_diagnostics(
      ode["log_likelihood"], bound["log_likelihood"], ode["label"],
      bound_halves=None if halves is None else (halves[:, 0], halves[:, 1]))}
