"""Exact-likelihood scoring speed: the engine against the seed's path, side by side.

    sgc-train --config configs/digits.py --workdir /tmp/digits      # the demo's model
    flock /tmp/sgc_bench.lock python tools/likelihood_speed.py --workdir /tmp/digits
    # writes tools/results/likelihood_speed.json

Two score networks, each on the same --images test images and all 10 classes:
  * "mlp": the trained demo model of --workdir (8x8 digits);
  * "unet": the seed U-Net scaled down (channels --unet_channels, 16x16 inputs:
    the digits upsampled 2x), trained here for --unet_steps Adam steps on the
    digits train split with the seed's loss (brief: a real but weak model).
Methods, compilation excluded (every jitted method runs once first), one CPU
device:
  * the seed's path (`sgc_jax.reference_likelihood`: scipy RK45 on the host at
    rtol = atol = 1e-5, batch flattened into one ODE, one class at a time, one
    Gaussian probe);
  * the engine at the seed's tolerance (Tsit5 + PID, 1e-5, one Gaussian probe);
  * the engine's "exact" setting (within 0.01 bits/dim of the reference);
  * the engine's "fast" setting (>= 99 % decision agreement with the reference).
Errors and agreement are against a tight reference: a float64 exponential
integrator (expint3, --reference_steps steps, exact divergence), checked
against float64 Tsit5 at 1e-7 on --check_images images (the JSON records the
gap).
"""
import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgc_jax import api, evaluation, likelihood, losses, models  # pylint: disable=wrong-import-position
from sgc_jax import reference_likelihood  # pylint: disable=wrong-import-position
from sgc_jax.data import reader, records  # pylint: disable=wrong-import-position

SEED_PATH = "seed path (scipy RK45 on the host, 1e-5, 1 Gaussian probe)"
# name -> class_log_likelihoods options. "exact"/"fast" follow sgc-bench-solvers' grid.
ENGINE_SETTINGS = {
    "engine, seed's tolerance (Tsit5 1e-5, 1 Gaussian probe)":
        {"rtol": 1e-5, "atol": 1e-5, "divergence": "hutchinson", "probe": "gaussian"},
    # On the digits MLP: 0.007 bits/dim from the float64 reference, all decisions equal.
    "engine, exact setting (expint3 27 steps, exact divergence)":
        {"solver": "expint3", "adaptive": False, "num_steps": 27, "grid": "logsnr",
         "divergence": "exact"},
    # On the digits MLP: all 64 decisions equal the reference's, 0.04 bits/dim.
    "engine, fast setting (expint3 16 steps, exact divergence)":
        {"solver": "expint3", "adaptive": False, "num_steps": 16, "grid": "logsnr",
         "divergence": "exact"},
}


def _timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def tight_reference(score_fn, sde, x, keys, classes, steps):
  with jax.enable_x64(True):
    result = likelihood.class_log_likelihoods(
        score_fn, sde, jnp.asarray(x, jnp.float64), classes, key=keys, solver="expint3",
        adaptive=False, num_steps=steps, grid="logsnr", divergence="exact", dtype=jnp.float64)
    return np.asarray(result.log_likelihood, np.float64)


def reference_check(score_fn, sde, x, keys, classes, ref):
  """max |reference - float64 Tsit5 at 1e-7| over the first images, in nats."""
  with jax.enable_x64(True):
    result = likelihood.class_log_likelihoods(
        score_fn, sde, jnp.asarray(x, jnp.float64), classes, key=keys, rtol=1e-7, atol=1e-7,
        divergence="exact", dtype=jnp.float64, max_steps=100000)
    return float(np.max(np.abs(np.asarray(result.log_likelihood, np.float64) - ref)))


def measure(name, score_fn, sde, x, labels, classes, args) -> dict:
  """Every method on x; errors and agreement against the tight reference."""
  ids = jnp.arange(len(x), dtype=jnp.uint32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(1), i))(ids)
  dims = int(np.prod(x.shape[1:]))
  start = time.perf_counter()
  ref = tight_reference(score_fn, sde, x, keys, classes, args.reference_steps)
  ref_seconds = time.perf_counter() - start
  n_check = min(args.check_images, len(x))
  gap = reference_check(score_fn, sde, x[:n_check], keys[:n_check], classes, ref[:n_check])
  # Compile the seed path's two jitted passes with a loose, short solve first.
  reference_likelihood.seed_class_log_likelihoods(score_fn, sde, x, 1, key=keys[0], rtol=1.0,
                                                  atol=1.0)
  runs = {SEED_PATH: _timed(lambda: reference_likelihood.seed_class_log_likelihoods(
      score_fn, sde, x, classes, key=keys[0]))}
  for method, options in ENGINE_SETTINGS.items():
    run = lambda options=options: likelihood.class_log_likelihoods(  # pylint: disable=cell-var-from-loop
        score_fn, sde, x, classes, key=keys, **options)
    _timed(run)                                    # compile
    runs[method] = _timed(run)
  seed_seconds = runs[SEED_PATH][1]
  rows = []
  for method, (result, seconds) in runs.items():
    ll = np.asarray(result.log_likelihood, np.float64)
    diff = np.abs(ll - ref)
    rows.append({
        "model": name, "method": method, "images": len(x), "seconds": seconds,
        "ms_per_image_all_classes": 1e3 * seconds / len(x),
        "speedup_vs_seed": seed_seconds / seconds,
        "forward_passes_per_image_class": float(np.mean(result.num_function_evals)),
        "mean_abs_dlogp_nats": float(np.mean(diff)),
        "mean_abs_dbits_per_dim": float(np.mean(diff)) / (dims * math.log(2.0)),
        "agreement_with_reference": float(np.mean(ll.argmax(1) == ref.argmax(1))),
        "accuracy": float(np.mean(ll.argmax(1) == labels)),
        "all_succeeded": bool(np.all(result.success)),
    })
  return {"model": name, "dims": dims, "reference_seconds": ref_seconds,
          "reference": f"expint3, {args.reference_steps} steps, float64, exact divergence",
          "reference_vs_tsit5_1e-7_max_abs_nats": gap, "reference_check_images": n_check,
          "reference_accuracy": float(np.mean(ref.argmax(1) == labels)), "rows": rows}


