"""Likelihood scoring speed: the engine against the seed's path, side by side, on 2 networks.

    sgc-demo --workdir /tmp/demo                                  # or sgc-train configs/digits.py
    flock /tmp/sgc_bench.lock python tools/likelihood_speed.py --workdir /tmp/demo \
        --models mlp --steps 8,12,16,27,32 --out tools/results/likelihood_speed_mlp.json
    flock /tmp/sgc_bench.lock python tools/likelihood_speed.py --workdir /tmp/demo \
        --models unet --steps 8,16,27 --fixed_probe_counts 1 --fresh_probe_counts 1,4 \
        --max_adaptive_batch 16 --out tools/results/likelihood_speed_unet.json
    # about 10 and 25 minutes on 2 idle CPU cores; README "Likelihood cost ..." shows them

Two score networks, each on the same --images test images and all 10 classes:
  * "mlp": the trained demo model of --workdir (8x8 digits);
  * "unet": the seed U-Net scaled down (channels --unet_channels, 16x16 inputs:
    the digits upsampled 2x), trained here for --unet_steps Adam steps on the
    digits train split with the seed's loss (a real but weak model).
On each, one CPU device, compilation excluded (every method runs once
untimed first):
  * the seed's path (`sgc_jax.reference_likelihood`: scipy RK45 on the host at
    rtol = atol = 1e-5, batch flattened into one ODE, one class at a time, one
    Gaussian probe);
  * the engine at the seed's method, tolerance and probe (Dopri5 + PID at 1e-5;
    Tsit5 takes ~1.45x Dopri5's evaluations at 1e-5 on the MLP);
  * the exponential integrator (expint3) at several step counts, with
    --fixed_probe_counts Rademacher probes per image for the whole path, with
    --fresh_probe_counts drawn afresh at every step, and, up to
    --exact_max_dims dimensions, with the exact divergence.
Errors and decision agreement are against a tight reference: on the MLP a
float64 expint3 solve with --reference_steps steps and the exact divergence
(checked against float64 Tsit5 at 1e-7 on --check_images images); on the
U-Net, where the exact divergence would cost 256 JVPs per evaluation, the
same solver (--unet_reference_steps steps) with --reference_probes Rademacher
probes per image drawn afresh at every step, computed as two independent
halves whose spread measures the reference's own probe error (reported, with
the halves' decision agreement: no setting can agree with the reference
better than the reference agrees with itself). The three targets of the solver issue are read off the rows:
  * equal tolerance: the engine at 1e-5 against the seed's path;
  * equal accuracy: the cheapest setting within --exact_bits_per_dim of the
    reference that takes every decision the reference takes;
  * fast: the cheapest setting with >= --fast_agreement decision agreement.
Last, images*classes/s against the batch size for the adaptive setting and
the "fast" one (item 3: a fixed grid's cost per image stays flat).
"""
import argparse
import functools
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

from configs import solver_grid  # pylint: disable=wrong-import-position
from sgc_jax import api, likelihood, losses, models, scorer  # pylint: disable=wrong-import-position
from sgc_jax import reference_likelihood, solver_bench  # pylint: disable=wrong-import-position
from sgc_jax.data import reader, records  # pylint: disable=wrong-import-position

SEED_PATH = "seed path: scipy RK45 1e-5 on the host, 1 Gaussian probe"
# Dormand-Prince 5(4), the method of scipy's RK45: the same tolerance means the same accuracy.
EQUAL_TOLERANCE = "engine: Dopri5 1e-5, 1 Gaussian probe"


def probe_keys(num_images: int):
  """Per-image probe keys: the image's position folded into one base key."""
  ids = jnp.arange(num_images, dtype=jnp.uint32)
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(1), i))(ids)


def candidates(dims: int, args) -> dict:
  """name -> `class_log_likelihoods` options of every engine setting measured."""
  out = {EQUAL_TOLERANCE: dict(solver="dopri5", rtol=1e-5, atol=1e-5, divergence="hutchinson",
                               probe="gaussian")}
  fixed = dict(solver="expint3", adaptive=False, grid="logsnr")
  for steps in args.steps:
    for resample, counts in ((False, args.fixed_probe_counts), (True, args.fresh_probe_counts)):
      for probes in counts:
        out[f"expint3 {steps} steps, {probes} Rademacher" + (" fresh per step" if resample
                                                              else "")] = dict(
            num_steps=steps, divergence="hutchinson", probe="rademacher", num_probes=probes,
            resample_probes=resample, **fixed)
    if dims <= args.exact_max_dims:
      out[f"expint3 {steps} steps, exact divergence"] = dict(num_steps=steps, divergence="exact",
                                                            **fixed)
  return out


