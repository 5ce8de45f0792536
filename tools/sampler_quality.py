"""Sample quality against network evaluations for every sampler, on a trained digits model.

    sgc-train --config configs/digits.py --workdir /tmp/digits --noevaluate
    flock /tmp/sgc_bench.lock python tools/sampler_quality.py --workdir /tmp/digits
    # writes tools/results/sampler_quality.json

The discriminative baseline (trained into WORKDIR/baseline/ first if absent)
classifies `--per_class` samples of every class from each sampler and step
count; a row's score is the fraction of class-y samples recognised as y
(`sgc_jax.sample_quality`), its cost the mean network evaluations per sample.
Every row starts from the same per-sample keys (the same prior draws). Two
reference rows: prior noise (chance) and the baseline's accuracy on the real
test images (what perfect samples would score).
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
from sgc_jax import api, baseline, inputs, run_dir, sample_quality  # pylint: disable=wrong-import-position

# (sampler, sampler options) rows; step counts chosen so that the samplers
# that cost two evaluations a step meet Euler–Maruyama at similar budgets.
_GRID = (
    [("ode", {"rtol": tol, "atol": tol}) for tol in (1e-2, 1e-3, 1e-4)]
    + [("euler_maruyama", {"num_steps": n}) for n in (10, 25, 50, 100, 250)]
    + [("shark", {"num_steps": n}) for n in (6, 13, 25, 50, 125)]
    + [("shark", {"num_steps": 25, "adaptive": True, "rtol": tol, "atol": tol})
       for tol in (1e-1, 1e-2)]
    + [("pc", {"num_steps": n}) for n in (6, 13, 25, 50, 125)]
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="a trained workdir (its config.json, else configs/digits.py)")
  parser.add_argument("--per_class", type=int, default=100)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "sampler_quality.json"))
  args = parser.parse_args()
  trained = api.load(args.workdir,
                     None if run_dir.has_config(args.workdir) else digits.get_config())
  config, sde, score_fn = trained.config, trained.sde, trained.score_fn
  shape = inputs.image_shape(config, trained.builder)
  logits_fn = baseline.load_logits_fn(config, args.workdir, shape)
  if logits_fn is None:
    baseline.train_and_evaluate(config, args.workdir)
    logits_fn = baseline.load_logits_fn(config, args.workdir, shape)
  with open(os.path.join(args.workdir, "baseline", "metrics.json"), encoding="utf-8") as f:
    baseline_accuracy = json.load(f)["accuracy"]
  num_classes, key = config.data.num_classes, jax.random.PRNGKey(0)
  labels = np.repeat(np.arange(num_classes), args.per_class)
  noise = sde.prior_sampling(key, (len(labels),) + shape)
  chance = sample_quality.classification_accuracy_score(logits_fn, noise, labels, num_classes)

  rows = []
  for name, options in _GRID:
    start = time.perf_counter()
    result = sample_quality.score_samplers(
        score_fn, sde, logits_fn, num_classes=num_classes, image_shape=shape, samplers=(name,),
        per_class=args.per_class, key=key, data_range=tuple(config.data.range), **options)[name]
    row = {"sampler": name, **options, "score": result["score"], "mean_nfe": result["mean_nfe"],
           "failed": result["failed"], "per_class": result["per_class"],
           "seconds_with_compile": time.perf_counter() - start}
    rows.append(row)
    print(f"{name:<15} {json.dumps(options):<55} score {row['score']:.3f}  "
          f"nfe {row['mean_nfe']:7.1f}  {row['seconds_with_compile']:6.1f} s", flush=True)
  results = {
      "device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
      "workdir": os.path.abspath(args.workdir), "checkpoint_step": trained.step,
      "model": config.model.to_dict(), "per_class": args.per_class,
      "classifier": "baseline CNN (configs/digits.py baseline)",
      "baseline_test_accuracy": baseline_accuracy, "prior_noise_score": chance["score"],
      "rows": rows,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  print(f"prior noise {chance['score']:.3f}; baseline on real test images {baseline_accuracy:.3f}; "
        f"wrote {args.out}")


if __name__ == "__main__":
  main()
