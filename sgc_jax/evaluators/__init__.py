"""Ways of judging a trained model, one small module each, chosen by `config.eval.evaluators`.

Every module has the same shape (after big_vision's `evaluators/`):

    PER_ESTIMATOR: bool                  # runs for every table asked for, or once
    run(job, estimator) -> dict          # metrics for `estimator`'s report

`job` (`common.Job`) holds a loaded model (score function, variables,
config), the data, the scored tables shared by all evaluators, and where
outputs go. Evaluators never restore a checkpoint or train a baseline, so
the training loop can run them on in-memory parameters as `sgc-evaluate`
runs them on a loaded run. `sgc_jax.evaluation` runs the chosen ones and
writes the report.
"""
from __future__ import annotations

import importlib

# The default: every way of judging a model this package has.
NAMES = ("class_likelihood", "flow_diagnostics", "sample_quality", "breast_level")


def chosen(config) -> tuple[str, ...]:
  """The evaluators `config.eval.evaluators` names (all of them for configs saved before it)."""
  return tuple(config.eval.get("evaluators", NAMES))


def get(name: str):
  """The evaluator module called `name` (imported on first use, as big_vision does)."""
  return importlib.import_module(f"{__name__}.{name}")
