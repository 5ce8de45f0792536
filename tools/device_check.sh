#!/usr/bin/env bash
# One prepared check for the first machine with a GPU or TPU (under ten minutes).
#
#   bash tools/device_check.sh [OUT.json]      # default tools/results/device_check.json
#
# 1. Detects the accelerator (nvidia-smi -> CUDA, /dev/accel* or $TPU_NAME -> TPU) and
#    installs the matching JAX build (jax[cuda12] / jax[tpu]); if the install cannot
#    reach a package index it carries on with the JAX already installed and records
#    the backend it actually got.
# 2. Measures, for the seed-sized U-Net (channels 32..512, 8.2 M parameters at
#    3 channels; 1 channel here) at 64x64 and 384x384:
#      - training images/s (the seed's loss, Adam, jitted step, compile excluded);
#      - scoring images/s for 2 classes with the configs' settings (expint3 in log-SNR,
#        27 steps, 1 or 4 Rademacher probes drawn afresh at every step) and with Dopri5
#        at the seed's 1e-5, per batch size.
#    Each measurement has its own time budget and records an error instead of stopping.
# 3. Writes one JSON with the device name, the JAX version and backend, and every figure.
#
# Without an accelerator it runs a seconds-long smoke test (tiny U-Net, 16x16) so the
# script itself stays tested: SGC_DEVICE_CHECK_SMOKE=1 forces that mode anywhere.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/tools/results/device_check.json}"
PYTHON="${PYTHON:-python}"
cd "$ROOT"

accelerator=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  accelerator=gpu
elif compgen -G "/dev/accel*" >/dev/null || [[ -n "${TPU_NAME:-}" ]]; then
  accelerator=tpu
fi
if [[ "${SGC_DEVICE_CHECK_SMOKE:-0}" == "1" ]]; then
  accelerator=cpu
fi
echo "device_check: accelerator=$accelerator"

install_log="$(mktemp)"
install_status="not needed (cpu)"
if [[ "$accelerator" != "cpu" ]]; then
  extra=$([[ "$accelerator" == gpu ]] && echo "jax[cuda12]" || echo "jax[tpu]")
  # A bounded install: an offline machine must not hang here.
  if timeout 180 "$PYTHON" -m pip install -q -U "$extra" >"$install_log" 2>&1; then
    install_status="installed $extra"
  else
    install_status="install of $extra failed (offline?): using the installed jax"
  fi
  if ! "$PYTHON" -c "import sgc_jax" 2>/dev/null; then
    timeout 180 "$PYTHON" -m pip install -q -e ".[test]" >>"$install_log" 2>&1 || true
  fi
fi
echo "device_check: $install_status"

SGC_ACCELERATOR="$accelerator" SGC_INSTALL_STATUS="$install_status" SGC_OUT="$OUT" \
  timeout 540 "$PYTHON" - <<'EOF'
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import optax

from sgc_jax import likelihood, losses, models
from sgc_jax import sde as sde_lib

smoke = os.environ["SGC_ACCELERATOR"] == "cpu"
device = jax.devices()[0]
report = {
    "accelerator_requested": os.environ["SGC_ACCELERATOR"],
    "install": os.environ["SGC_INSTALL_STATUS"],
    "backend": jax.default_backend(), "device_kind": device.device_kind,
    "device_count": jax.device_count(), "jax_version": jax.__version__,
    "host": platform.node(), "smoke_test": smoke, "weights": "random init (timing only)",
    "train": [], "score": [],
}
out = os.environ["SGC_OUT"]
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)


