"""Exact-likelihood scoring speed: the engine against the seed's path, on a trained digits model.

    sgc-demo --workdir /tmp/demo                       # or any trained configs/digits.py run
    python tools/likelihood_speed.py --workdir /tmp/demo
    # writes tools/results/likelihood_speed.json

Scores the same test images for all 10 classes with
  * the seed's path (`sgc_jax.reference_likelihood`: scipy RK45 on the host,
    batch flattened into one ODE, one class at a time, drift and divergence in
    separate passes, one Gaussian probe) at its rtol = atol = 1e-5;
  * `sgc_jax.likelihood.class_log_likelihoods` (Tsit5 + PID in one jitted,
    vmapped program) at the same tolerance and probe kind, at the digits
    config's settings, and with the exact divergence.
Times exclude compilation (every method runs once first); all run on one CPU
device. Error is the mean |difference| of log p(x|y) from the engine
with the exact divergence (the Hutchinson rows' probe noise shows there);
agreement is the share of decisions identical to the seed path's.
"""
import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits  # pylint: disable=wrong-import-position
from sgc_jax import inputs, likelihood, models, reference_likelihood  # pylint: disable=wrong-import-position
from sgc_jax import sde as sde_lib  # pylint: disable=wrong-import-position
from sgc_jax import train_state  # pylint: disable=wrong-import-position
from sgc_jax.config_validation import validate_config  # pylint: disable=wrong-import-position
from sgc_jax.data import reader, records  # pylint: disable=wrong-import-position

SEED_PATH = "seed path (scipy RK45 on the host, 1e-5, 1 Gaussian probe)"
EXACT = "engine, exact divergence (1e-4)"
ENGINE_SETTINGS = {
    "engine, seed's tolerance (1e-5, 1 Gaussian probe)":
        {"rtol": 1e-5, "atol": 1e-5, "divergence": "hutchinson", "probe": "gaussian"},
    "engine, digits config (1e-4, 1 Rademacher probe)":
        {"rtol": 1e-4, "atol": 1e-4, "divergence": "hutchinson", "probe": "rademacher"},
    EXACT:
        {"rtol": 1e-4, "atol": 1e-4, "divergence": "exact"},
}


def _timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def measure(config, score_fn, sde, source, num_images: int) -> dict:
  """All methods on the first `num_images` test images; one results row per method."""
  batch = [source[i] for i in range(num_images)]
  labels = np.array([r["label"] for r in batch])
  x = inputs.model_inputs(jax.random.PRNGKey(0), np.stack([r["image"] for r in batch]), config)
  classes, key = config.data.num_classes, jax.random.PRNGKey(1)
  # Compile the seed path's two jitted passes with a loose, short solve first.
  reference_likelihood.seed_class_log_likelihoods(score_fn, sde, x, 1, key=key, rtol=1.0, atol=1.0)
  runs = {}
  runs[SEED_PATH] = _timed(lambda: reference_likelihood.seed_class_log_likelihoods(
      score_fn, sde, x, classes, key=key))
  for name, options in ENGINE_SETTINGS.items():
    run = lambda options=options: likelihood.class_log_likelihoods(  # pylint: disable=cell-var-from-loop
        score_fn, sde, x, classes, key=key, **options)
    _timed(run)                                    # compile
    runs[name] = _timed(run)
  seed, seed_seconds = runs[SEED_PATH]
  exact = np.asarray(runs[EXACT][0].log_likelihood)
  rows = []
  for name, (result, seconds) in runs.items():
    ll = np.asarray(result.log_likelihood)
    rows.append({
        "method": name, "images": num_images, "seconds": seconds,
        "ms_per_image_all_classes": 1e3 * seconds / num_images,
        "speedup_vs_seed": seed_seconds / seconds,
        "forward_passes_per_image_class": float(np.mean(result.num_function_evals)),
        "mean_abs_diff_vs_exact_nats": float(np.mean(np.abs(ll - exact))),
        "same_decision_as_seed": float(np.mean(ll.argmax(1) == seed.log_likelihood.argmax(1))),
        "accuracy": float(np.mean(ll.argmax(1) == labels)),
        "all_succeeded": bool(np.all(result.success)),
    })
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained configs/digits.py run")
  parser.add_argument("--images", default="4,40", help="comma-separated batch sizes")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "likelihood_speed.json"))
  args = parser.parse_args()

  config = digits.get_config()
  builder = reader.load_builder(config.data)
  config = validate_config(config, builder)
  sde = sde_lib.from_config(config.sde)
  model = models.get_model(config.model, config.data.num_classes, sde)
  variables = train_state.restore_inference_variables(config, args.workdir)
  score_fn = models.make_score_fn(model, variables, sde.marginal_std)
  source = records.data_source(builder, "test")
  results = {"device": jax.devices()[0].device_kind, "classes": config.data.num_classes,
             "workdir": os.path.abspath(args.workdir), "rows": []}
  for num_images in (int(n) for n in args.images.split(",")):
    results["rows"] += measure(config, score_fn, sde, source, num_images)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  for row in results["rows"]:
    print(f"{row['images']:>4} img  {row['method']:<62} {row['seconds']:8.2f} s  "
          f"x{row['speedup_vs_seed']:6.1f}  {row['forward_passes_per_image_class']:7.1f} passes  "
          f"|d| {row['mean_abs_diff_vs_exact_nats']:6.2f}  acc {row['accuracy']:.3f}")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
