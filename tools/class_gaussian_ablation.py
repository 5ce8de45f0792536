"""What the class-Gaussian skip does to the exact likelihood classifier on digits.

    python tools/class_gaussian_ablation.py --workdir /tmp/ablation
    # writes tools/results/class_gaussian_ablation.json (about 12 min on 2 CPU cores)

Three classifiers on the digits test split, all scored by the same exact
probability-flow likelihood (`configs/digits.py`'s eval settings):

  plain          the MLP score network alone (model.class_gaussian = "none")
  gaussian_only  the fitted class Gaussians alone (the skip model's network
                 output zeroed): a QDA whose density is computed by the ODE
  skip           the MLP plus the class-Gaussian skip (the digits default)

plus the denoising bound of the two trained models. Trainings resume from
`--workdir` if interrupted.
"""
import argparse
import json
import os
import sys
import time

import flax
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits  # pylint: disable=wrong-import-position
from sgc_jax import evaluation, train_state, trainer  # pylint: disable=wrong-import-position

_KEYS = ("accuracy", "auc", "nll", "ece", "bits_per_dim", "mean_nfe", "images_per_s")


def _summary(metrics: dict) -> dict:
  return {k: metrics[k] for k in _KEYS}


def _zero_network_output(variables: dict) -> dict:
  """The skip model's variables with its MLP's output layer zeroed (output == 0)."""
  net = flax.traverse_util.flatten_dict(variables["params"]["net"])
  layers = sorted({k[0] for k in net if k[0].startswith("Dense_")},
                  key=lambda name: int(name.split("_")[1]))
  # The output Dense is the last one the MLP creates.
  zeroed = {k: jnp.zeros_like(v) if k[0] == layers[-1] else v for k, v in net.items()}
  params = dict(variables["params"], net=flax.traverse_util.unflatten_dict(zeroed))
  return {**variables, "params": params}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "class_gaussian_ablation.json"))
  args = parser.parse_args()
  results = {"device": str(jax.devices()[0].device_kind), "devices": jax.device_count()}
  for name, covariance in (("skip", "full"), ("plain", "none")):
    config = digits.get_config()
    config.model.class_gaussian = covariance
    workdir = os.path.join(args.workdir, name)
    start = time.perf_counter()
    state, model = trainer.train(config, workdir)
    results[f"{name}_train_seconds"] = time.perf_counter() - start
    variables = train_state.inference_variables(state)
    reports = evaluation.evaluate(config, workdir, estimators=("ode", "denoising"),
                                  variables=variables, model=model)
    results[name] = _summary(reports["ode"])
    results[f"{name}_denoising_bound"] = _summary(reports["denoising"])
    if name == "skip":
      results["gaussian_only"] = _summary(evaluation.evaluate(
          config, os.path.join(args.workdir, "gaussian_only"),
          variables=_zero_network_output(variables), model=model)["ode"])
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  for name in ("plain", "gaussian_only", "skip", "plain_denoising_bound", "skip_denoising_bound"):
    print(f"{name:<24}" + "  ".join(f"{k} {results[name][k]:.4g}" for k in _KEYS))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
