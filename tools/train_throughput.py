"""Training-step throughput of the seed U-Net: this project's step against the seed's PyTorch step.

    flock /tmp/sgc_bench.lock python tools/train_throughput.py   # -> tools/results/train_throughput.json
    python tools/train_throughput.py --cases 64x32 --steps 3 --out /tmp/t.json

Equal work on both sides, at the seed's settings: the seed U-Net (32..512
channels, 8.2 M parameters), 3 input channels, 2 classes, Adam, the seed's
denoising loss, BatchNorm in training mode; batch 32 at 32², 64² and 128², and
batch 4 at the seed's 384². This project's side is the trainer's own jitted,
sharded step (`trainer.make_train_step`, which also dequantizes and flips the
batch) on 1 and 2 forced CPU devices; the PyTorch side is the mirror of the
seed's network in tests/seed_torch.py with the seed's training step, using all
cores (measured only when PyTorch is installed). Every measurement runs in its
own subprocess (the forced device count is fixed when JAX starts), one after
the other, and reports the median of its timed steps after a warm-up step.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNELS = (32, 64, 128, 256, 512)  # the seed's network
IMAGE_CHANNELS = 3
NUM_CLASSES = 2
# (resolution, batch): the seed's batch of 32, and batch 4 at its 384x384.
CASES = ((32, 32), (64, 32), (128, 32), (384, 4))


def _timed(step, steps: int) -> list[float]:
  """Seconds of each of `steps` calls of `step()` (which must block until done)."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def measure_jax(size: int, batch: int, steps: int) -> dict:
  """The trainer's step; runs in a child process with the device count already set."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from configs import default  # pylint: disable=g-import-not-at-top
  from sgc_jax import models, sharding, train_state, trainer  # pylint: disable=g-import-not-at-top
  from sgc_jax import sde as sde_lib  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.model.name = "unet"
  config.model.unet.channels = CHANNELS
  config.data.num_classes = NUM_CLASSES
  config.data.num_channels = IMAGE_CHANNELS
  config.training.batch_size = batch
  config.training.ema_decay = 0.0
  mesh = sharding.make_mesh()
  net = models.get_model(config.model, NUM_CLASSES)
  tx, schedule = train_state.make_optimizer(config.training, steps_per_epoch=100)
  state = train_state.create_train_state(config, net, tx, jax.random.PRNGKey(0),
                                         shape=(size, size, IMAGE_CHANNELS))
  state = jax.device_put(state, sharding.replicated(mesh))
  step = trainer.jit_train_step(
      trainer.make_train_step(config, net, tx, sde_lib.from_config(config.sde), schedule), mesh)
  rng = np.random.default_rng(0)
  data = sharding.to_global(
      {"image": rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8),
       "label": rng.integers(0, NUM_CLASSES, (batch,))}, mesh)
  key = jax.device_put(jax.random.PRNGKey(1), sharding.replicated(mesh))
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = step(holder["state"], data, key)
    jax.block_until_ready(metrics)

  start = time.perf_counter()
  one_step()
  compile_s = time.perf_counter() - start
  times = _timed(one_step, steps)
  return {"framework": "jax", "devices": jax.device_count(),
          "params": models.count_params(holder["state"].params),
          "first_step_s": compile_s, "step_times_s": times}


def measure_torch(size: int, batch: int, steps: int) -> dict:
  """The seed's training step on the PyTorch mirror of its network (all cores)."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import seed_torch  # pylint: disable=g-import-not-at-top

  beta_min, beta_max, eps = 0.1, 20.0, 1e-5

  def log_mean(t):
    return -0.25 * t ** 2 * (beta_max - beta_min) - 0.5 * t * beta_min

  def marginal_std(t):
    return torch.sqrt(1.0 - torch.exp(2.0 * log_mean(t)))

  torch.manual_seed(0)
  net = seed_torch.SeedUNetTorch(marginal_std, n_channels=IMAGE_CHANNELS, n_classes=NUM_CLASSES,
                                 channels=CHANNELS).train()
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
  x0 = torch.rand(batch, IMAGE_CHANNELS, size, size)
  y = torch.randint(0, NUM_CLASSES, (batch,))

  def one_step():
    # The seed's loss: sum over pixels of (sigma * score + z)^2, mean over the batch.
    t = torch.rand(batch) * (1.0 - eps) + eps
    z = torch.randn_like(x0)
    std = marginal_std(t)[:, None, None, None]
    x_t = torch.exp(log_mean(t))[:, None, None, None] * x0 + std * z
    loss = torch.mean(torch.sum((net(x_t, t, y) * std + z) ** 2, dim=(1, 2, 3)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  start = time.perf_counter()
  one_step()
  first = time.perf_counter() - start
  times = _timed(one_step, steps)
  return {"framework": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
          "params": sum(p.numel() for p in net.parameters()), "first_step_s": first,
          "step_times_s": times}


def _child(framework: str, size: int, batch: int, steps: int, devices: int) -> dict | None:
  env = dict(os.environ)
  if framework == "jax":
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
  load_before = os.getloadavg()[0]
  done = subprocess.run([sys.executable, __file__, "--child", framework, str(size), str(batch),
                         str(steps)], env=env, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f"{framework} {size}x{size} batch {batch} failed:\n{done.stderr[-4000:]}")
  result = json.loads(done.stdout.strip().splitlines()[-1])
  seconds = statistics.median(result["step_times_s"])
  # Other processes on the machine slow both sides, PyTorch's spinning OpenMP threads most:
  # the 1-minute load average before and after says how quiet the machine was.
  return {**result, "resolution": size, "batch_size": batch, "seconds_per_step": seconds,
          "images_per_s": batch / seconds,
          "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def _has_torch() -> bool:
  done = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
  return done.returncode == 0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--child", nargs=4, metavar=("FRAMEWORK", "SIZE", "BATCH", "STEPS"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--cases", nargs="*", default=[f"{s}x{b}" for s, b in CASES],
                      help="RESOLUTIONxBATCH cases (default: %(default)s)")
  parser.add_argument("--devices", nargs="*", type=int, default=[1, 2],
                      help="forced CPU device counts for this project's step")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
  parser.add_argument("--skip_torch", action="store_true",
                      help="measure this project's step only (e.g. to compare XLA_FLAGS)")
  parser.add_argument("--out", default=os.path.join(ROOT, "tools", "results",
                                                    "train_throughput.json"))
  args = parser.parse_args()
  if args.child:
    framework, size, batch, steps = args.child
    measure = measure_jax if framework == "jax" else measure_torch
    print(json.dumps(measure(int(size), int(batch), int(steps))))
    return
  with_torch = not args.skip_torch and _has_torch()
  if not with_torch and not args.skip_torch:
    print("PyTorch not installed: measuring this project's step only", flush=True)
  rows = []
  for case in args.cases:
    size, batch = (int(v) for v in case.split("x"))
    row = {"resolution": size, "batch_size": batch, "jax": {}}
    if with_torch:
      row["torch"] = _child("torch", size, batch, args.steps, 1)
    for devices in args.devices:
      row["jax"][str(devices)] = _child("jax", size, batch, args.steps, devices)
      if with_torch:
        row["jax"][str(devices)]["ratio_to_torch"] = (
            row["jax"][str(devices)]["images_per_s"] / row["torch"]["images_per_s"])
    rows.append(row)
    summary = {k: round(v["images_per_s"], 2) for k, v in row["jax"].items()}
    print(f"{size}x{size} batch {batch}: jax img/s by devices {summary}"
          + (f", torch {row['torch']['images_per_s']:.2f}" if with_torch else ""), flush=True)
    _write(args.out, rows)  # after every case, so an interrupted run keeps what it measured


def _write(path: str, rows: list) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
               "xla_flags": os.environ.get("XLA_FLAGS", ""), "model": "seed U-Net "
               f"{CHANNELS}, {IMAGE_CHANNELS} channels, {NUM_CLASSES} classes, Adam",
               "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
