"""Training-step throughput (images/s) of the score networks on forced CPU devices.

    python tools/train_throughput.py            # writes tools/results/train_throughput.json

Each (model, resolution, device count) runs in its own subprocess, because the
number of forced host devices is fixed when JAX starts. The step measured is
the trainer's own jitted, sharded step on synthetic uint8 batches.
"""
import argparse
import json
import os
import subprocess
import sys
import time

MODELS = {
    "unet": {"model.unet.channels": (32, 64, 128, 256, 512)},  # the seed's network
    "ddpmpp": {"model.ddpmpp.ch": 32, "model.ddpmpp.ch_mult": (1, 2, 2),
               "model.ddpmpp.num_res_blocks": 1, "model.ddpmpp.attn_resolutions": (8,)},
}


def measure(model: str, size: int, batch: int, steps: int) -> dict:
  """Runs in a child process with the device count already set."""
  import jax
  import numpy as np
  from configs import default
  from sgc_jax import models, sharding, train_state, trainer
  from sgc_jax import sde as sde_lib

  config = default.get_config()
  config.model.name = model
  for field, value in MODELS[model].items():
    section, sub, name = field.split(".")
    config[section][sub][name] = value
  config.data.num_classes = 2
  config.data.num_channels = 1
  mesh = sharding.make_mesh()
  net = models.get_model(config.model, 2)
  tx, schedule = train_state.make_optimizer(config.training, steps_per_epoch=100)
  state = train_state.create_train_state(config, net, tx, jax.random.PRNGKey(0), shape=(size, size, 1))
  state = jax.device_put(state, sharding.replicated(mesh))
  step = trainer.jit_train_step(
      trainer.make_train_step(config, net, tx, sde_lib.from_config(config.sde), schedule), mesh)
  rng = np.random.default_rng(0)
  batch_np = {"image": rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8),
              "label": rng.integers(0, 2, (batch,))}
  data = sharding.to_global(batch_np, mesh)
  key = jax.device_put(jax.random.PRNGKey(1), sharding.replicated(mesh))
  state, metrics = step(state, data, key)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, data, key)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  return {"model": model, "resolution": size, "devices": jax.device_count(), "batch_size": batch,
          "params": models.count_params(state.params), "steps": steps,
          "images_per_s": batch * steps / seconds, "seconds_per_step": seconds / steps}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--child", nargs=4, metavar=("MODEL", "SIZE", "BATCH", "STEPS"))
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "train_throughput.json"))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  if args.child:
    model, size, batch, steps = args.child
    print(json.dumps(measure(model, int(size), int(batch), int(steps))))
    return
  results = []
  for model in MODELS:
    for size in (32, 64):
      for devices in (1, 2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        out = subprocess.run([sys.executable, __file__, "--child", model, str(size),
                              str(args.batch), str(args.steps)], env=env, check=True,
                             capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(results[-1], flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump({"machine": f"{os.cpu_count()} CPU cores, forced host devices",
               "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
