"""The paper's claim on real data: generative vs discriminative with scarce and skewed labels.

    flock /tmp/sgc_heavy.lock python tools/low_data.py --workdir /tmp/low_data --model mlp
    flock /tmp/sgc_heavy.lock python tools/low_data.py --workdir /tmp/low_data --model unet \
        --per_class 5,50 --imbalance=false
    # writes tools/results/low_data_seeds.json and low_data_seeds_<model>.png

Sarker et al. claim that the score-based generative classifier beats
discriminative models especially with scarce data and skewed classes. For
each setting and seed this trains the generative model (`--model mlp`:
`configs/digits.py` on 8x8 digits; `--model unet`: the seed U-Net of
`configs/digits_unet.py` on 16x16) and two discriminative CNNs (plain and
class-balanced loss) on the same capped training set (`data.train_per_class`),
and scores the whole test split by the exact ODE likelihood, by the denoising
bound, and by both CNNs:

  per_class_N   N training images of every class (N = 5, 10, 20, 50 by default)
  imbalance     every training image of class 0, a tenth of every other class

reporting accuracy, balanced accuracy, macro AUC and per-class sensitivity
(uniform prior, no temperature: it changes none of these), mean and standard
deviation over the seeds.

Training length on small sets follows one rule: the same number of epochs as
the config's full-data recipe (steps = epochs x images / batch), at least
`--min_steps`, at most the recipe's steps. Training a fixed number of steps
instead memorises a small set (2,000 steps on 50 images is 2,000 epochs): the
density then falls off every test image, and the ODE's decisions with it
(tools/results/low_data.json, one seed: ODE 0.245 at 5 per class).

Each finished (setting, seed) cell is stored in the JSON at once: a rerun
skips it, so the study runs in parts. The JSON records every setting that
changes the numbers; a rerun with other settings into the same file is
refused, naming them.
"""
import argparse
import copy
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits, digits_unet  # pylint: disable=wrong-import-position
# pylint: disable=wrong-import-position
from sgc_jax import baseline, evaluation, provenance, run_dir, train_state, trainer
from sgc_jax.data import reader  # pylint: disable=wrong-import-position

_KEYS = ("accuracy", "balanced_accuracy", "auc", "per_class_sensitivity")
_METHODS = ("ode", "bound", "cnn", "cnn_balanced")
_LABELS = ("generative, exact ODE", "generative, denoising bound", "discriminative CNN",
           "CNN, class-balanced loss")
_CONFIGS = {"mlp": digits, "unet": digits_unet}
# The exact-ODE scorer of every cell: configs/digits.py's (expint3, 27 log-SNR steps, fresh
# Rademacher probes), also for the U-Net, whose own config keeps the seed's Dopri5.
_SCORER = {"eval.solver": "expint3", "eval.adaptive": False, "eval.num_steps": 27,
           "eval.grid": "logsnr", "eval.divergence": "hutchinson", "eval.probe": "rademacher",
           "eval.resample_probes": True}


def _caps(setting: str, num_classes: int, full_counts: np.ndarray) -> tuple:
  if setting == "imbalance":
    return tuple(int(full_counts[0]) if c == 0 else int(full_counts[c]) // 10
                 for c in range(num_classes))
  return (int(setting.removeprefix("per_class_")),) * num_classes


def training_steps(recipe_steps: int, recipe_batch: int, recipe_images: int, images: int,
                   batch: int, min_steps: int) -> int:
  """The training-length rule: the recipe's epochs on `images`, in [min_steps, recipe_steps]."""
  epochs = recipe_steps * recipe_batch / recipe_images
  return int(min(recipe_steps, max(min_steps, round(epochs * images / batch))))


def weight_decay_of(args) -> float:
  """--weight_decay, or the model's config's own (configs/digits.py: 0.2 since 2026-12-02)."""
  if args.weight_decay is not None:
    return args.weight_decay
  return float(_CONFIGS[args.model].get_config().training.weight_decay)


def network_of(model: str) -> dict:
  """The score network the model's config trains: its kind, its own block, the class skip."""
  config = _CONFIGS[model].get_config().model
  return json.loads(json.dumps({"name": config.name, config.name: config[config.name].to_dict(),
                                "class_gaussian": config.class_gaussian}))