def save():
  """Rewrites the JSON after every figure: a timeout still leaves what was measured."""
  with open(out, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
if smoke:
  channels, sizes, train_batches, score_batches = (4, 8), (16,), {16: 4}, {16: (2,)}
  train_steps, budget_s = 2, 20.0
else:
  channels, sizes = (32, 64, 128, 256, 512), (64, 384)
  # Every (setting, batch) compiles anew (tens of seconds on a GPU): few batch sizes.
  train_batches, score_batches = {64: 32, 384: 8}, {64: (8, 64), 384: (1, 8)}
  train_steps, budget_s = 20, 60.0
SETTINGS = {
    "expint3 27 steps, 1 fresh Rademacher probe per step (the default)":
        dict(solver="expint3", adaptive=False, num_steps=27, grid="logsnr",
             divergence="hutchinson", probe="rademacher", resample_probes=True),
    "expint3 27 steps, 4 fresh Rademacher probes per step (the digits default)":
        dict(solver="expint3", adaptive=False, num_steps=27, grid="logsnr",
             divergence="hutchinson", probe="rademacher", num_probes=4, resample_probes=True),
    "dopri5 1e-5, 1 Gaussian (the seed's method and tolerance)":
        dict(solver="dopri5", rtol=1e-5, atol=1e-5, divergence="hutchinson", probe="gaussian"),
}
if smoke:
  SETTINGS = {k: dict(v, num_steps=2) if "expint" in k else dict(v, rtol=1e-2, atol=1e-2)
              for k, v in SETTINGS.items()}
sde = sde_lib.VPSDE()
classes = 2


def timed_repeats(fn, budget):
  """Median seconds of fn() after one compile run, repeated while within `budget`."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - start
  times = []
  while not times or (sum(times) < budget / 4 and len(times) < 5):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2], compile_s


for size in sizes:
  model = models.get_model({"name": "unet", "unet": {"channels": channels}}, classes, sde)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (size, size, 1), classes)
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  n_params = models.count_params(params)
  batch = train_batches[size]
  try:
    optimizer = optax.adam(1e-4)
    opt_state = optimizer.init(params)
    x0 = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, 1))
    y0 = jnp.arange(batch, dtype=jnp.int32) % classes

    @jax.jit
    def train_step(params, opt_state, key):
      def loss_fn(p):
        return losses.dsm_loss(model.apply, {"params": p, **rest}, x0, y0, key, sde)
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    def run_steps():
      p, s = params, opt_state
      for i in range(train_steps):
        p, s, loss = train_step(p, s, jax.random.PRNGKey(i))
      return loss
    seconds, compile_s = timed_repeats(run_steps, budget_s)
    report["train"].append({"size": size, "batch": batch, "params": n_params,
                            "images_per_s": batch * train_steps / seconds,
                            "compile_s": compile_s})
  except Exception as e:  # pylint: disable=broad-except
    report["train"].append({"size": size, "batch": batch, "error": repr(e)[:500]})
  print(json.dumps(report["train"][-1]), flush=True)
  save()

  score_fn = models.make_score_fn(model, variables, sde.marginal_std)
  for name, options in SETTINGS.items():
    for b in score_batches[size]:
      x = jax.random.uniform(jax.random.PRNGKey(2), (b, size, size, 1)) * 2 - 1
      keys = jax.random.split(jax.random.PRNGKey(3), b)
      entry = {"size": size, "setting": name, "batch": b, "classes": classes}
      try:
        fn = lambda x=x, keys=keys, options=options: likelihood.class_log_likelihoods(
            score_fn, sde, x, classes, key=keys, **options)
        seconds, compile_s = timed_repeats(fn, budget_s)
        result = fn()
        entry.update(images_per_s=b / seconds, image_classes_per_s=b * classes / seconds,
                     seconds=seconds, compile_s=compile_s,
                     nfe=float(jnp.mean(result.num_function_evals)),
                     all_succeeded=bool(jnp.all(result.success)))
      except Exception as e:  # pylint: disable=broad-except
        entry["error"] = repr(e)[:500]
      report["score"].append(entry)
      print(json.dumps(entry), flush=True)
      save()

report["complete"] = True
save()
print(f"device_check: wrote {out} ({report['device_kind']}, backend {report['backend']})")
EOF
