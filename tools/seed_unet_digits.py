"""The mammography configs' network and recipe on real images: the seed U-Net on digits.

    python tools/seed_unet_digits.py --workdir /tmp/seed_unet_digits
    # writes tools/results/seed_unet_digits.json

Trains `configs/digits_unet.py:seed` (the seed U-Net scaled to (16, 32, 64)
channels, the seed's recipe, digits upsampled to 16x16) and scores the first
`eval.max_examples` test images three ways:

  ode        the exact probability-flow likelihood (the seed's classifier),
             with the flow diagnostics (its agreement with the bound)
  bound      the denoising bound (64 shared (t, z) samples, t from 1e-5)
  bound_t01  the same with t >= 0.1 only: what the class information in the
             noise levels the dequantization lattice does not dominate gives

and trains the discriminative CNN baseline once (it scores the whole test
split: `sgc_jax.baseline` has no image cap).

`--variant` picks a recipe (see `VARIANTS`); each variant's results are stored
in the JSON as each part finishes, so a rerun skips what is done and an
interrupted study resumes (trainings resume from their checkpoints too).
"""
import argparse
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits_unet  # pylint: disable=wrong-import-position
import sgc_jax  # pylint: disable=wrong-import-position
from sgc_jax import baseline, evaluation, train_state, trainer  # pylint: disable=wrong-import-position

_KEYS = ("accuracy", "balanced_accuracy", "auc", "bits_per_dim", "mean_nfe", "images",
         "failed_images", "seconds", "per_class_sensitivity")

# The seed's own scorer on the first 100 test images, as these results were measured
# (configs/digits_unet.py now scores with the fast default).
_SEED_SCORER = {"eval.solver": "dopri5", "eval.adaptive": True, "eval.probe": "gaussian",
                "eval.resample_probes": False, "eval.rtol": 1e-4, "eval.atol": 1e-4,
                "eval.max_examples": 100}


def _seed_config():
  config = digits_unet.get_config("seed")
  config.update_from_flattened_dict(_SEED_SCORER)
  return config


# Recipes, as overrides of configs/digits_unet.py:seed with the seed's scorer.
VARIANTS = {
    "seed": {},
    # Training length alone: twice the epochs, the step schedule stretched
    # to match (x0.2 every 40 epochs instead of 20).
    "long": {"training.num_steps": 4000, "training.lr_decay_every_epochs": 40},
    # The seed model, its exact ODE likelihood started at t = 0.1 instead of
    # 1e-5: log p_0.1(x | y), the density of the class's images blurred by
    # the forward process, skipping the noise levels where the bound loses
    # its class information (bound_t01).
    "seed_ode_t01": {"eval.eps": 0.1},
}
# Variants that score another variant's trained model (no training of their own).
SHARED_TRAINING = {"seed_ode_t01": "seed"}


def _summary(metrics: dict) -> dict:
  return {k: metrics[k] for k in _KEYS if k in metrics}


def _save(results: dict, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)


def run_variant(name: str, workdir: str, run: dict, save) -> None:
  """Trains and scores one variant into `run` (ODE with flow diagnostics, bound,
  bound from t = 0.1), calling `save()` after every part.

  Outputs go to `workdir/name`; a variant in `SHARED_TRAINING` reads the other
  variant's checkpoint and scores only the ODE (its bounds are the other's).
  """
  config = _seed_config()
  config.update_from_flattened_dict(VARIANTS[name])
  run["overrides"] = VARIANTS[name]
  out_dir = os.path.join(workdir, name)
  if name in SHARED_TRAINING:
    # Restored, not resumed: a resumed run would rewrite the other's config.json.
    trained = sgc_jax.load(os.path.join(workdir, SHARED_TRAINING[name]), config)
    model, variables = trained.model, trained.variables
  else:
    start = time.perf_counter()
    state, model = trainer.train(config, out_dir)
    run.setdefault("train_seconds", time.perf_counter() - start)
    variables = train_state.inference_variables(state)
  if "ode" not in run:
    ode = evaluation.evaluate(config, out_dir, variables=variables, model=model)["ode"]
    run["ode"] = {**_summary(ode), "flow_diagnostics": ode["flow_diagnostics"]}
    save()
  if name in SHARED_TRAINING:
    return
  for part, eps in (("bound", config.training.eps), ("bound_t01", 0.1)):
    if part in run:
      continue
    bound = config.copy_and_resolve_references()
    bound.eval.eps = eps
    run[part] = _summary(evaluation.evaluate(bound, os.path.join(out_dir, part),
                                             estimators=("denoising",), variables=variables,
                                             model=model)["denoising"])
    save()


def run_baseline(workdir: str) -> dict:
  """The CNN baseline on the same records (it does not depend on the recipe)."""
  start = time.perf_counter()
  cnn = baseline.train_and_evaluate(_seed_config(), workdir)
  return {**_summary(cnn), "train_and_eval_seconds": time.perf_counter() - start}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--variant", default="seed", choices=sorted(VARIANTS))
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "seed_unet_digits.json"))
  args = parser.parse_args()
  results = {"runs": {}}
  if os.path.exists(args.out):
    with open(args.out, encoding="utf-8") as f:
      results = json.load(f)
  results.update(device=str(jax.devices()[0].device_kind), devices=jax.device_count())
  run = results["runs"].setdefault(args.variant, {})
  run_variant(args.variant, args.workdir, run, lambda: _save(results, args.out))
  if "cnn" not in results:
    results["cnn"] = run_baseline(os.path.join(args.workdir, "cnn"))
  _save(results, args.out)
  for part in (p for p in ("ode", "bound", "bound_t01") if p in run):
    print(f"{args.variant:<12}{part:<10}" + "  ".join(
        f"{k} {run[part][k]:.4g}" for k in ("accuracy", "balanced_accuracy", "auc")))
  print(f"{'cnn':<22}" + "  ".join(
      f"{k} {results['cnn'][k]:.4g}" for k in ("accuracy", "balanced_accuracy", "auc")))
  print("flow diagnostics:", json.dumps(run["ode"]["flow_diagnostics"]))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