def recipe_of(model: str) -> dict:
  """The full-data recipe's length, which sets every cell's epochs (training_steps)."""
  training = _CONFIGS[model].get_config().training
  return {"num_steps": int(training.num_steps), "batch_size": int(training.batch_size)}


def settings_of(args) -> dict:
  """Every setting that changes a cell's numbers (a rerun must match them)."""
  return {"model": args.model, "min_steps": args.min_steps, "num_probes": args.num_probes,
          "baseline_steps": args.baseline_steps, "max_examples": args.max_examples,
          "scorer": _SCORER, "weight_decay": weight_decay_of(args),
          "network": network_of(args.model), "recipe": recipe_of(args.model)}


def differing_settings(stored: dict, args) -> list[str]:
  """The settings in which a results file's cells differ from this run's.

  Cells written before an option existed recorded none: they trained with the value that was
  then the only one (no weight decay; the network's later options as run directories read
  them, `run_dir.with_added_options`).
  """
  wanted = settings_of(args)
  stored = {"weight_decay": 0.0, **copy.deepcopy(stored)}
  if "network" in stored:
    stored["network"] = run_dir.with_added_options({"model": stored["network"]})["model"]
  return sorted(k for k in wanted if stored.get(k) != wanted[k])


def cell_config(args, setting: str, seed: int):
  """The config of one (setting, seed) cell, its training set capped and its length set."""
  config = _CONFIGS[args.model].get_config()
  config.update_from_flattened_dict({**_SCORER, "eval.num_probes": args.num_probes})
  config.seed = seed
  config.data.subset_seed = seed
  config.training.weight_decay = weight_decay_of(args)
  config.baseline.num_steps = args.baseline_steps
  config.eval.max_examples = args.max_examples
  config.eval.calibrate = False
  config.eval.num_samples = 0
  builder = reader.load_builder(config.data)
  train_source, _ = reader.train_validation_sources(builder, config.data.validation_fraction,
                                                    seed=seed)
  full_counts = np.bincount(reader.labels_of(train_source))
  config.data.train_per_class = _caps(setting, len(full_counts), full_counts)
  images = sum(min(cap, int(n)) for cap, n in zip(config.data.train_per_class, full_counts))
  training = config.training
  # A batch cannot hold more images than the capped training set.
  batch = min(training.batch_size, images)
  training.num_steps = training_steps(training.num_steps, training.batch_size,
                                      len(train_source), images, batch, args.min_steps)
  training.batch_size = batch
  training.checkpoint_every = training.num_steps
  training.warmup_steps = min(training.warmup_steps, training.num_steps // 10)
  config.baseline.batch_size = min(config.baseline.batch_size, images)
  return config, images


def run_one(args, setting: str, seed: int, workdir: str) -> dict:
  """Trains and scores one (setting, seed); returns {method: metrics, settings...}."""
  config, images = cell_config(args, setting, seed)
  load_before = os.getloadavg()
  start = time.perf_counter()
  state, model = trainer.train(config, workdir)
  train_seconds = time.perf_counter() - start
  reports = evaluation.evaluate(config, workdir, estimators=("ode", "denoising"),
                                variables=train_state.inference_variables(state), model=model)
  cnn = baseline.train_and_evaluate(config, workdir)
  balanced = config.copy_and_resolve_references()
  balanced.baseline.class_balanced = True
  cnn_balanced = baseline.train_and_evaluate(balanced, os.path.join(workdir, "balanced"))
  reports = (reports["ode"], reports["denoising"], cnn, cnn_balanced)
  result = {name: {k: m[k] for k in _KEYS} for name, m in zip(_METHODS, reports)}
  result["ode"]["flow_diagnostics"] = reports[0].get("flow_diagnostics")
  result.update(train_images=int(images), train_steps=int(config.training.num_steps),
                batch_size=int(config.training.batch_size), train_seconds=train_seconds,
                seconds=time.perf_counter() - start,
                load_average={"before": load_before, "after": os.getloadavg()})
  return result


def summarize(runs: dict) -> dict:
  """Mean and standard deviation over seeds, per setting and method."""
  table = {}
  for setting, by_seed in runs.items():
    first = next(iter(by_seed.values()))
    table[setting] = {"train_images": first["train_images"], "train_steps": first["train_steps"],
                      "seeds": sorted(by_seed, key=int)}
    for method in _METHODS:
      for key in ("accuracy", "balanced_accuracy", "auc"):
        values = [r[method][key] for r in by_seed.values()]
        table[setting][f"{method}_{key}"] = [float(np.mean(values)), float(np.std(values))]
      sens = np.array([r[method]["per_class_sensitivity"] for r in by_seed.values()])
      table[setting][f"{method}_per_class_sensitivity"] = np.mean(sens, axis=0).round(3).tolist()
  return table


def plot(table: dict, path: str, model: str) -> None:
  """Balanced accuracy against images per class, mean +- sd over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  settings = sorted((s for s in table if s.startswith("per_class_")),
                    key=lambda s: int(s.removeprefix("per_class_")))
  if not settings:
    return
  n = [int(s.removeprefix("per_class_")) for s in settings]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for method, label in zip(_METHODS, _LABELS):
    mean = [table[s][f"{method}_balanced_accuracy"][0] for s in settings]
    std = [table[s][f"{method}_balanced_accuracy"][1] for s in settings]
    ax.errorbar(n, mean, yerr=std, marker="o", capsize=3, label=label)
  ax.set_xscale("log")
  ax.set_xticks(n, [str(v) for v in n])
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("training images per class")
  ax.set_ylabel(f"balanced accuracy (digits, {model})")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)



def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--model", default="mlp", choices=sorted(_CONFIGS))
  parser.add_argument("--per_class", default="5,10,20,50")
  parser.add_argument("--imbalance", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--min_steps", type=int, default=1000,
                      help="fewest score-model training steps of a cell")
  parser.add_argument("--baseline_steps", type=int, default=1500)
  parser.add_argument("--max_examples", type=int, default=0, help="test images (0: all 360)")
  parser.add_argument("--num_probes", type=int, default=4, help="Hutchinson probes per image")
  parser.add_argument("--weight_decay", type=float, default=None,
                      help="the score model's AdamW weight decay (default: its config's; the "
                      "MLP cells in tools/results/low_data_seeds.json ran with 0)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "low_data_seeds.json"))
  args = parser.parse_args()
  settings = [f"per_class_{n}" for n in args.per_class.split(",") if n]
  settings += ["imbalance"] if args.imbalance else []
  results = {}
  if os.path.exists(args.out):
    with open(args.out, encoding="utf-8") as f:
      results = json.load(f)
  study = results.setdefault(args.model, {"settings": settings_of(args), "runs": {}})
  differing = differing_settings(study["settings"], args)
  if differing:
    raise SystemExit(f"{args.out}: its {args.model} cells were made with other settings "
                     f"({', '.join(differing)}); pass those again or another --out")
  for seed in (int(s) for s in args.seeds.split(",")):
    for setting in settings:
      runs = study["runs"].setdefault(setting, {})
      if str(seed) in runs:
        continue
      workdir = os.path.join(args.workdir, args.model, f"{setting}_seed{seed}")
      runs[str(seed)] = {**run_one(args, setting, seed, workdir),
                         "commit": provenance.git_commit(),
                         "machine": provenance.machine(),
                         "device": str(jax.devices()[0].device_kind)}
      study["table"] = summarize(study["runs"])
      os.makedirs(os.path.dirname(args.out), exist_ok=True)
      with open(args.out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
      os.replace(args.out + ".tmp", args.out)
      r = runs[str(seed)]
      print(f"{args.model} {setting} seed {seed} ({r['train_steps']} steps): " + "  ".join(
          f"{m} bal {r[m]['balanced_accuracy']:.3f}" for m in _METHODS), flush=True)
  plot(study["table"], os.path.splitext(args.out)[0] + f"_{args.model}.png", args.model)
  print(json.dumps(study["table"], indent=1))


if __name__ == "__main__":
  main()