def tight_reference(score_fn, sde, x, keys, steps: int, args) -> tuple[np.ndarray, dict]:
  """(log p [B, C], description): exact divergence in float64, or probes in two halves."""
  dims = int(np.prod(x.shape[1:]))
  options = dict(solver="expint3", adaptive=False, num_steps=steps, grid="logsnr")
  if dims <= args.exact_max_dims:
    grid = solver_grid.get_config()
    grid.reference.solver, grid.reference.steps = "expint3", steps
    ref, description = solver_bench.reference(score_fn, sde, x, keys, 10, grid)
    n = min(args.check_images, len(x))
    with jax.enable_x64(True):
      check = likelihood.class_log_likelihoods(
          score_fn, sde, jnp.asarray(x[:n], jnp.float64), 10, key=keys[:n], rtol=1e-7,
          atol=1e-7, divergence="exact", dtype=jnp.float64, max_steps=100000)
    gap = float(np.max(np.abs(np.asarray(check.log_likelihood, np.float64) - ref[:n])))
    return ref, {"reference": description, "max_abs_nats_vs_float64_tsit5_1e-7": gap,
                 "checked_images": n}
  half = args.reference_probes // 2
  halves = []
  for part in (1, 2):
    part_keys = jax.vmap(lambda k, part=part: jax.random.fold_in(k, 1000 + part))(keys)
    halves.append(np.asarray(likelihood.class_log_likelihoods(
        score_fn, sde, x, 10, key=part_keys, divergence="hutchinson", probe="rademacher",
        num_probes=half, resample_probes=True, **options).log_likelihood, np.float64))
  ref = 0.5 * (halves[0] + halves[1])
  # Each half's error has twice the variance of the mean's: |h1 - h2| / 2 estimates the latter.
  noise = 0.5 * np.abs(halves[0] - halves[1])
  return ref, {
      "reference": f"expint3, {steps} steps, float32, "
                   f"{2 * half} Rademacher probes per image and step, drawn afresh at "
                   f"every step (two halves of {half})",
      "reference_probe_error_mean_abs_nats": float(noise.mean()),
      "reference_probe_error_mean_abs_bits_per_dim": float(noise.mean()) / (dims * math.log(2)),
      "decision_agreement_between_halves": float(np.mean(
          halves[0].argmax(1) == halves[1].argmax(1)))}


def row(name, result, seconds, ref, labels, dims) -> dict:
  quality = solver_bench.compare(result.log_likelihood, ref, labels, 10)
  return {"method": name, "seconds": seconds, "ms_per_image_all_classes": 1e3 * seconds
          / len(labels), "passes_per_image_class": float(np.mean(result.num_function_evals)),
          "mean_abs_dbits_per_dim": quality["mean_abs_dlogp"] / (dims * math.log(2.0)),
          "all_succeeded": bool(np.all(result.success)), **quality}


