"""The main job: generative vs discriminative classification on the embedded digits."""
from __future__ import annotations

import json
import os
import time

from sgc_jax import baseline, trainer

_ROWS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
         ("auc", "AUC (one-vs-rest)"), ("f1", "F1 (macro)"), ("nll", "NLL (calibrated)"),
         ("ece_uncalibrated", "ECE before calibration"), ("ece", "ECE after calibration"))


def format_table(generative: dict, discriminative: dict) -> str:
  """A plain-text side-by-side table of the two classifiers' metrics."""
  lines = [f"{'metric':<26}{'generative':>12}{'discriminative':>16}"]
  for key, name in _ROWS:
    lines.append(f"{name:<26}{generative[key]:>12.4f}{discriminative[key]:>16.4f}")
  lines.append(f"{'bits/dim (test)':<26}{generative['bits_per_dim']:>12.3f}{'-':>16}")
  lines.append(f"{'mean NFE per solve':<26}{generative['mean_nfe']:>12.1f}{'-':>16}")
  return "\n".join(lines)


def run_demo(workdir: str, config=None) -> dict:
  """Runs the demo and writes `workdir/report.json`; returns the report."""
  if config is None:
    from configs import digits  # pylint: disable=g-import-not-at-top
    config = digits.get_config()
  start = time.perf_counter()
  generative = trainer.train_and_evaluate(config, workdir)
  discriminative = baseline.train_and_evaluate(config, workdir)
  report = {"generative": generative, "discriminative": discriminative,
            "seconds": time.perf_counter() - start,
            "dataset": config.data.name, "workdir": os.path.abspath(workdir)}
  with open(os.path.join(workdir, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(format_table(generative, discriminative))
  print(f"total {report['seconds']:.0f} s; report: {os.path.join(workdir, 'report.json')}")
  return report
