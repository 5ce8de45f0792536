"""The main job: generative vs discriminative classification on the embedded digits."""
from __future__ import annotations

import json
import os
import time

from sgc_jax import baseline, evaluation, provenance, train_state, trainer

_ROWS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
         ("auc", "AUC (one-vs-rest)"), ("f1", "F1 (macro)"), ("nll", "NLL (calibrated)"),
         ("ece_uncalibrated", "ECE before calibration"), ("ece", "ECE after calibration"))


def format_table(generative: dict, denoising: dict, discriminative: dict) -> str:
  """A plain-text side-by-side table of the classifiers' metrics."""
  header = ("metric", "generative (ODE)", "generative (bound)", "discriminative")
  lines = [f"{header[0]:<26}{header[1]:>18}{header[2]:>20}{header[3]:>16}"]
  for key, name in _ROWS:
    lines.append(f"{name:<26}{generative[key]:>18.4f}{denoising[key]:>20.4f}"
                 f"{discriminative[key]:>16.4f}")
  lines.append(f"{'bits/dim (test)':<26}{generative['bits_per_dim']:>18.3f}"
               f"{denoising['bits_per_dim']:>20.3f}{'-':>16}")
  lines.append(f"{'network passes per solve':<26}{generative['mean_nfe']:>18.1f}"
               f"{denoising['mean_nfe']:>20.1f}{'-':>16}")
  return "\n".join(lines)


def run_demo(workdir: str, config=None) -> dict:
  """Runs the demo and writes `workdir/report.json`; returns the report."""
  if config is None:
    from configs import digits  # pylint: disable=g-import-not-at-top
    config = digits.get_config()
  start, load_before = time.perf_counter(), os.getloadavg()
  state, model = trainer.train(config, workdir)
  variables = train_state.inference_variables(state)
  # First, so the evaluations' sample-quality scores reuse this CNN, not train their own.
  discriminative = baseline.train_and_evaluate(config, workdir)
  # The exact probability-flow likelihood and the forward-only denoising bound; the flow
  # diagnostics compare the two on the same tables.
  reports = evaluation.evaluate(config, workdir, estimators=("ode", "denoising"),
                                variables=variables, model=model)
  generative, denoising = reports["ode"], reports["denoising"]
  report = {"generative": generative, "generative_denoising": denoising,
            "discriminative": discriminative,
            "seconds": time.perf_counter() - start,
            # The seconds mean something only beside the host and its load.
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "machine": provenance.machine(), "commit": provenance.git_commit(),
            "config": config.to_dict(), "dataset": config.data.name,
            "workdir": os.path.abspath(workdir)}
  with open(os.path.join(workdir, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(format_table(generative, denoising, discriminative))
  print(f"total {report['seconds']:.0f} s; report: {os.path.join(workdir, 'report.json')}")
  return report