def measure(name, score_fn, sde, x, labels, reference_steps: int, args) -> dict:
  """Every method on x; errors, agreement and speed-ups against the seed's path."""
  keys = probe_keys(len(x))
  dims = int(np.prod(x.shape[1:]))
  start = time.perf_counter()
  ref, ref_info = tight_reference(score_fn, sde, x, keys, reference_steps, args)
  ref_info["reference_seconds"] = time.perf_counter() - start
  ref_info["reference_accuracy"] = float(np.mean(ref.argmax(1) == labels))
  print(f"{name}: reference {ref_info}", flush=True)
  # The seed path's two jitted passes compile on a loose, short solve.
  reference_likelihood.seed_class_log_likelihoods(score_fn, sde, x, 1, key=keys[0], rtol=1.0,
                                                  atol=1.0)
  start = time.perf_counter()
  seed = reference_likelihood.seed_class_log_likelihoods(score_fn, sde, x, 10, key=keys[0])
  seed_seconds = time.perf_counter() - start
  rows = [row(SEED_PATH, seed, seed_seconds, ref, labels, dims)]
  options = candidates(dims, args)
  for method, opts in options.items():
    estimate = solver_bench.make_estimator(score_fn, sde, 10, 1e-5, opts)
    result, seconds = solver_bench.timed(functools.partial(estimate, x, keys), repeats=1)
    rows.append(row(method, result, seconds, ref, labels, dims))
    print(f"  {method:<42} {seconds:8.2f} s  x{seed_seconds / seconds:6.1f}", flush=True)
  for r in rows:
    r["speedup_vs_seed"] = seed_seconds / r["seconds"]
  targets = read_targets(rows, args)
  fixed = targets["fast"]["method"] or targets["at_seed_accuracy"]["method"]
  throughput = measure_throughput(score_fn, sde, x, keys, options,
                                  [m for m in (EQUAL_TOLERANCE, fixed) if m], args)
  return {"model": name, "dims": dims, "images": len(x), **ref_info, "rows": rows,
          "targets": targets, "throughput_image_classes_per_s": throughput}


def read_targets(rows, args) -> dict:
  """The solver issue's targets read off the rows, and the cheapest setting at least as
  accurate as the seed's path."""
  by_method = {r["method"]: r for r in rows}
  seed = by_method[SEED_PATH]
  engine = [r for r in rows if r is not seed]
  chosen = {
      "equal_accuracy": (5.0, [r for r in engine if r["agreement"] == 1.0 and
                               r["mean_abs_dbits_per_dim"] <= args.exact_bits_per_dim]),
      "fast": (20.0, [r for r in engine if r["agreement"] >= args.fast_agreement]),
      "at_seed_accuracy": (None, [r for r in engine if r["agreement"] >= seed["agreement"] and
                                  r["mean_abs_dbits_per_dim"] <= seed["mean_abs_dbits_per_dim"]]),
  }
  targets = {"equal_tolerance": {"method": EQUAL_TOLERANCE, "goal": 1.5,
                                 "speedup": by_method[EQUAL_TOLERANCE]["speedup_vs_seed"]}}
  for target, (goal, ok) in chosen.items():
    best = min(ok, key=lambda r: r["seconds"]) if ok else None
    targets[target] = {"method": best and best["method"], "goal": goal,
                       "speedup": best and best["speedup_vs_seed"]}
  return targets


def measure_throughput(score_fn, sde, x, keys, options, methods, args) -> dict:
  """images * classes / s against the batch size for each named setting."""
  throughput = {}
  for method in methods:
    adaptive = options[method].get("adaptive", True)
    sizes = [b for b in args.batches if not adaptive or b <= args.max_adaptive_batch]
    throughput[method] = solver_bench.throughput(score_fn, sde, x, 10, options[method], sizes,
                                                 eps=1e-5, repeats=1, keys=keys)
    print(f"  throughput {method}: " + ", ".join(
        f"{t['batch_size']}: {t['image_classes_per_s']:.0f}/s" for t in throughput[method]),
          flush=True)
  return throughput


