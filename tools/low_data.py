"""The paper's claim on real data: generative vs discriminative with scarce and skewed labels.

    python tools/low_data.py --workdir /tmp/low_data
    # writes tools/results/low_data.json and low_data.png

Sarker et al. claim that the score-based generative classifier beats
discriminative models especially with scarce data and skewed classes. On
scikit-learn's real digits (`configs/digits.py`, the plain score network) this
trains, for each setting and seed, the generative model and the discriminative
CNN on the same capped training set (`data.train_per_class`) and scores the
whole test split by the exact ODE likelihood, by the denoising bound, and by
the CNN:

  per_class_N   N training images of every class (N = 5, 10, 20, 50 by default)
  imbalance     every training image of class 0, a tenth of every other class

reporting accuracy, balanced accuracy, macro AUC and per-class sensitivity
(the prior is uniform; no temperature is fitted, it changes none of these).
Each finished run is stored in the JSON at once: a rerun skips it, so an
interrupted study resumes.
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
from sgc_jax import baseline, evaluation, train_state, trainer  # pylint: disable=wrong-import-position
from sgc_jax.data import reader  # pylint: disable=wrong-import-position

_KEYS = ("accuracy", "balanced_accuracy", "auc", "per_class_sensitivity")
_METHODS = ("ode", "bound", "cnn")


def _caps(setting: str, num_classes: int, full_counts: np.ndarray) -> tuple:
  if setting == "imbalance":
    return tuple(int(full_counts[0]) if c == 0 else int(full_counts[c]) // 10
                 for c in range(num_classes))
  return (int(setting.removeprefix("per_class_")),) * num_classes


def run_one(setting: str, seed: int, workdir: str, args) -> dict:
  """Trains and scores one (setting, seed); returns {method: metrics}."""
  config = digits.get_config()
  config.seed = seed
  config.data.subset_seed = seed
  config.training.num_steps = args.steps
  config.training.checkpoint_every = args.steps
  config.baseline.num_steps = args.baseline_steps
  config.eval.max_examples = args.max_examples
  config.eval.num_probes = args.num_probes
  config.eval.calibrate = False
  config.eval.num_samples = 0
  builder = reader.load_builder(config.data)
  train_source, _ = reader.train_validation_sources(builder, config.data.validation_fraction,
                                                    seed=seed)
  full_counts = np.bincount(reader.labels_of(train_source))
  config.data.train_per_class = _caps(setting, len(full_counts), full_counts)
  # A batch cannot hold more images than the capped training set.
  total = sum(config.data.train_per_class)
  config.training.batch_size = min(config.training.batch_size, total)
  config.baseline.batch_size = min(config.baseline.batch_size, total)
  start = time.perf_counter()
  state, model = trainer.train(config, workdir)
  variables = train_state.inference_variables(state)
  reports = evaluation.evaluate(config, workdir, estimators=("ode", "denoising"),
                                variables=variables, model=model)
  ode, bound = reports["ode"], reports["denoising"]
  cnn = baseline.train_and_evaluate(config, workdir)
  result = {name: {k: m[k] for k in _KEYS} for name, m in zip(_METHODS, (ode, bound, cnn))}
  result["ode"]["flow_diagnostics"] = ode.get("flow_diagnostics")
  result["train_images"] = int(total)
  result["seconds"] = time.perf_counter() - start
  return result


def summarize(runs: dict) -> dict:
  """Mean and standard deviation over seeds, per setting and method."""
  table = {}
  for setting, by_seed in runs.items():
    table[setting] = {"train_images": next(iter(by_seed.values()))["train_images"],
                      "seeds": len(by_seed)}
    for method in _METHODS:
      for key in ("accuracy", "balanced_accuracy", "auc"):
        values = [r[method][key] for r in by_seed.values()]
        table[setting][f"{method}_{key}"] = [float(np.mean(values)), float(np.std(values))]
      sens = np.array([r[method]["per_class_sensitivity"] for r in by_seed.values()])
      table[setting][f"{method}_per_class_sensitivity"] = np.mean(sens, axis=0).round(3).tolist()
  return table


def plot(table: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  settings = sorted((s for s in table if s.startswith("per_class_")),
                    key=lambda s: int(s.removeprefix("per_class_")))
  if not settings:
    return
  n = [int(s.removeprefix("per_class_")) for s in settings]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for method, label in zip(_METHODS, ("generative, exact ODE", "generative, denoising bound",
                                      "discriminative CNN")):
    mean = [table[s][f"{method}_accuracy"][0] for s in settings]
    std = [table[s][f"{method}_accuracy"][1] for s in settings]
    ax.errorbar(n, mean, yerr=std, marker="o", capsize=3, label=label)
  ax.set_xscale("log")
  ax.set_xticks(n, [str(v) for v in n])
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("training images per class")
  ax.set_ylabel("test accuracy (digits)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--per_class", default="5,10,20,50")
  parser.add_argument("--imbalance", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=3000, help="score-model training steps")
  parser.add_argument("--baseline_steps", type=int, default=1500)
  parser.add_argument("--max_examples", type=int, default=0, help="test images (0: all 360)")
  parser.add_argument("--num_probes", type=int, default=4, help="Hutchinson probes per image")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "low_data.json"))
  args = parser.parse_args()
  settings = [f"per_class_{n}" for n in args.per_class.split(",") if n]
  settings += ["imbalance"] if args.imbalance else []
  results = {"runs": {}}
  if os.path.exists(args.out):
    with open(args.out, encoding="utf-8") as f:
      results = json.load(f)
  results.update(device=str(jax.devices()[0].device_kind), steps=args.steps,
                 baseline_steps=args.baseline_steps, max_examples=args.max_examples,
                 num_probes=args.num_probes)
  for seed in (int(s) for s in args.seeds.split(",")):
    for setting in settings:
      runs = results["runs"].setdefault(setting, {})
      if str(seed) in runs:
        continue
      workdir = os.path.join(args.workdir, f"{setting}_seed{seed}")
      runs[str(seed)] = run_one(setting, seed, workdir, args)
      results["table"] = summarize(results["runs"])
      os.makedirs(os.path.dirname(args.out), exist_ok=True)
      with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
      r = runs[str(seed)]
      print(f"{setting} seed {seed}: " + "  ".join(
          f"{m} acc {r[m]['accuracy']:.3f} bal {r[m]['balanced_accuracy']:.3f}" for m in _METHODS),
          flush=True)
  plot(results["table"], os.path.splitext(args.out)[0] + ".png")
  print(json.dumps(results["table"], indent=1))


if __name__ == "__main__":
  main()
