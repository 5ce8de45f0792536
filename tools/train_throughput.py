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

Per-layer breakdown (`--layers`, -> tools/results/train_throughput_layers.json):

    flock /tmp/sgc_heavy.lock python tools/train_throughput.py --layers --variants default eigen_conv
    flock /tmp/sgc_heavy.lock python tools/train_throughput.py --layers --skip_torch \
        --variants im2col patch_grad
    flock /tmp/sgc_heavy.lock python tools/train_throughput.py --layers --skip_layers \
        --step_check --variants default eigen_conv   # whole steps under the variants' XLA flags

Every distinct convolution shape of the seed U-Net at 64² and 128², batch 32,
read off the network itself (each `layers.Conv` / `layers.ConvTranspose` call
of an abstract init, grouped by kind, map size and widths, with how many layers
share the shape): the encoder's and decoder's 3x3 convolutions, the 1x1 output
convolution and the 2x2 stride-2 transposed convolutions. Each is timed alone,
jitted on one JAX device (the layers' own code, or a candidate), and
in PyTorch (`F.conv2d` / `F.conv_transpose2d` without grad, and
`aten.convolution_backward`, the kernel autograd runs, with only the input or
only the weight gradient asked for): forward, input gradient (vjp wrt the
input) and weight gradient (vjp wrt the kernel); JAX also forward mode wrt the
input (jvp, what the likelihood runs). One warm-up call (compiles), then
10-30 timed calls (fewer for slower shapes), median, quartiles and min/max.
One subprocess per framework, variant and resolution, one after the other.
Phase sums weight each shape by its layer count; the first convolution's
input gradient is timed but left out of the sum (its input is the data, so no
training step computes it). Every JAX phase is also checked against an
independent computation of the same numbers (relative_error). Each invocation
merges into the JSON, keeping the variants it did not measure.
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
LAYERS_OUT = os.path.join(ROOT, "tools", "results", "train_throughput_layers.json")
LAYER_SIZES = (64, 128)
LAYER_BATCH = 32
PHASES = ("forward", "input_grad", "weight_grad")
# JAX variants of the breakdown: how the stride-1 convolutions are written (`impl`: "conv" is
# `layers.Conv`, the others are the candidates of `_candidate_conv`) and extra XLA flags. This
# jaxlib runs convolutions and dots as YNNPACK fusions; "eigen_conv" hands the convolutions back
# to XLA's own (Eigen) kernels.
JAX_VARIANTS = {
    "default": {"impl": "conv", "xla_flags": ""},
    "im2col": {"impl": "im2col", "xla_flags": ""},
    "patch_grad": {"impl": "patch_grad", "xla_flags": ""},
    "eigen_conv": {"impl": "conv",
                   "xla_flags": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"},
}
LAYERS_METHOD = (
    "Each distinct convolution shape alone, batch 32. JAX: the layer's own code "
    "(layers.Conv, layers.ConvTranspose, or a candidate) jitted on one device; forward, input_grad = "
    "vjp wrt the input, weight_grad = vjp wrt the kernel, jvp = forward mode wrt the input. "
    "PyTorch (NCHW): F.conv2d / F.conv_transpose2d under no_grad, and "
    "aten.convolution_backward (what autograd runs) with only the input or only the weight "
    "gradient requested (the bias, where the layer has one, is added in the forward and its "
    "gradient is not asked for). One warm-up call, then 10-30 timed calls (fewer for slower "
    "shapes): median, quartiles, min/max. One subprocess per framework, variant and resolution, "
    "one after the other. sums_s weight each shape by its layer count and leave out the first "
    "convolution's input gradient (its input is the data, so no training step computes it); "
    "training_total = forward + input_grad + weight_grad.")
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


def _stats(times: list[float]) -> dict:
  quartiles = statistics.quantiles(times, n=4, method="inclusive")
  return {"median_s": statistics.median(times), "q1_s": quartiles[0], "q3_s": quartiles[2],
          "min_s": min(times), "max_s": max(times), "reps": len(times)}


def _time_phase(run, min_reps: int = 10, max_reps: int = 30, target_s: float = 1.5) -> dict:
  """One warm-up call of `run()` (compiles), then `min_reps`..`max_reps` timed calls."""
  run()
  start = time.perf_counter()
  run()
  once = time.perf_counter() - start
  reps = max(min_reps, min(max_reps, int(target_s / max(once, 1e-6))))
  return _stats(_timed(run, reps))


def enumerate_layers(size: int, batch: int) -> list[dict]:
  """The distinct convolution shapes of the seed U-Net at `size`², read off an abstract init."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from sgc_jax.models import layers, unet  # pylint: disable=g-import-not-at-top

  found = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (layers.Conv,
                                                                 layers.ConvTranspose)):
      transposed = isinstance(module, layers.ConvTranspose)
      found.append({
          "kind": "conv_transpose" if transposed else f"conv{module.kernel_size}x{module.kernel_size}",
          "kernel": module.factor if transposed else module.kernel_size,
          "stride": module.factor if transposed else 1,
          "bias": True if transposed else module.use_bias,
          "hw": int(args[0].shape[1]), "cin": int(args[0].shape[-1]), "cout": module.features,
          "layer": "/".join(module.scope.path)})
    return next_fun(*args, **kwargs)

  net = unet.SeedUNet(NUM_CLASSES, CHANNELS)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0),
                                    jnp.zeros((batch, size, size, IMAGE_CHANNELS)),
                                    jnp.zeros((batch,)), jnp.zeros((batch,), jnp.int32),
                                    train=True))
  rows = {}
  for layer in found:
    key = tuple(layer[k] for k in ("kind", "kernel", "stride", "bias", "hw", "cin", "cout"))
    row = rows.setdefault(key, {**{k: v for k, v in layer.items() if k != "layer"},
                                "batch": batch, "layers": []})
    row["layers"].append(layer["layer"])
  for row in rows.values():
    row["count"] = len(row["layers"])
    # The network's input is the data: no training step needs the gradient wrt it.
    row["input_grad_in_training"] = found[0]["layer"] not in row["layers"]
  return list(rows.values())


def _hlo_ops(compiled_text: str) -> dict:
  """Which convolutions (window sizes) and dots a compiled phase runs, and how many YNNPACK fusions."""
  import re  # pylint: disable=g-import-not-at-top
  return {"convolution_windows": sorted(set(re.findall(r" convolution\(.*?window=\{size=(\S+?)[ }]",
                                                        compiled_text))),
          "dots": len(re.findall(r" dot\(", compiled_text)),
          "ynn_fusions": compiled_text.count('"kind":"__ynn_fusion"')}


def _candidate_conv(impl: str):
  """A candidate stride-1 'SAME' convolution f(x, kernel) (no bias), "im2col" or "patch_grad".

  "im2col": the k*k shifted views of the padded input concatenated (`layers._im2col_conv`, which
  `layers.Conv` uses on maps smaller than the kernel) and one matmul; both modes of
  differentiation are JAX's own. "patch_grad": XLA's convolution with a custom JVP that is linear
  in (dx, dkernel), conv(dx, kernel) + patches(x) @ dkernel, so that reverse mode (its transpose)
  keeps XLA's transposed convolution as the input gradient and makes the weight gradient one
  matmul patches(x)^T @ g.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from sgc_jax.models import layers  # pylint: disable=g-import-not-at-top

  def xla_conv(x, kernel):
    k = kernel.shape[0]
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  if impl == "im2col":
    return layers._im2col_conv  # pylint: disable=protected-access

  def patch_grad(x, kernel):
    if min(x.shape[1:3]) < kernel.shape[0]:  # as layers.Conv: im2col on maps below the kernel
      return layers._im2col_conv(x, kernel)  # pylint: disable=protected-access
    return patch_grad_conv(x, kernel)

  @jax.custom_jvp
  def patch_grad_conv(x, kernel):
    return xla_conv(x, kernel)

  def patch_grad_jvp(primals, tangents):
    (x, kernel), (dx, dkernel) = primals, tangents
    out = xla_conv(x, kernel)
    zero = lambda t: isinstance(t, jax.custom_derivatives.SymbolicZero)
    terms = ([] if zero(dx) else [xla_conv(dx, kernel)]) + (
        [] if zero(dkernel) else [layers._im2col_conv(x, dkernel)])  # pylint: disable=protected-access
    return out, sum(terms[1:], terms[0]) if terms else jax.numpy.zeros_like(out)

  patch_grad_conv.defjvp(patch_grad_jvp, symbolic_zeros=True)
  return patch_grad


def measure_layers_jax(rows: list[dict], impl: str) -> dict:
  """Each shape's phases with this project's layers (or a candidate), jitted on one device."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from sgc_jax.models import layers  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  results = []
  for row in rows:
    batch, hw, cin, cout, k = (row[key] for key in ("batch", "hw", "cin", "cout", "kernel"))
    transposed = row["kind"] == "conv_transpose"
    out_hw = hw * row["stride"] if transposed else hw
    module = (layers.ConvTranspose(cout, k) if transposed
              else layers.Conv(cout, k, use_bias=row["bias"]))
    normal = lambda *shape: jax.device_put(rng.standard_normal(shape, np.float32))
    x, kernel, cot = normal(batch, hw, hw, cin), normal(k, k, cin, cout), normal(
        batch, out_hw, out_hw, cout)
    tangent = normal(batch, hw, hw, cin)
    others = {"bias": normal(cout)} if row["bias"] else {}

    def layer(x, kernel):
      return module.apply({"params": {**others, "kernel": kernel}}, x)

    def candidate(impl):
      conv = _candidate_conv(impl)
      return lambda x, kernel: conv(x, kernel) + others.get("bias", 0.0)

    # An independent reference for the numbers: Flax's own transposed convolution; im2col for
    # layers.Conv (dots instead of convolutions); layers.Conv for the candidates.
    if transposed:
      flax_layer = nn.ConvTranspose(cout, (k, k), strides=(k, k), padding="VALID")
      apply, check = layer, lambda x, kernel: flax_layer.apply(
          {"params": {**others, "kernel": kernel}}, x)
    elif impl == "conv":
      apply, check = layer, candidate("im2col")
    else:
      apply, check = candidate(impl), layer

    def phases(apply):
      return {
          "forward": (apply, (x, kernel)),
          "input_grad": (lambda x, w, g: jax.vjp(lambda x: apply(x, w), x)[1](g)[0],
                         (x, kernel, cot)),
          "weight_grad": (lambda x, w, g: jax.vjp(lambda w: apply(x, w), w)[1](g)[0],
                          (x, kernel, cot)),
          "jvp": (lambda x, w, t: jax.jvp(lambda x: apply(x, w), (x,), (t,))[1],
                  (x, kernel, tangent)),
      }

    timed, ops, error = {}, {}, {}
    reference = phases(check)
    for name, (fn, args) in phases(apply).items():
      compiled = jax.jit(fn).lower(*args).compile()
      ops[name] = _hlo_ops(compiled.as_text())
      timed[name] = _time_phase(lambda: jax.block_until_ready(compiled(*args)))
      expected = np.asarray(jax.jit(reference[name][0])(*args))
      error[name] = float(np.max(np.abs(np.asarray(compiled(*args)) - expected))
                          / np.max(np.abs(expected)))
    results.append({"phases": timed, "hlo": ops, "relative_error": error})
  return {"framework": "jax", "jax": jax.__version__, "devices": jax.device_count(),
          "impl": impl, "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": results}


def measure_layers_torch(rows: list[dict]) -> dict:
  """Each shape's phases in PyTorch (NCHW, all cores)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  results = []
  for row in rows:
    batch, hw, cin, cout, k, stride = (row[key] for key in ("batch", "hw", "cin", "cout", "kernel",
                                                            "stride"))
    transposed = row["kind"] == "conv_transpose"
    out_hw = hw * stride if transposed else hw
    x = torch.randn(batch, cin, hw, hw)
    weight = torch.randn(cin, cout, k, k) if transposed else torch.randn(cout, cin, k, k)
    bias = torch.randn(cout) if row["bias"] else None
    cot = torch.randn(batch, cout, out_hw, out_hw)
    padding = [0, 0] if transposed else [k // 2, k // 2]

    def forward():
      with torch.no_grad():
        if transposed:
          return F.conv_transpose2d(x, weight, bias, stride=stride)
        return F.conv2d(x, weight, bias, padding=k // 2)

    def backward(mask):
      # What autograd's ConvolutionBackward0 calls, asked for one gradient only.
      return lambda: torch.ops.aten.convolution_backward(
          cot, x, weight, [cout] if bias is not None else None, [stride, stride], padding, [1, 1],
          transposed, [0, 0], 1, mask)

    results.append({"phases": {"forward": _time_phase(forward),
                               "input_grad": _time_phase(backward([True, False, False])),
                               "weight_grad": _time_phase(backward([False, True, False]))}})
  return {"framework": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
          "mkldnn": torch.backends.mkldnn.is_available(), "rows": results}


def _run_self(args: list[str], xla_flags: str, what: str, stdin: str | None = None) -> dict:
  """The JSON last printed by this file run as a child with `args` and `xla_flags` added."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
  done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True,
                        text=True, input=stdin)
  if done.returncode:
    raise RuntimeError(f"{what} failed:\n{done.stderr[-4000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _layers_child(kind: str, size: int, variant: str | None = None,
                  rows: list | None = None) -> dict:
  load_before = os.getloadavg()
  start = time.perf_counter()
  result = _run_self(["--layers_child", kind, str(size),
                      JAX_VARIANTS[variant]["impl"] if variant else "-"],
                     JAX_VARIANTS[variant]["xla_flags"] if variant else "",
                     f"layers {kind} {variant} {size}x{size}", stdin=json.dumps(rows))
  if kind == "shapes":
    return result
  return {**result, "wall_s": round(time.perf_counter() - start, 1),
          "load_average": {"before": [round(v, 2) for v in load_before],
                           "after": [round(v, 2) for v in os.getloadavg()]}}


def _phase_sums(shapes: list[dict], rows: list[dict], phases) -> dict:
  sums = {}
  for phase in phases:
    sums[phase] = sum(shape["count"] * row["phases"][phase]["median_s"]
                      for shape, row in zip(shapes, rows)
                      if phase != "input_grad" or shape["input_grad_in_training"])
  sums["training_total"] = sum(sums[p] for p in PHASES)
  return sums


def run_layers(args) -> None:
  """The per-layer breakdown; merges into `args.layers_out` (other variants' results are kept)."""
  sys.path.insert(0, ROOT)
  from sgc_jax import provenance  # pylint: disable=g-import-not-at-top
  previous = {}
  if os.path.exists(args.layers_out):
    with open(args.layers_out, encoding="utf-8") as f:
      previous = json.load(f)
  with_torch = not args.skip_torch and _has_torch()
  commit = provenance.git_commit(ROOT)
  key = lambda variant: f"{variant}@{args.label}" if args.label else variant
  report = {
      "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
      "commit": commit,  # of the latest invocation; every run below records its own
      "model": f"seed U-Net {CHANNELS}, {IMAGE_CHANNELS} channels, batch {LAYER_BATCH}",
      "method": LAYERS_METHOD,
      "ratio": "JAX seconds / PyTorch seconds (> 1: JAX slower)",
      "xla_flags_environment": os.environ.get("XLA_FLAGS", ""),
      "variants": {name: JAX_VARIANTS[name] for name in
                   sorted(set(args.variants) | set(previous.get("variants", {})))},
      # Written by hand after reading the numbers; kept across invocations.
      "findings": previous.get("findings", {}),
      "resolutions": previous.get("resolutions", {}),
  }
  for size in args.sizes:
    shapes = _layers_child("shapes", size)
    entry = report["resolutions"].get(str(size), {})
    if [s["layers"] for s in entry.get("shapes", [])] != [s["layers"] for s in shapes]:
      entry = {}  # the network changed: nothing earlier is comparable
    entry["shapes"] = shapes
    runs = entry.setdefault("runs", {})
    if with_torch and not args.skip_layers:
      runs["torch"] = {**_layers_child("torch", size, rows=shapes), "commit": commit}
      print(f"{size}²: torch {runs['torch']['wall_s']} s", flush=True)
    for variant in args.variants if not args.skip_layers else ():
      runs[key(variant)] = {**_layers_child("jax", size, variant, rows=shapes), "commit": commit}
      print(f"{size}²: jax {key(variant)} {runs[key(variant)]['wall_s']} s", flush=True)
    if args.step_check:
      # The whole training step (the default mode's measurement) under each variant's XLA flags.
      steps = entry.setdefault("whole_step", {})
      if with_torch:
        steps["torch"] = {**_child("torch", size, LAYER_BATCH, args.steps, 1), "commit": commit}
      for variant in args.variants:
        if JAX_VARIANTS[variant]["impl"] == "conv":
          steps[key(variant)] = {str(d): {**_child("jax", size, LAYER_BATCH, args.steps, d,
                                              JAX_VARIANTS[variant]["xla_flags"]),
                                      "commit": commit} for d in args.devices}
      if "torch" in steps:
        for variant, by_devices in steps.items():
          for run in (by_devices.values() if variant != "torch" else ()):
            run["ratio_to_torch"] = run["images_per_s"] / steps["torch"]["images_per_s"]
      print(f"{size}² whole step img/s: " + ", ".join(
          f"{v} {r['images_per_s']:.2f}" if v == "torch" else
          f"{v} " + "/".join(f"{x['images_per_s']:.2f}" for x in r.values())
          for v, r in steps.items()), flush=True)
    entry["sums_s"] = {name: _phase_sums(shapes, run["rows"], PHASES + (
        ("jvp",) if run["framework"] == "jax" else ())) for name, run in runs.items()}
    if "torch" in runs:
      entry["ratio_to_torch"] = {
          name: {"sums": {p: sums[p] / entry["sums_s"]["torch"][p] for p in PHASES + (
              "training_total",)},
                 "rows": [{p: row["phases"][p]["median_s"] / trow["phases"][p]["median_s"]
                           for p in PHASES}
                          for row, trow in zip(runs[name]["rows"], runs["torch"]["rows"])]}
          for name, sums in entry["sums_s"].items() if name != "torch"}
    report["resolutions"][str(size)] = entry
    os.makedirs(os.path.dirname(args.layers_out), exist_ok=True)
    with open(args.layers_out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
    _print_layers(size, entry)


def _print_layers(size: int, entry: dict) -> None:
  for name, sums in entry["sums_s"].items():
    print(f"{size}² {name:>11}: " + ", ".join(f"{p} {v * 1e3:.0f} ms" for p, v in sums.items()),
          flush=True)
  for name, ratio in entry.get("ratio_to_torch", {}).items():
    worst = sorted(((r[p], p, s) for s, r in zip(entry["shapes"], ratio["rows"]) for p in PHASES),
                   reverse=True)[:3]
    print(f"  {name} / torch: " + ", ".join(f"{p} {v:.2f}" for p, v in ratio["sums"].items())
          + "; worst: " + ", ".join(f"{s['kind']} {s['hw']}² {s['cin']}->{s['cout']} {p} {v:.1f}x"
                                    for v, p, s in worst), flush=True)


def _child(framework: str, size: int, batch: int, steps: int, devices: int,
           xla_flags: str = "") -> dict | None:
  flags = (f"{xla_flags} --xla_force_host_platform_device_count={devices}"
           if framework == "jax" else "")
  load_before = os.getloadavg()[0]
  result = _run_self(["--child", framework, str(size), str(batch), str(steps)], flags,
                     f"{framework} {size}x{size} batch {batch}")
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
  parser.add_argument("--layers", action="store_true",
                      help="per-layer breakdown of the convolutions instead of whole steps")
  parser.add_argument("--sizes", nargs="*", type=int, default=list(LAYER_SIZES),
                      help="--layers: resolutions (default: %(default)s)")
  parser.add_argument("--variants", nargs="*", default=["default"], choices=sorted(JAX_VARIANTS),
                      help="--layers: JAX variants to measure (default: %(default)s)")
  parser.add_argument("--layers_out", default=LAYERS_OUT)
  parser.add_argument("--step_check", action="store_true",
                      help="--layers: also time the whole training step (--devices, --steps) "
                      "under each variant's XLA flags, and PyTorch's")
  parser.add_argument("--label", default="",
                      help="--layers: store this invocation's JAX runs as VARIANT@LABEL, keeping "
                      "those without the label (e.g. measured before a change of the code)")
  parser.add_argument("--skip_layers", action="store_true",
                      help="--layers --step_check: the whole steps only")
  parser.add_argument("--layers_child", nargs=3, metavar=("KIND", "SIZE", "IMPL"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.layers_child:
    kind, size, impl = args.layers_child
    if kind == "shapes":
      result = enumerate_layers(int(size), LAYER_BATCH)
    else:
      rows = json.loads(sys.stdin.read())
      result = measure_layers_jax(rows, impl) if kind == "jax" else measure_layers_torch(rows)
    print(json.dumps(result))
    return
  if args.layers:
    run_layers(args)
    return
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
