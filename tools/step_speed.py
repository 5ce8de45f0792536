"""Training steps per second of `tools/recipe_levers.py` variants, side by side on one machine.

    flock /tmp/sgc_heavy.lock python tools/step_speed.py \
        --variants ema_cosine_28k_range11,gn_cosine_28k_range11
    # -> tools/results/step_speed.json

A variant's training seconds in `recipe_levers.json` depend on the host it ran on (they
differed 1.5x between hosts for one recipe); this tool measures variants on the same host in
one sitting. Each variant's own config (data, batch, network, optimiser) trains `--steps`
steps in a fresh temporary workdir, one variant after the other and the whole round
`--repeats` times, so that a drift of the machine's speed falls on every variant alike. The
JSON records, per variant, each round's median of the logged steps/s after the first log
(which includes compilation), the load average before and after, the network, batch and
steps, the machine and the commit.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=wrong-import-position
import recipe_levers
from sgc_jax import provenance, run_dir, trainer

_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "step_speed.json")


def steps_per_second(name: str, steps: int, data_dir: str = "") -> dict:
  """Trains `name`'s config for `steps` steps in a temporary workdir; its logged speed."""
  # A log every 100 steps, and the first includes compilation: two logs at least.
  if steps < 200:
    raise ValueError(f"--steps: {steps} steps log fewer than 2 times (every 100); the first "
                     "includes compilation, so at least 200 are needed")
  config = recipe_levers.variant_config(name, data_dir)
  config.training.num_steps = config.training.checkpoint_every = steps
  config.training.log_every = 100
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory(prefix="step_speed_") as workdir:
    trainer.train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      logged = [json.loads(line)["steps_per_s"] for line in f]
  return {"steps_per_s": statistics.median(logged[1:]), "logged_steps_per_s": logged,
          "load_average": {"before": load_before, "after": os.getloadavg()}}


def measure(variants: list[str], steps: int, repeats: int, data_dir: str = "") -> dict:
  """Each variant's speed in `repeats` alternating rounds, with what sets it."""
  rounds = [{name: steps_per_second(name, steps, data_dir) for name in variants}
            for _ in range(repeats)]
  out = {}
  for name in variants:
    config = recipe_levers.variant_config(name, data_dir)
    speeds = [r[name]["steps_per_s"] for r in rounds]
    out[name] = {"steps_per_s": statistics.median(speeds), "rounds": [r[name] for r in rounds],
                 "model": config.model.to_dict(), "batch_size": config.training.batch_size,
                 "data": {k: v for k, v in config.data.to_dict().items() if k != "data_dir"}}
  return {"variants": out, "steps": steps, "repeats": repeats,
          "commit": provenance.git_commit(), "machine": provenance.machine(),
          "devices": jax.device_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", required=True, help="recipe_levers variants, comma-separated")
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--out", default=_RESULTS)
  args = parser.parse_args()
  result = measure(args.variants.split(","), args.steps, args.repeats, args.data_dir)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  run_dir.write_text_atomically(args.out, json.dumps(result, indent=2))
  for name, row in result["variants"].items():
    print(f"{name}: {row['steps_per_s']:.1f} steps/s")


if __name__ == "__main__":
  main()