def upsampled(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def train_unet(config, sde, channels, steps: int, key):
  """The seed U-Net at 16x16, trained `steps` Adam steps (lr 1e-3, batch 64) on upsampled digits."""
  model = models.get_model({"name": "unet", "unet": {"channels": channels}}, 10, sde)
  variables = models.init_variables(model, key, (16, 16, 1), 10)
  builder = reader.load_builder(config.data)
  train = records.data_source(builder, "train")
  images = jnp.asarray(np.stack([train[i]["image"] for i in range(len(train))]))
  labels = jnp.asarray(np.array([train[i]["label"] for i in range(len(train))]))
  optimizer = optax.adam(1e-3)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, rest, opt_state, key):
    batch_key, deq_key, loss_key = jax.random.split(key, 3)
    idx = jax.random.randint(batch_key, (64,), 0, len(images))
    x0 = upsampled(likelihood.dequantize(deq_key, images[idx], bit_depth=8,
                                         data_range=(-1.0, 1.0)))

    def loss_fn(p):
      return losses.dsm_loss(model.apply, {"params": p, **rest}, x0, labels[idx], loss_key, sde,
                             reduce_mean=False)
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**rest, **new_state}, opt_state, loss

  loss = jnp.nan
  for i in range(steps):
    params, rest, opt_state, loss = step(params, rest, opt_state, jax.random.fold_in(key, i))
  print(f"unet {channels}: {steps} steps, last loss {float(loss):.1f}", flush=True)
  variables = {"params": params, **rest}
  return models.make_score_fn(model, variables, sde.marginal_std), models.count_params(params)


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("--workdir", required=True, help="a trained configs/digits.py run")
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--models", default="mlp,unet")
  parser.add_argument("--steps", type=_ints,
                      default=[8, 12, 16, 27], help="expint3 step counts")
  parser.add_argument("--fixed_probe_counts", type=_ints, default=[1, 4, 16],
                      help="Rademacher probes per image, one set for the whole solve")
  parser.add_argument("--fresh_probe_counts", type=_ints, default=[1, 4, 16],
                      help="Rademacher probes per image, drawn afresh at every step")
  parser.add_argument("--exact_max_dims", type=int, default=64,
                      help="the exact divergence (D JVPs per evaluation) up to this many dims")
  parser.add_argument("--reference_steps", type=int, default=128)
  parser.add_argument("--reference_probes", type=int, default=32,
                      help="probes per image of the reference above --exact_max_dims")
  parser.add_argument("--check_images", type=int, default=4)
  parser.add_argument("--exact_bits_per_dim", type=float, default=0.01)
  parser.add_argument("--fast_agreement", type=float, default=0.99)
  parser.add_argument("--batches", type=_ints,
                      default=[1, 4, 16, 64, 256])
  parser.add_argument("--max_adaptive_batch", type=int, default=256)
  parser.add_argument("--unet_channels", default="16,32,48")
  parser.add_argument("--unet_steps", type=int, default=600)
  parser.add_argument("--throughput_only", default="",
                      help="only images*classes/s against --batches for these settings "
                           "(names as printed, ';'-separated)")
  parser.add_argument("--unet_reference_steps", type=int, default=48)
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
  x = scorer.per_image_inputs(jax.random.PRNGKey(0), ids, images, config)
  results = {"device": jax.devices()[0].device_kind, "cpu_cores": os.cpu_count(), "classes": 10,
             "workdir": os.path.abspath(args.workdir), "args": vars(args), "models": []}
  networks = []                       # (name, score_fn, inputs, reference steps)
  wanted = args.models.split(",")
  if "mlp" in wanted:
    networks.append(("mlp (demo, 8x8)", trained.score_fn, x, args.reference_steps))
  if "unet" in wanted:
    channels = tuple(int(c) for c in args.unet_channels.split(","))
    score_fn, num_params = train_unet(config, trained.sde, channels, args.unet_steps,
                                      jax.random.PRNGKey(0))
    networks.append((f"seed U-Net {channels} ({num_params} params, 16x16, {args.unet_steps} "
                     "training steps)", score_fn, upsampled(x), args.unet_reference_steps))
  for name, score_fn, inputs, reference_steps in networks:
    if args.throughput_only:
      # A fixed-step setting's cost does not depend on the weights: no training needed.
      keys = probe_keys(len(inputs))
      options = candidates(int(np.prod(inputs.shape[1:])), args)
      results["models"].append({"model": name, "throughput_image_classes_per_s":
                                measure_throughput(score_fn, trained.sde, inputs, keys, options,
                                                   args.throughput_only.split(";"), args)})
    else:
      results["models"].append(measure(name, score_fn, trained.sde, inputs, labels,
                                       reference_steps, args))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  for entry in results["models"]:
    if "rows" not in entry:
      continue
    print(f"{entry['model']}: {entry['reference']}, reference accuracy "
          f"{entry['reference_accuracy']:.3f}")
    for r in entry["rows"]:
      print(f"  {r['method']:<56} {r['seconds']:8.2f} s  x{r['speedup_vs_seed']:6.1f}  "
            f"{r['passes_per_image_class']:6.1f} passes  |d| {r['mean_abs_dbits_per_dim']:.4f} "
            f"bpd  agree {r['agreement']:.3f}  acc {r['accuracy']:.3f}")
    for target, t in entry["targets"].items():
      goal = f" (goal {t['goal']}x)" if t["goal"] else ""
      print(f"  target {target}: {t['method']} x{t['speedup'] or 0:.1f}{goal}")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