def upsampled(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def train_unet(config, sde, channels, steps: int, key):
  """The seed U-Net at 16x16, trained `steps` Adam steps (lr 1e-3, batch 64) on upsampled digits."""
  model = models.get_model({"name": "unet", "unet": {"channels": channels}}, 10, sde)
  variables = models.init_variables(model, key, (16, 16, 1), 10)
  builder = reader.load_builder(config.data)
  train = records.data_source(builder, "train")
  images = np.stack([train[i]["image"] for i in range(len(train))])
  labels = np.array([train[i]["label"] for i in range(len(train))])
  optimizer = optax.adam(1e-3)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, rest, opt_state, key):
    batch_key, deq_key, loss_key = jax.random.split(key, 3)
    idx = jax.random.randint(batch_key, (64,), 0, len(images))
    x0 = upsampled(likelihood.dequantize(deq_key, jnp.asarray(images)[idx], bit_depth=8,
                                         data_range=(-1.0, 1.0)))

    def loss_fn(p):
      return losses.dsm_loss(model.apply, {"params": p, **rest}, x0, jnp.asarray(labels)[idx],
                             loss_key, sde, reduce_mean=False)
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**rest, **new_state}, opt_state, loss

  for i in range(steps):
    params, rest, opt_state, loss = step(params, rest, opt_state, jax.random.fold_in(key, i))
  print(f"unet {channels}: {steps} steps, last loss {float(loss):.1f}")
  variables = {"params": params, **rest}
  return models.make_score_fn(model, variables, sde.marginal_std), models.count_params(params)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained configs/digits.py run")
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--reference_steps", type=int, default=128)
  parser.add_argument("--check_images", type=int, default=4)
  parser.add_argument("--unet_channels", default="16,32,48")
  parser.add_argument("--unet_steps", type=int, default=300)
  parser.add_argument("--models", default="mlp,unet")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "likelihood_speed.json"))
  args = parser.parse_args()

  trained = api.load(args.workdir)
  config = trained.config
  source = records.data_source(trained.builder, "test")
  n = min(args.images, len(source))
  batch = [source[i] for i in range(n)]
  labels = np.array([r["label"] for r in batch])
  images = np.stack([r["image"] for r in batch])
  ids = jnp.arange(n, dtype=jnp.uint32)
  x = evaluation.per_image_inputs(jax.random.PRNGKey(0), ids, images, config)
  results = {"device": jax.devices()[0].device_kind, "classes": 10,
             "workdir": os.path.abspath(args.workdir), "models": []}
  wanted = args.models.split(",")
  if "mlp" in wanted:
    results["models"].append(measure("mlp (demo, 8x8)", trained.score_fn, trained.sde, x,
                                     labels, 10, args))
  if "unet" in wanted:
    channels = tuple(int(c) for c in args.unet_channels.split(","))
    score_fn, num_params = train_unet(config, trained.sde, channels, args.unet_steps,
                                      jax.random.PRNGKey(0))
    entry = measure(f"seed U-Net {channels} ({num_params} params, 16x16, "
                    f"{args.unet_steps} training steps)", score_fn, trained.sde, upsampled(x),
                    labels, 10, args)
    results["models"].append(entry)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  for entry in results["models"]:
    print(f"{entry['model']}: reference accuracy {entry['reference_accuracy']:.3f}, "
          f"reference vs Tsit5 1e-7: {entry['reference_vs_tsit5_1e-7_max_abs_nats']:.2e} nats")
    for row in entry["rows"]:
      print(f"  {row['method']:<62} {row['seconds']:8.2f} s  x{row['speedup_vs_seed']:6.1f}  "
            f"{row['forward_passes_per_image_class']:7.1f} passes  "
            f"|d| {row['mean_abs_dbits_per_dim']:.4f} bpd  agree "
            f"{row['agreement_with_reference']:.3f}  acc {row['accuracy']:.3f}")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
