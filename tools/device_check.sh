#!/usr/bin/env bash
# One prepared check for the lent GPU machine, runnable there unchanged, offline, in one call.
#
#   bash tools/device_wheels.sh                 # here, once: the wheels the machine lacks -> .whl/
#   bash tools/device_check.sh [OUT.json]       # there (carry .whl); default
#                                               # tools/results/device_check.json
#   SGC_DEVICE_CHECK_SMOKE=1 bash tools/device_check.sh OUT.json   # anywhere: seconds, tiny nets
#
# 1. Installs .whl/*.whl (or .whl/pyX.Y/*.whl when that folder exists for this Python) with
#    `pip install --no-index --no-deps --target $SGC_SITE` (default /tmp/site) and runs the project
#    from this checkout (PYTHONPATH=$SGC_SITE:ROOT, no `pip install -e`) on the machine's own JAX.
#    Nothing here ever asks a package index.
# 2. Reads the backend and device kind in a child process. A full run that finds no accelerator
#    writes a JSON saying so (is_accelerator false, no figures) and exits 3: CPU figures are never
#    reported as accelerator figures. The smoke mode runs anywhere and marks its JSON with the
#    backend it got (is_accelerator false on a CPU).
# 3. Measures, each group in its own child process under its own time limit (a hung compile
#    costs that group only; the JSON is rewritten after every figure):
#      - the seed-sized U-Net (channels 32..512, 3 channels: 8.2 M parameters) at 64x64 and
#        384x384, and configs/digits_unet.py's U-Net at its 16x16x1;
#      - training images/s (the seed's summed DSM loss, Adam, jitted step, compile excluded) over
#        a batch sweep, in float32 and in bfloat16 (model.dtype; parameters stay float32);
#      - scoring images/s for 2 classes with the configs' default scorer (configs/default.py:
#        expint3, 27 log-SNR steps, 1 fresh Rademacher probe per step) over a batch sweep, in
#        float32 and bfloat16, with the seed's Dopri5 at rtol = atol = 1e-5, and with
#        configs/digits_unet.py's own eval block (4 fresh probes per step); network passes
#        per solve;
#      - bfloat16's effect on log p: mean and max |log p_bf16 - log p_f32| (nats, and bits/dim)
#        on the same images and probes, and whether the argmax class agrees.
#    Weights are random (timing only): the log p figures measure arithmetic, not a model.
# 4. Writes one JSON: backend, device kind, JAX/jaxlib/plugin and library versions (and where
#    each was imported from), every figure, and each group's status.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/tools/results/device_check.json}")"
PYTHON="${PYTHON:-python3}"
SITE="${SGC_SITE:-/tmp/site}"
SMOKE="${SGC_DEVICE_CHECK_SMOKE:-0}"
# The whole call must end under 10 minutes: the measurements get this many seconds in all.
BUDGET_S="${SGC_DEVICE_CHECK_BUDGET_S:-540}"
cd "$ROOT"

pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
WHEELS="${SGC_WHEELS:-}"
if [[ -z "$WHEELS" ]]; then
  WHEELS="$ROOT/.whl"
  [[ -d "$ROOT/.whl/py$pyver" ]] && WHEELS="$ROOT/.whl/py$pyver"
fi
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
if (( ${#wheels[@]} )); then
  mkdir -p "$SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --disable-pip-version-check --target "$SITE" "${wheels[@]}"
  install_status="installed ${#wheels[@]} wheels from $WHEELS into $SITE (--no-index)"
else
  install_status="no wheels in $WHEELS: using what this Python already has"
fi
echo "device_check: Python $pyver; $install_status"
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/device_check.py" <<'EOF'
"""Driver (no JAX import, so each child owns the accelerator) and measurement children."""
import json
import os
import platform
import subprocess
import sys
import time

SMOKE = os.environ.get("SGC_DEVICE_CHECK_SMOKE", "0") == "1"
SEED_CHANNELS = (32, 64, 128, 256, 512)
DIGITS_CHANNELS = (16, 32, 64)
CLASSES = 2


def groups():
  """(name, seconds, spec): what each child measures, most wanted figures first."""
  if SMOKE:
    return [("env", 120, {}),
            ("smoke", 240, dict(model="seed", channels=(4, 8), size=16, in_channels=1,
                                train=[(4, "float32"), (4, "bfloat16")],
                                score=[("default", 2, "float32"), ("default", 2, "bfloat16"),
                                       ("seed_dopri5", 2, "float32")],
                                train_steps=2, budget_s=2.0))]
  return [
      ("env", 60, {}),
      ("seed_unet_64", 160, dict(
          model="seed", channels=SEED_CHANNELS, size=64, in_channels=3,
          train=[(256, "float32"), (256, "bfloat16"), (64, "float32"), (512, "float32")],
          score=[("default", 256, "float32"), ("default", 256, "bfloat16"),
                 ("seed_dopri5", 64, "float32"), ("default", 64, "float32")],
          train_steps=10, budget_s=8.0)),
      ("seed_unet_384", 220, dict(
          model="seed", channels=SEED_CHANNELS, size=384, in_channels=3,
          train=[(32, "float32"), (32, "bfloat16"), (64, "float32")],
          score=[("default", 32, "float32"), ("default", 32, "bfloat16"),
                 ("seed_dopri5", 8, "float32"), ("default", 8, "float32")],
          train_steps=5, budget_s=10.0)),
      ("digits_unet_16", 90, dict(
          model="digits_unet", channels=DIGITS_CHANNELS, size=16, in_channels=1,
          train=[(1024, "float32"), (1024, "bfloat16"), (32, "float32")],
          score=[("default", 512, "float32"), ("config", 128, "float32"),
                 ("default", 512, "bfloat16")],
          train_steps=20, budget_s=6.0)),
  ]


# ----------------------------------------------------------------------------- children


def env_child(emit):
  import importlib
  import importlib.metadata as md
  import jax
  device = jax.devices()[0]
  versions, where = {}, {}
  for dist, module in [("jax", "jax"), ("jaxlib", "jaxlib"), ("jax-cuda13-plugin", None),
                       ("jax-cuda12-plugin", None), ("flax", "flax"), ("optax", "optax"),
                       ("orbax-checkpoint", "orbax.checkpoint"), ("diffrax", "diffrax"),
                       ("lineax", "lineax"), ("equinox", "equinox"), ("numpy", "numpy"),
                       ("scipy", "scipy"), ("ml-collections", "ml_collections"),
                       ("tensorflow-datasets", "tensorflow_datasets"), ("grain", "grain"),
                       ("array-record", "array_record"), ("pydicom", "pydicom"),
                       ("tensorboardX", "tensorboardX"), ("protobuf", "google.protobuf")]:
    try:
      versions[dist] = md.version(dist)
    except md.PackageNotFoundError:
      continue
    if module:
      try:
        where[dist] = os.path.dirname(importlib.import_module(module).__file__)
      except Exception as e:  # pylint: disable=broad-except
        where[dist] = f"import failed: {e!r}"[:300]
  # The project's own modules, as the trainer and the scorer import them.
  imports = {}
  for module in ("sgc_jax.likelihood", "sgc_jax.trainer", "sgc_jax.data.reader",
                 "sgc_jax.checkpointing", "sgc_jax.sharding", "sgc_jax.api",
                 "configs.digits_unet", "configs.mammography"):
    try:
      importlib.import_module(module)
      imports[module] = "ok"
    except Exception as e:  # pylint: disable=broad-except
      imports[module] = f"failed: {e!r}"[:300]
  emit({"backend": jax.default_backend(), "platform": device.platform,
        "device_kind": device.device_kind, "device_count": jax.device_count(),
        "jax_version": jax.__version__, "versions": versions, "imported_from": where,
        "project_imports": imports})


def measure_child(spec, deadline, emit):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from configs import default as default_config
  from configs import digits_unet
  from sgc_jax import likelihood, losses, models
  from sgc_jax import sde as sde_lib

  device = jax.devices()[0]
  sde = sde_lib.VPSDE()
  size, channels = spec["size"], spec["in_channels"]
  shape = (size, size, channels)
  dims = size * size * channels

  def scorer_settings():
    ev = default_config.get_config().eval
    default = dict(solver=ev.solver, adaptive=ev.adaptive, num_steps=ev.num_steps, grid=ev.grid,
                   eps=ev.eps, divergence=ev.divergence, probe=ev.probe,
                   num_probes=ev.num_probes, resample_probes=ev.resample_probes)
    seed = dict(solver="dopri5", adaptive=True, rtol=1e-5, atol=1e-5, eps=1e-5,
                divergence="hutchinson", probe="gaussian")
    dv = digits_unet.get_config().eval
    own = dict(solver=dv.solver, adaptive=dv.adaptive, num_steps=dv.num_steps, grid=dv.grid,
               rtol=dv.rtol, atol=dv.atol, eps=dv.eps, divergence=dv.divergence, probe=dv.probe,
               num_probes=dv.num_probes, resample_probes=dv.resample_probes)
    own_steps = (f"rtol=atol={dv.rtol:g}" if dv.adaptive
                 else f"{dv.num_steps} {dv.grid} steps")
    names = {"default": f"{ev.solver} {ev.num_steps} {ev.grid} steps, {ev.num_probes} fresh "
                        f"{ev.probe} probe(s) per step (configs/default.py)",
             "seed_dopri5": "dopri5 rtol=atol=1e-5, 1 gaussian probe (the seed's)",
             "config": f"{dv.solver} {own_steps}, {dv.num_probes} "
                       f"{'fresh ' if dv.resample_probes else ''}{dv.probe} probe(s)"
                       f"{' per step' if dv.resample_probes else ''} (configs/digits_unet.py)"}
    settings = {"default": default, "seed_dopri5": seed, "config": own}
    if SMOKE:  # seconds on a CPU: 2 fixed steps, tolerances 1e-2
      settings = {k: (dict(v, num_steps=2) if not v["adaptive"] else dict(v, rtol=1e-2, atol=1e-2))
                  for k, v in settings.items()}
      names = {k: f"smoke version of: {v}" for k, v in names.items()}
    return settings, names

  settings, setting_names = scorer_settings()
  base = {"model": spec["model"], "unet_channels": list(spec["channels"]), "image": list(shape)}

  def peak_bytes():
    try:
      return int(device.memory_stats().get("peak_bytes_in_use", 0))
    except Exception:  # pylint: disable=broad-except
      return None

  def timed(fn, budget):
    """(median seconds, all seconds, compile seconds) of fn() after one compiling run."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - start
    times = []
    while not times or (sum(times) < budget and len(times) < 10):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - t0)
    return float(np.median(times)), [round(t, 5) for t in times], compile_s

  built = {}

  def build(dtype):
    if dtype not in built:
      config = {"name": "unet", "dtype": dtype, "unet": {"channels": tuple(spec["channels"])}}
      model = models.get_model(config, CLASSES, sde)
      # The same parameters for both dtypes (parameters are float32 either way).
      variables = built.get("float32", (None, None))[1] or models.init_variables(
          model, jax.random.PRNGKey(0), shape, CLASSES)
      built[dtype] = (model, variables)
    return built[dtype]

  def left():
    return deadline - time.monotonic()

  for batch, dtype in spec["train"]:
    entry = dict(base, kind="train", batch=batch, dtype=dtype)
    if left() < 10:
      emit(dict(entry, skipped="group time limit reached")); continue
    try:
      model, variables = build(dtype)
      params = variables["params"]
      rest = {k: v for k, v in variables.items() if k != "params"}
      optimizer = optax.adam(1e-4)
      opt_state = optimizer.init(params)
      x0 = jax.random.uniform(jax.random.PRNGKey(1), (batch,) + shape)
      y0 = jnp.arange(batch, dtype=jnp.int32) % CLASSES

      @jax.jit
      def train_step(params, opt_state, key):
        def loss_fn(p):
          return losses.dsm_loss(model.apply, {"params": p, **rest}, x0, y0, key, sde)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

      steps = spec["train_steps"]

      def run():
        p, s = params, opt_state
        for i in range(steps):
          p, s, loss = train_step(p, s, jax.random.PRNGKey(i))
        return loss
      seconds, times, compile_s = timed(run, min(spec["budget_s"], max(left() / 4, 1.0)))
      emit(dict(entry, params=models.count_params(params), steps_per_timing=steps,
                images_per_s=batch * steps / seconds, step_ms=1e3 * seconds / steps,
                timings_s=times, compile_s=compile_s, peak_bytes=peak_bytes()))
    except Exception as e:  # pylint: disable=broad-except
      emit(dict(entry, error=repr(e)[:600]))

  results = {}
  for name, batch, dtype in spec["score"]:
    options = settings[name]
    entry = dict(base, kind="score", setting=setting_names[name], batch=batch, dtype=dtype,
                 classes=CLASSES)
    if left() < 15:
      emit(dict(entry, skipped="group time limit reached")); continue
    try:
      model, variables = build(dtype)
      score_fn = models.make_score_fn(model, variables, sde.marginal_std)
      x = jax.random.uniform(jax.random.PRNGKey(2), (batch,) + shape) * 2 - 1
      keys = jax.random.split(jax.random.PRNGKey(3), batch)
      fn = lambda: likelihood.class_log_likelihoods(score_fn, sde, x, CLASSES, key=keys,
                                                    **options)
      seconds, times, compile_s = timed(fn, min(spec["budget_s"], max(left() / 4, 1.0)))
      result = fn()
      results[(name, batch, dtype)] = np.asarray(result.log_likelihood)
      emit(dict(entry, images_per_s=batch / seconds, image_classes_per_s=batch * CLASSES / seconds,
                seconds=seconds, timings_s=times, compile_s=compile_s,
                network_passes_per_solve=float(jnp.mean(result.num_function_evals)),
                all_succeeded=bool(jnp.all(result.success)), peak_bytes=peak_bytes()))
    except Exception as e:  # pylint: disable=broad-except
      emit(dict(entry, error=repr(e)[:600]))

  # bfloat16 against float32 on the same images and probes (default scorer), at every batch
  # scored in both.
  for (name, batch, dtype), bf16 in results.items():
    f32 = results.get((name, batch, "float32"))
    if dtype != "bfloat16" or f32 is None:
      continue
    f32, bf16 = np.asarray(f32, np.float64), np.asarray(bf16, np.float64)
    delta = np.abs(bf16 - f32)
    emit(dict(base, kind="bf16_log_p", setting=setting_names[name], batch=batch,
              mean_abs_delta_nats=float(np.nanmean(delta)),
              max_abs_delta_nats=float(np.nanmax(delta)),
              mean_abs_delta_bits_per_dim=float(np.nanmean(delta) / (dims * np.log(2))),
              mean_abs_f32_log_p_nats=float(np.nanmean(np.abs(f32))),
              argmax_class_agreement=float(np.mean(np.argmax(f32, 1) == np.argmax(bf16, 1)))))


def child(group, spec, seconds, out):
  deadline = time.monotonic() + seconds

  def emit(entry):
    with open(out, "a", encoding="utf-8") as f:
      f.write(json.dumps(entry) + "\n")
    print(json.dumps(entry), flush=True)
  if group == "env":
    env_child(emit)
  else:
    measure_child(spec, deadline, emit)


# ----------------------------------------------------------------------------- driver


def driver(out):
  start = time.monotonic()
  total = float(os.environ.get("SGC_DEVICE_CHECK_BUDGET_S", "540"))
  report = {"smoke_test": SMOKE, "install": os.environ.get("SGC_INSTALL_STATUS", ""),
            "python": platform.python_version(), "host": platform.node(),
            "weights": "random init (timing only)", "groups": {}, "train": [], "score": [],
            "bf16_log_p": []}
  os.makedirs(os.path.dirname(out), exist_ok=True)

  def save():
    with open(out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)

  for name, seconds, spec in groups():
    remaining = total - (time.monotonic() - start) - 5
    if remaining < 20:
      report["groups"][name] = "skipped: the call's time budget is spent"; save(); continue
    limit = min(seconds, remaining)
    lines = os.path.join(os.path.dirname(out), f".device_check_{os.getpid()}_{name}.jsonl")
    t0 = time.monotonic()
    try:
      proc = subprocess.run([sys.executable, __file__, "child", name, json.dumps(spec),
                             str(limit - 10), lines], timeout=limit, capture_output=True,
                            text=True, check=False)
      status = "ok" if proc.returncode == 0 else (
          f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
    except subprocess.TimeoutExpired:
      status = f"killed after its {limit:.0f} s limit (the figures before that are kept)"
    entries = []
    if os.path.exists(lines):
      with open(lines, encoding="utf-8") as f:
        entries = [json.loads(line) for line in f if line.strip()]
      os.remove(lines)
    report["groups"][name] = {"status": status, "seconds": round(time.monotonic() - t0, 1)}
    if name == "env":
      if not entries:
        report["error"] = f"could not read the backend: {status}"
        report["is_accelerator"] = False
        save()
        return 4
      report.update(entries[0])
      report["is_accelerator"] = (report["backend"] != "cpu" and report["platform"] != "cpu")
      if not report["is_accelerator"] and not SMOKE:
        report["error"] = ("no accelerator: JAX's backend is cpu, so no figures are reported "
                           "as accelerator figures (SGC_DEVICE_CHECK_SMOKE=1 runs the CPU smoke "
                           "test)")
        save()
        print(f"device_check: {report['error']}", file=sys.stderr)
        return 3
    else:
      for entry in entries:
        report.setdefault(entry.get("kind", "other"), []).append(entry)
    save()
    print(f"device_check: {name}: {status} ({len(entries)} entries)", flush=True)
  report["complete"] = True
  report["seconds"] = round(time.monotonic() - start, 1)
  save()
  print(f"device_check: wrote {out} (backend {report['backend']}, {report['device_kind']}, "
        f"accelerator {report['is_accelerator']}, smoke {SMOKE})")
  return 0


if __name__ == "__main__":
  if sys.argv[1] == "child":
    child(sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
  else:
    sys.exit(driver(sys.argv[2]))
EOF

SGC_INSTALL_STATUS="$install_status" SGC_DEVICE_CHECK_SMOKE="$SMOKE" \
  timeout $(( ${BUDGET_S%.*} + 30 )) "$PYTHON" "$work/device_check.py" driver "$OUT"
