"""The README's quoted figures equal the results JSON they come from (as rounded in print).

Each table below names, in the README, the command that wrote it and the file in
tools/results/. A rerun that changes a number and leaves the README behind fails
here. A printed figure p with d decimals binds a value v when |v - p| <= 0.5e-d:
what rounding v to d decimals can print ("0.31" binds 0.305).
tests/test_demo_report.py checks the demo table's columns against the report they
are printed from.
"""
import json
import math
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "tools", "results")
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as _f:
  README = _f.read()
# The README with every run of whitespace one space: for sentences that wrap across lines.
README_ONE_LINE = re.sub(r"\s+", " ", README)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?")
NAT_PER_BIT = math.log(2.0)


def results(name: str):
  with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
    return json.load(f)


def table(header: str) -> list[list[str]]:
  """The body rows (cells stripped, markdown bold removed) of the table whose header starts so."""
  lines = README.splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith(header)]
  assert len(starts) == 1, f"README: {len(starts)} tables start with {header!r}"
  rows = []
  for line in lines[starts[0] + 2:]:          # the header, then the |---| line
    if not line.startswith("|"):
      break
    rows.append([c.strip().replace("**", "") for c in line.strip().strip("|").split("|")])
  return rows


def row(rows: list[list[str]], label: str) -> list[str]:
  """The one row whose first cell contains `label`."""
  found = [r for r in rows if label in r[0]]
  assert len(found) == 1, f"{len(found)} rows contain {label!r}: {[r[0] for r in rows]}"
  return found[0]


def numbers(cell: str) -> list[str]:
  return _NUMBER.findall(cell)


def assert_printed(printed: str, value, what: str = "") -> None:
  """`printed` (as the README shows it, commas allowed) is `value` rounded to its decimals."""
  text = printed.replace(",", "")
  decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
  tolerance = 0.5 * 10.0 ** -decimals + 1e-9
  if "e" in text:
    tolerance = abs(float(text)) * 1e-9
  assert value is not None and abs(float(value) - float(text)) <= tolerance, (
      f"README {what}: prints {printed}, the results JSON holds {value}")


def assert_cell(cell: str, values, what: str = "") -> None:
  """Every number in `cell`, in order, against `values` (one value or a list)."""
  values = list(values) if isinstance(values, (list, tuple)) else [values]
  printed = numbers(cell)
  assert len(printed) == len(values), f"README {what}: cell {cell!r}, expected {values}"
  for p, v in zip(printed, values):
    assert_printed(p, v, f"{what} ({cell!r})")


# --- Likelihood cost (tools/likelihood_speed.py) -----------------------------------------------

_SPEED_COLUMNS = (("passes_per_image_class", 1), ("seconds", 1), ("speedup_vs_seed", 1),
                  ("mean_abs_dbits_per_dim", 1), ("agreement", 100))
_MLP_ROWS = (
    ("seed's path", "seed path: scipy RK45 1e-5 on the host, 1 Gaussian probe"),
    ("equal tolerance", "engine: Dopri5 1e-5, 1 Gaussian probe"),
    ("expint3 8 steps, 1 probe", "expint3 8 steps, 1 Rademacher"),
    ("expint3 12 steps, 1 probe", "expint3 12 steps, 1 Rademacher"),
    ("16 steps, 1 fresh", "expint3 16 steps, 1 Rademacher fresh per step"),
    ("27 steps, 4 fresh", "expint3 27 steps, 4 Rademacher fresh per step"),
    ("32 steps, 16 fresh", "expint3 32 steps, 16 Rademacher fresh per step"),
    ("27 steps, exact", "expint3 27 steps, exact divergence"),
    ("32 steps, exact", "expint3 32 steps, exact divergence"),
)
_UNET_ROWS = (
    ("seed's path", "seed path: scipy RK45 1e-5 on the host, 1 Gaussian probe"),
    ("equal tolerance", "engine: Dopri5 1e-5, 1 Gaussian probe"),
    ("8 steps, 1 probe", "expint3 8 steps, 1 Rademacher"),
    ("16 steps, 1 fresh", "expint3 16 steps, 1 Rademacher fresh per step"),
    ("27 steps, 1 probe", "expint3 27 steps, 1 Rademacher"),
    ("27 steps, 1 fresh", "expint3 27 steps, 1 Rademacher fresh per step"),
    ("27 steps, 4 fresh", "expint3 27 steps, 4 Rademacher fresh per step"),
)


@pytest.mark.parametrize("header,name,bindings", [
    ("| setting (MLP, 8×8) |", "likelihood_speed_mlp.json", _MLP_ROWS),
    ("| setting (U-Net, 16×16) |", "likelihood_speed_unet.json", _UNET_ROWS),
])
def test_likelihood_speed_tables_equal_their_json(header, name, bindings):
  model = results(name)["models"][0]
  by_method = {r["method"]: r for r in model["rows"]}
  rows = table(header)
  assert len(rows) == len(bindings)           # every printed row is bound
  for label, method in bindings:
    cells = row(rows, label)
    for cell, (key, scale) in zip(cells[1:], _SPEED_COLUMNS):
      assert_cell(cell, by_method[method][key] * scale, f"{name} {method} {key}")


def test_likelihood_speed_prose_equals_its_json():
  mlp, unet = (results(f"likelihood_speed_{m}.json")["models"][0] for m in ("mlp", "unet"))
  assert f"has all {len(mlp['rows'])} rows" in README
  assert_printed(re.search(r"within ([\d.]+) nats of float64 Tsit5", README).group(1),
                 mlp["max_abs_nats_vs_float64_tsit5_1e-7"], "reference vs Tsit5")
  match = re.search(r"own probe error is ([\d.]+) nats \(([\d.]+) bits/dim\)", README)
  assert_printed(match.group(1), unet["reference_probe_error_mean_abs_nats"], "probe error")
  assert_printed(match.group(2), unet["reference_probe_error_mean_abs_bits_per_dim"], "bits")
  match = re.search(r"same decision on only\s+([\d.]+) %", README)
  assert_printed(match.group(1), 100 * unet["decision_agreement_between_halves"], "halves")
  assert_printed(re.search(r"reference accuracy ([\d.]+)\)", README).group(1),
                 unet["reference_accuracy"], "U-Net reference accuracy")
  for model, target in ((mlp, "equal_tolerance"), (mlp, "fast"), (mlp, "equal_accuracy")):
    assert model["targets"][target]["method"] in {r["method"] for r in model["rows"]}
  assert_printed(re.search(r"tolerance 1\.50× \(([\d.]+);", README).group(1),
                 unet["targets"]["equal_tolerance"]["speedup"], "U-Net equal tolerance")


def test_likelihood_throughput_table_equals_its_json():
  mlp = results("likelihood_speed_mlp.json")["models"][0]["throughput_image_classes_per_s"]
  unet = results("likelihood_speed_unet.json")["models"][0]["throughput_image_classes_per_s"]
  fixed = results("likelihood_speed_unet_throughput.json")["models"][0][
      "throughput_image_classes_per_s"]
  rows = table("| batch size | 1 | 4 | 16 | 64 | 256 |")
  bindings = (("MLP, Dopri5", mlp["engine: Dopri5 1e-5, 1 Gaussian probe"]),
              ("MLP, expint3 12", mlp["expint3 12 steps, 1 Rademacher"]),
              ("U-Net, Dopri5", unet["engine: Dopri5 1e-5, 1 Gaussian probe"]),
              ("U-Net, expint3 27", fixed["expint3 27 steps, 1 Rademacher fresh per step"]))
  assert len(rows) == len(bindings)
  for label, measured in bindings:
    by_batch = {m["batch_size"]: m["image_classes_per_s"] for m in measured}
    for batch, cell in zip((1, 4, 16, 64, 256), row(rows, label)[1:]):
      if cell == "–":
        assert batch not in by_batch, f"{label}: batch {batch} measured but not printed"
      else:
        assert_cell(cell, by_batch[batch], f"throughput {label} batch {batch}")


# --- Training step, conversion, scoring throughput ---------------------------------------------

def test_train_throughput_table_equals_its_json():
  by_size = {r["resolution"]: r for r in results("train_throughput.json")["rows"]}
  rows = table("| size | PyTorch img/s |")
  assert len(rows) == len(by_size)
  for cells in rows:
    measured = by_size[int(numbers(cells[0])[0])]
    assert_cell(cells[1], measured["torch"]["images_per_s"], f"{cells[0]} torch")
    for cell, devices in zip(cells[2:], ("1", "2")):
      jax_row = measured["jax"][devices]
      assert_cell(cell, [jax_row["images_per_s"], jax_row["ratio_to_torch"]],
                  f"{cells[0]} jax {devices} devices")
    if "batch" in cells[0]:
      assert f"batch {measured['batch_size']}" in cells[0]


def test_convert_throughput_table_equals_its_json():
  by_workers = {r["workers"]: r for r in results("convert_throughput.json")["results"]}
  rows = table("| workers | decode img/s |")
  assert len(rows) == len(by_workers)
  for cells in rows:
    measured = by_workers[int(cells[0])]
    for cell, key in zip(cells[1:], ("decode_images_per_second", "end_to_end_images_per_second",
                                     "decode_cpu_seconds_per_image")):
      assert_cell(cell, measured[key], f"convert {cells[0]} workers {key}")


def test_convert_check_speed_prose_equals_its_json():
  measured = results("convert_check_speed.json")["results"]
  match = re.search(r"loaded machine\): ([\d.]+) s for `full_384`, ([\d.]+) s for `roi_384`", README)
  assert_printed(match.group(1), measured["full_384"]["check_seconds"], "check full_384")
  assert_printed(match.group(2), measured["roi_384"]["check_seconds"], "check roi_384")
  assert_printed(re.search(r"([\d.]+) s for the whole command", README).group(1),
                 measured["cli_check_full_384_seconds"], "check CLI")
  assert f"({measured['built']['images']:,} images" in README


def test_score_throughput_prose_equals_its_json():
  measured = results("score_throughput.json")["results"]

  def rate(devices, per_device_batch, decode_workers):
    [m] = [m for m in measured if (m["devices"], m["per_device_batch"], m["decode_workers"])
           == (devices, per_device_batch, decode_workers)]
    return m["images_per_s"]

  match = re.search(r"decode dominates: ([\d.]+) → ([\d.]+) img/s with one decode worker", README)
  assert_printed(match.group(1), rate(1, 1, 0), "score 1 device batch 1, no worker")
  assert_printed(match.group(2), rate(1, 1, 1), "score 1 device batch 1, one worker")
  match = re.search(r"batch 1\), ([\d.]+) → ([\d.]+) at batch 4", README)
  assert_printed(match.group(1), rate(1, 4, 0), "score batch 4, no worker")
  assert_printed(match.group(2), rate(1, 4, 1), "score batch 4, one worker")
  match = re.search(r"; ([\d.]+)–([\d.]+) img/s over 4 forced\s+devices", README)
  four = [m["images_per_s"] for m in measured if m["devices"] == 4]
  assert_printed(match.group(1), min(four), "score 4 devices, slowest")
  assert_printed(match.group(2), max(four), "score 4 devices, fastest")


# --- Experiments on digits ---------------------------------------------------------------------

def test_low_data_table_equals_its_json():
  data = results("low_data.json")
  rows = table("| setting (training images) | method |")
  assert len(rows) == 9
  for start, setting in zip((0, 3, 6), ("per_class_5", "per_class_50", "imbalance")):
    [run] = data["runs"][setting].values()      # one seed, as the README says
    assert f"({run['train_images']})" in rows[start][0]
    for cells, method in zip(rows[start:start + 3], ("ode", "bound", "cnn")):
      measured = run[method]
      what = f"low_data {setting} {method}"
      assert_cell(cells[2], measured["accuracy"], what + " accuracy")
      assert_cell(cells[3], measured["balanced_accuracy"], what + " balanced accuracy")
      assert_cell(cells[4], measured["auc"], what + " AUC")
      assert_cell(cells[5], min(measured["per_class_sensitivity"]), what + " lowest sensitivity")
      if method == "ode":
        flow = measured["flow_diagnostics"]
        assert_cell(cells[6], [flow["decision_agreement"], flow["centred_slope"]], what + " flow")
      else:
        assert cells[6] == ""
  # The command the section quotes is the one the JSON records.
  assert f"--steps {data['steps']} --max_examples {data['max_examples']} " \
         f"--num_probes {data['num_probes']}" in README


def test_seed_unet_digits_table_equals_its_json():
  data = results("seed_unet_digits.json")
  run = data["runs"]["seed"]
  rows = table("| seed U-Net, seed recipe, 2,000 steps |")
  bindings = (("exact ODE", run["ode"]), ("t ∈ [1e-5, 1]", run["bound"]),
              ("t ∈ [0.1, 1]", run["bound_t01"]), ("discriminative CNN", data["cnn"]))
  assert len(rows) == len(bindings)
  for label, measured in bindings:
    cells = row(rows, label)
    for cell, key in zip(cells[1:], ("accuracy", "balanced_accuracy", "auc", "bits_per_dim")):
      if cell != "–":
        assert_cell(cell, measured[key], f"seed_unet_digits {label} {key}")
  assert f"first {run['ode']['images']} test images" in README


def _flow_diagnostics_expected(ode: dict, bound_accuracy: float) -> tuple:
  flow = ode["flow_diagnostics"]
  return (flow["decision_agreement"], flow["centred_slope"], flow["centred_correlation"],
          flow["gap_true_class"], flow["gap_wrong_classes"], ode["accuracy"], bound_accuracy)


def test_flow_diagnostics_table_equals_its_json():
  rows = table("| model | agreement | slope |")
  seed = results("seed_unet_digits.json")["runs"]["seed"]
  demo = results("demo.json")
  bindings = (("seed U-Net", _flow_diagnostics_expected(seed["ode"], seed["bound"]["accuracy"])),
              ("digits MLP", _flow_diagnostics_expected(
                  demo["generative"], demo["generative_denoising"]["accuracy"])))
  assert len(rows) == len(bindings)
  for label, expected in bindings:
    cells = row(rows, label)
    assert len(cells) == 1 + len(expected)
    for cell, value in zip(cells[1:], expected):
      assert_cell(cell, value, f"flow diagnostics, {label}")
  # The prose under the table quotes the demo's noise-corrected slope and the bound's noise.
  prose = re.search(r"the demo's noise-corrected\s+slope is (\S+) \(`centred_slope_deming`"
                    r" in the same file; bound noise (\S+) nats\)", README)
  assert prose, "README: the sentence quoting the demo's centred_slope_deming is gone"
  flow = demo["generative"]["flow_diagnostics"]
  assert_printed(prose.group(1), flow["centred_slope_deming"], "demo Deming slope")
  assert_printed(prose.group(2), flow["bound_noise_std"], "demo bound noise")


def test_class_gaussian_ablation_table_equals_its_json():
  data = results("class_gaussian_ablation.json")
  rows = table("| model (digits test split) | ODE accuracy |")
  bindings = (("MLP alone", data["plain"], data["plain_denoising_bound"]),
              ("class Gaussians alone", data["gaussian_only"], None),
              ("MLP + class-Gaussian skip", data["skip"], data["skip_denoising_bound"]))
  assert len(rows) == len(bindings)
  for label, ode, bound in bindings:
    cells = row(rows, label)
    assert_cell(cells[1], ode["accuracy"], f"ablation {label} accuracy")
    assert_cell(cells[2], ode["auc"], f"ablation {label} AUC")
    assert_cell(cells[3], ode["bits_per_dim"], f"ablation {label} bits/dim")
    if bound is None:
      assert cells[4] == "–"
    else:
      assert_cell(cells[4], bound["accuracy"], f"ablation {label} bound accuracy")
    assert_cell(cells[5], ode["mean_nfe"], f"ablation {label} passes")


def test_sampler_quality_table_equals_its_json():
  data = results("sampler_quality_class_gaussian_skip.json")
  measured = data["rows"]

  def pick(sampler, steps=None, adaptive=False, rtol=None):
    found = [r for r in measured if r["sampler"] == sampler
             and bool(r.get("adaptive")) == adaptive
             and (steps is None or r.get("num_steps") == steps)
             and (rtol is None or r.get("rtol") == rtol)]
    assert len(found) == 1, (sampler, steps, adaptive, rtol)
    return found[0]

  rows = table("| sampler | passes per sample | score |")
  assert len(rows) == 5
  ode = [r for r in measured if r["sampler"] == "ode"]
  cells = row(rows, "ODE, rtol")
  assert_cell(cells[1], [min(r["mean_nfe"] for r in ode), max(r["mean_nfe"] for r in ode)],
              "sampler ODE passes")
  for r in ode:
    assert_cell(cells[2], r["score"], "sampler ODE score")
  for label, picked in (
      ("Euler–Maruyama", [pick("euler_maruyama", s) for s in (10, 50, 250)]),
      ("ShARK, 6", [pick("shark", s) for s in (6, 25, 125)]),
      ("ShARK adaptive", [pick("shark", adaptive=True, rtol=t) for t in (0.1, 0.01)]),
      ("predictor–corrector", [pick("pc", s) for s in (6, 13, 125)])):
    cells = row(rows, label)
    assert_cell(cells[1], [r["mean_nfe"] for r in picked], f"sampler {label} passes")
    assert_cell(cells[2], [r["score"] for r in picked], f"sampler {label} score")
  assert_printed(re.search(r"real test digits score ([\d.]+) with this", README).group(1),
                 data["baseline_test_accuracy"], "sampler baseline accuracy")
  assert_printed(re.search(r"prior noise ([\d.]+)\)", README).group(1),
                 data["prior_noise_score"], "sampler prior noise")
  assert f"{data['per_class'] * 10:,} samples per row" in README


def test_solver_bench_demo_table_equals_its_json():
  data = results(os.path.join("solver_bench_demo", "results.json"))
  by_name = {r["name"]: r for r in data["rows"]}
  rows = table("| setting | passes per (image, class) | seconds (16 × 10 solves) |")
  bindings = (
      ("Tsit5 1e-4", ["tsit5 tol 0.0001"]),
      ("Tsit5 1e-3", ["tsit5 tol 0.001"]),
      ("Heun, 32", ["heun 32 steps (quadratic)"]),
      ("expint3 8 / 16 / 27", [f"expint3 {n} steps (logsnr)" for n in (8, 16, 27)]),
      ("4 Rademacher", ["expint3 27, 4 rademacher"]),
      ("exact divergence", ["expint3 27, exact"]),
      ("denoising bound, 64", ["denoising 64 samples"]),
  )
  assert len(rows) == len(bindings)
  for label, names in bindings:
    cells = row(rows, label)
    picked = [by_name[n] for n in names]
    assert_cell(cells[1], [r["nfe"] for r in picked], f"solver bench {label} passes")
    assert_cell(cells[2], [r["seconds"] for r in picked], f"solver bench {label} seconds")
    dlogp = [r["mean_abs_dlogp"] for r in picked]
    if "bits/dim" in cells[3]:                  # nats, then the same in bits/dim
      dlogp.append(dlogp[0] / (data["dims"] * NAT_PER_BIT))
    assert_cell(cells[3], dlogp, f"solver bench {label} |Δ log p|")
    assert_cell(cells[4], [r["agreement"] for r in picked], f"solver bench {label} agreement")
  assert data["images"] == 16 and data["recommended"]["fast"] == "expint3 27, 4 rademacher"
  assert data["recommended"]["exact"] is None   # "no setting ... reached <= 0.01 bits/dim"


def test_demo_table_is_bound_to_a_results_file_or_says_it_is_not():
  """The demo's numbers come from `sgc-demo --results tools/results/demo.json` when it was run."""
  path = os.path.join(RESULTS, "demo.json")
  heading = [line for line in README.splitlines() if line.startswith("### The demo")]
  assert len(heading) == 1
  if not os.path.exists(path):
    assert "not bound to a results file" in README.split("### The demo")[1].split("###")[0].lower()
    pytest.skip("no tools/results/demo.json: the demo table is marked as not bound")
  report = results("demo.json")
  rows = table("| metric (test split) |")
  columns = (report["generative"], report["generative_denoising"], report["discriminative"])

  def cells(label):
    return row(rows, label)[1:]

  for label, key in (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
                     ("AUC", "auc"), ("F1", "f1"), ("NLL", "nll")):
    found = [r for r in rows if r[0].split(" (")[0] == label or r[0] == label]
    assert len(found) == 1, label
    for cell, column in zip(found[0][1:], columns):
      assert_cell(cell, column[key], f"demo {label}")
  for cell, column in zip(cells("ECE before"), columns):
    assert_cell(cell, [column["ece_uncalibrated"], column["ece"]], "demo ECE")
  for cell, column in zip(cells("bits/dim")[:2], columns):
    assert_cell(cell, column["bits_per_dim"], "demo bits/dim")
  for cell, column in zip(cells("network passes")[:2], columns):
    assert_printed(numbers(cell)[0], column["mean_nfe"], "demo passes")
  for cell, column in zip(cells("scoring time")[:2], columns):
    assert_cell(cell, column["seconds"], "demo scoring seconds")
  whole = re.search(r"The whole demo, building the records included: \*\*(\S+) s\*\*", README)
  assert whole, "README: the demo's total time is gone"
  assert_printed(whole.group(1), report["seconds"], "demo seconds")
  flow = report["generative"]["flow_diagnostics"]
  assert_cell(cells("flow diagnostics")[0], [flow["decision_agreement"], flow["centred_slope"],
                                             flow["centred_correlation"]], "demo flow")
  assert_cell(cells("sample quality")[0], [report["generative"]["sample_quality_ode"],
                                           report["generative"]["sample_quality_euler_maruyama"]],
              "demo sample quality")


# --- Recipe levers (tools/recipe_levers.py) and the three-seed low-data study -------------------

def test_recipe_levers_table_equals_its_json():
  data = results("recipe_levers.json")
  rows = table("| lever (one change from the row it names) | variant |")
  assert rows
  for cells in rows:
    [variant] = re.findall(r"`([a-z0-9_]+)`", cells[1])
    run = data[variant]
    what = f"recipe_levers {variant}"
    assert_cell(cells[2], [run["training"]["num_steps"], run["training"]["batch_size"],
                           run["train_seconds"]], what + " training")
    assert_cell(cells[3], run["ode"]["accuracy"], what + " accuracy")
    assert_cell(cells[4], run["ode"]["balanced_accuracy"], what + " balanced accuracy")
    assert run["ode"]["images"] == 360   # the whole test split
    # The host mark: none for the earlier host (rows without `machine`), † for the AVX2 EPYC,
    # ‡ for the AVX-512 Xeon, § for the AVX-512 EPYC.
    machine = run.get("machine")
    mark = "" if machine is None else {
        ("EPYC", "avx2"): "†", ("Xeon", "avx512f"): "‡", ("EPYC", "avx512f"): "§"}[
            ("EPYC" if "EPYC" in machine["cpu"] else "Xeon", machine["vector_extension"])]
    assert "".join(c for c in cells[2] if c in "†‡§") == mark, what + " host mark"


def test_recipe_levers_fit_check_equals_its_json():
  fit = results("recipe_levers.json")["ema_cosine_28k_range11_fit"]["ode_fit"]
  text = " ".join(README.split())
  match = re.search(r"classifies the first (\d+) images it trained on at \*\*([\d.]+)\*\*, the "
                    r"(\d+) images of the train split it held out for calibration at \*\*([\d.]+)"
                    r"\*\*.*? log-likelihood of ([\d.]+) nats per dimension against ([\d.]+)", text)
  assert match, "the fit check's sentence"
  train, validation = fit["train"], fit["validation"]
  assert [int(match[1]), int(match[3])] == [train["images"], validation["images"]]
  assert_cell(match[2], train["accuracy"], "fit train accuracy")
  assert_cell(match[4], validation["accuracy"], "fit validation accuracy")
  assert_cell(match[5], -train["nats_per_dim_true_class"], "fit train nats")
  assert_cell(match[6], -validation["nats_per_dim_true_class"], "fit validation nats")


def test_recipe_levers_probe_and_ema_prose_equals_its_json():
  data = results("recipe_levers.json")
  text = " ".join(README.split())
  match = re.search(r"for 2\.5× the scoring time \(([\d.]+) s against ([\d.]+) s for the split\)",
                    text)
  assert match, "the probes bullet's scoring times"
  four, one = (data[name]["ode"]["seconds"] for name in (
      "ema9995_cosine_28k_range11_4probes", "ema9995_cosine_28k_range11"))
  assert_cell(match[1], four, "4-probe seconds")
  assert_cell(match[2], one, "1-probe seconds")
  assert round(four / one, 1) == 2.5
  match = re.search(r"On the (\d+) held-out train images both classify ([\d.]+) \(the fit", text)
  assert match, "the EMA bullet's held-out accuracy"
  for name in ("ema_cosine_28k_range11_fit", "ema9995_cosine_28k_range11_fit"):
    validation = data[name]["ode_fit"]["validation"]
    assert validation["images"] == int(match[1])
    assert_cell(match[2], validation["accuracy"], name + " validation accuracy")


def test_recipe_levers_group_norm_prose_equals_its_json(recipe_levers):
  data = results("recipe_levers.json")
  text = README_ONE_LINE
  match = re.search(r"the same 28,000 steps classify \*\*([\d.]+)\*\* with one probe and "
                    r"\*\*([\d.]+)\*\* with 4 \(`gn_cosine_28k_range11`\), against ([\d.]+) and "
                    r"([\d.]+) for the BatchNorm recipe's EPYC retrain and ([\d.]+) and ([\d.]+) for "
                    r"the EMA-0\.9995 model; a second seed classifies ([\d.]+) and \*\*([\d.]+)\*\*",
                    text)
  assert match, "the GroupNorm bullet's accuracies"
  for printed, name in zip(match.groups(), (
      "gn_cosine_28k_range11", "gn_cosine_28k_range11_4probes", "ema_cosine_28k_range11_fit",
      "ema_cosine_28k_range11_refit_4probes", "ema9995_cosine_28k_range11",
      "ema9995_cosine_28k_range11_4probes", "gn_cosine_28k_range11_seed1",
      "gn_cosine_28k_range11_seed1_4probes")):
    assert_printed(printed, data[name]["ode"]["accuracy"], name)
  assert recipe_levers.seed_of(data["gn_cosine_28k_range11_seed1"]) == 1
  match = re.search(r"the spread between trainings \(([\d.]+)–([\d.]+) with GroupNorm, one probe or "
                    r"four; ([\d.]+)–([\d.]+) over the three trainings of the BatchNorm recipe, on "
                    r"three hosts\)", text)
  assert match, "the GroupNorm bullet's spreads"
  # The two GroupNorm trainings, each scored with one probe and four (and the fit check's copy
  # of the first): the rows that start the ODE elsewhere or dequantize more are later bullets'.
  group = [data[name]["ode"]["accuracy"] for name in data
           if name.startswith("gn_cosine_28k") and data[name]["eval"]["eps"] == 1e-5
           and data[name]["eval"].get("num_dequantizations", 1) == 1]
  assert len(group) == 5
  batch = {name: data[name] for name in ("ema_cosine_28k_range11", "ema_cosine_28k_range11_fit",
                                         "ema_cosine_28k_range11_4probes")}
  assert len({json.dumps(run.get("machine")) for run in batch.values()}) == 3   # three hosts
  batch_accuracies = [run["ode"]["accuracy"] for run in batch.values()]
  for printed, value in zip(match.groups(), (min(group), max(group), min(batch_accuracies),
                                             max(batch_accuracies))):
    assert_printed(printed, value, "training spread")
  match = re.search(r"On the (\d+) held-out train images it classifies ([\d.]+) \((\d+) images\), "
                    r"the two BatchNorm models ([\d.]+) \((\d+)\)", text)
  assert match, "the GroupNorm bullet's held-out accuracies"
  gn = data["gn_cosine_28k_range11_fit"]["ode_fit"]
  assert int(match[1]) == gn["validation"]["images"]
  assert_printed(match[2], gn["validation"]["accuracy"], "GroupNorm validation accuracy")
  assert int(match[3]) == round(gn["validation"]["accuracy"] * gn["validation"]["images"])
  for name in ("ema_cosine_28k_range11_fit", "ema9995_cosine_28k_range11_fit"):
    validation = data[name]["ode_fit"]["validation"]
    assert_printed(match[4], validation["accuracy"], name + " validation accuracy")
    assert int(match[5]) == round(validation["accuracy"] * validation["images"])
  match = re.search(r"a log-likelihood of ([\d.]+) nats per dimension on its first (\d+) training "
                    r"images and ([\d.]+) on the held-out ones, against ([\d.]+) and ([\d.]+) with "
                    r"BatchNorm", text)
  assert match, "the GroupNorm bullet's log-likelihoods"
  bn = data["ema_cosine_28k_range11_fit"]["ode_fit"]
  assert int(match[2]) == gn["train"]["images"]
  for printed, value in zip((match[1], match[3], match[4], match[5]), (
      gn["train"], gn["validation"], bn["train"], bn["validation"])):
    assert_printed(printed, -value["nats_per_dim_true_class"], "nats per dimension")
  speed = results("step_speed.json")
  match = re.search(r"Its step is about a tenth slower than BatchNorm's: ([\d.]+) against ([\d.]+) "
                    r"steps/s \(the medians of two rounds; each round GroupNorm's was ([\d.]+)–([\d.]+)× "
                    r"BatchNorm's\).*? two alternating rounds of ([\d,]+) steps", text)
  assert match, "the GroupNorm bullet's step speeds"
  assert_printed(match[1], speed["variants"]["gn_cosine_28k_range11"]["steps_per_s"], "GroupNorm")
  assert_printed(match[2], speed["variants"]["ema_cosine_28k_range11"]["steps_per_s"], "BatchNorm")
  ratios = [g["steps_per_s"] / b["steps_per_s"] for g, b in zip(
      speed["variants"]["gn_cosine_28k_range11"]["rounds"],
      speed["variants"]["ema_cosine_28k_range11"]["rounds"])]
  assert_printed(match[3], min(ratios), "slowest round's ratio")
  assert_printed(match[4], max(ratios), "fastest round's ratio")
  assert (speed["repeats"], speed["steps"]) == (2, int(match[5].replace(",", "")))
  assert speed["variants"]["gn_cosine_28k_range11"]["model"]["unet"]["norm"] == "group"
  assert speed["variants"]["ema_cosine_28k_range11"]["model"]["unet"]["norm"] == "batch"
  match = re.search(r"ran the default's step at (\d+) steps/s, not the (\d+) of 2026-12-03's last "
                    r"session \(([\d,]+) s for 28,000\), so its ([\d,]+) s for the GroupNorm run", text)
  assert match, "the GroupNorm bullet's hosts"
  assert_printed(match[1], speed["variants"]["ema_cosine_28k_range11"]["steps_per_s"], "host speed")
  retrain = data["ema_cosine_28k_range11_fit"]["train_seconds"]
  assert_printed(match[2], 28000 / retrain, "the earlier host's speed")
  assert_printed(match[3], retrain, "the earlier host's seconds")
  assert_printed(match[4], data["gn_cosine_28k_range11"]["train_seconds"], "GroupNorm seconds")


_LOW_DATA_TABLES = [("low_data_seeds.json", "mlp", "MLP, 8×8"),
                    ("low_data_seeds.json", "unet", "seed U-Net, 16×16"),
                    ("low_data_seeds_wd02_depth4.json", "mlp",
                     "MLP, 4 blocks, weight decay 0.2, 6,000 steps, 8×8"),
                    ("low_data_seeds_wd02_depth4_12k.json", "mlp",
                     "MLP, final recipe: 4 blocks, weight decay 0.2, 12,000 steps, 8×8")]


def test_demo_recipe_over_seeds_equals_its_json(recipe_levers):
  """The demo's prose quotes the recipe's mean and sd over seeds, with and without weight decay."""
  data = results("recipe_levers.json")
  quoted = re.search(r"\*\*(\S+) ± (\S+) in 12,000 steps, (\S+) ± (\S+) in 9,000 and (\S+) ± "
                     r"(\S+) in 6,000 with 4 blocks and weight decay 0.2,\s+(\S+) ± (\S+) "
                     r"with 3 blocks and (\S+) ± (\S+) with 3 blocks and no weight decay\*\*",
                     README_ONE_LINE)
  assert quoted, "README: the demo's over-seeds sentence is gone"
  groups = quoted.groups()
  prefixes = ("mlp_12k_wd02_deep", "mlp_9k_wd02_deep", "mlp_6k_wd02_deep", "mlp_6k_wd02",
              "mlp_6k")
  for (mean, sd), prefix in zip(zip(groups[0::2], groups[1::2]), prefixes):
    runs = [data[prefix + suffix] for suffix in ("", "_seed1", "_seed2")]
    assert [recipe_levers.seed_of(run) for run in runs] == [0, 1, 2]
    accuracies = [run["ode"]["accuracy"] for run in runs]
    assert_printed(mean, float(np.mean(accuracies)), prefix + " mean over seeds")
    assert_printed(sd, float(np.std(accuracies, ddof=1)), prefix + " sd over seeds")


@pytest.mark.parametrize("path,model,header", _LOW_DATA_TABLES)
def test_low_data_seeds_table_equals_its_json(path, model, header):
  study = results(path)[model]
  rows = table(f"| low-data setting ({header}) | training images, steps | seeds |")
  assert rows
  for cells in rows:
    setting = re.findall(r"`([a-z0-9_]+)`", cells[0])[0]
    summary = study["table"][setting]
    what = f"low_data_seeds {setting}"
    assert_cell(cells[1], [summary["train_images"], summary["train_steps"]], what + " training")
    assert_cell(cells[2], len(summary["seeds"]), what + " seeds")
    for cell, method in zip(cells[3:7], ("ode", "bound", "cnn", "cnn_balanced")):
      assert_cell(cell, summary[f"{method}_balanced_accuracy"], f"{what} {method}")


# --- The training step per layer (tools/train_throughput.py --layers) -------------------------

def test_per_layer_tables_equal_their_json():
  data = results("train_throughput_layers.json")["resolutions"]
  rows = table("| size | convolutions | forward | input gradient | weight gradient |")
  assert len(rows) == 10
  for cells in rows:
    size = cells[0].rstrip("²")
    [variant] = re.findall(r"`([a-z0-9_]+)`", cells[1])
    sums = data[size]["sums_s"][variant]
    for cell, phase in zip(cells[2:], ("forward", "input_grad", "weight_grad", "training_total")):
      values = [sums[phase] * 1000]
      if variant != "torch":
        values.append(data[size]["ratio_to_torch"][variant]["sums"][phase])
      assert_cell(cell, values, f"per-layer {size} {variant} {phase}")
  steps = table("| size (whole step) | PyTorch img/s | JAX as shipped, 1 / 2 devices |")
  assert len(steps) == 2
  for cells in steps:
    step = data[cells[0].rstrip("²")]["whole_step"]
    assert_cell(cells[1], step["torch"]["images_per_s"], "whole step torch")
    for cell, variant in zip(cells[2:], ("default", "eigen_conv")):
      assert_cell(cell, [step[variant][d]["images_per_s"] for d in ("1", "2")],
                  f"whole step {variant}")


# --- Out-of-distribution power (tools/ood_power.py) ---------------------------------------------

_OOD_SCORES = ("bits/dim high", "two-sided", "complexity")    # tools/ood_power.py's SCORES
_OOD_FLAGS = ("low_bits", "high_bits", "complexity", "any")   # model_calibration.OOD_TESTS, any


def test_ood_power_table_equals_its_json():
  """Every row: the medians (in: OOD), each score's AUROC and FPR95, the four flag rates, counts."""
  data = results("ood_power.json")
  runs = {f"digits, {k}": v["sets"] for k, v in data["digits"]["by_setting"].items()}
  runs[f"mammography, {data['mammography']['setting']}"] = data["mammography"]["sets"]
  header = ("| model, setting | OOD set (images) | median bits/dim (in: OOD) | "
            + " | ".join(f"{s}: AUROC, FPR95" for s in _OOD_SCORES)
            + " | flagged: low, high, complexity, any |")
  assert header in README.splitlines()        # the columns in the order bound below
  printed = set()
  for cells in table(header):
    assert len(cells) == 7, cells
    match = re.fullmatch(r"(\*?)([^*(]+?)\1 \((.+)\)", cells[1])   # "*name*" is the in-set
    assert match, cells[1]
    sets, name = runs[cells[0]], match.group(2)
    in_name = next(iter(sets))                  # the tool writes the in-distribution set first
    assert name in sets and (name == in_name) == bool(match.group(1)), cells[:2]
    assert (cells[0], name) not in printed, f"{cells[0]} {name} printed twice"
    printed.add((cells[0], name))
    measured = sets[name]
    what = f"ood_power {cells[0]} {name}"
    assert_cell(match.group(3), measured["images"], what + " images")
    if name == in_name:
      assert match.group(3).endswith(", in distribution") and cells[3:6] == ["", "", ""]
      assert_cell(cells[2], measured["median_bits_per_dim"], what + " median bits/dim")
    else:
      assert_cell(cells[2], [sets[in_name]["median_bits_per_dim"],
                             measured["median_bits_per_dim"]], what + " median bits/dim")
      for cell, score in zip(cells[3:6], _OOD_SCORES):
        assert_cell(cell, [measured[score]["auroc"], measured[score]["fpr_at_95_tpr"]],
                    f"{what} {score}")
    assert_cell(cells[6], [measured["flagged"][test] for test in _OOD_FLAGS], what + " flagged")
  missing = {(label, name) for label, sets in runs.items() for name in sets} - printed
  assert not missing, f"README: no row for the JSON's {sorted(missing)}"


# Tables that quote no measurement: what a workdir holds.
_UNMEASURED_TABLES = ("| file | content |",)


def test_every_readme_table_is_bound_by_a_test_here():
  """A table added to the README without a binding test above fails here, naming it."""
  with open(__file__, encoding="utf-8") as f:
    source = f.read()
  # Every header a test here reads, whether passed to table() or through a parametrisation.
  headers = set(re.findall(r'"(\| [^"]*)"', source))
  headers = {h.replace("{header}", name) for h in headers for _, _, name in _LOW_DATA_TABLES}
  lines = README.splitlines()
  unbound = [line for previous, line in zip([""] + lines, lines)
             if line.startswith("|") and not previous.startswith("|")
             and not any(line.startswith(h) for h in (*headers, *_UNMEASURED_TABLES))]
  assert not unbound, f"README tables no test binds to their JSON: {unbound}"


def test_mutation_sentence_equals_its_json():
  """"all nine caught (rerun at commit X" is tools/results/mutation_check.json's summary."""
  data = results("mutation_check.json")
  quoted = re.search(r"all (\w+) caught \(rerun at commit ([0-9a-f]{7})", README_ONE_LINE)
  assert quoted, "README: the mutation check's sentence is gone"
  words = {"nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
  summary = data["summary"]
  assert len(summary["caught"]) == words[quoted.group(1)] == len(data["mutations"])
  assert summary["missed"] == summary["not_applied"] == summary["error"] == []
  assert data["commit"].startswith(quoted.group(2))


def test_recipe_levers_ode_start_prose_equals_its_json():
  data = results("recipe_levers.json")
  match = re.search(r"classify: eps = 1e-6 \*\*([\d.]+)\*\* / \*\*([\d.]+)\*\*, 1e-5 \(the recipe\) "
                    r"([\d.]+) / ([\d.]+), 1e-4 \*\*([\d.]+)\*\* / \*\*([\d.]+)\*\*, 1e-3 \*\*([\d.]+)\*\* "
                    r"/ \*\*([\d.]+)\*\*, 3e-3 \*\*([\d.]+)\*\* / \*\*([\d.]+)\*\*", README_ONE_LINE)
  assert match, "the ODE start bullet's accuracies"
  printed = iter(match.groups())
  for eps, tag in ((1e-6, "_eps1e6"), (1e-5, ""), (1e-4, "_eps1e4"), (1e-3, "_eps1e3"),
                   (3e-3, "_eps3e3")):
    for seed, trained in ((0, "gn_cosine_28k_range11"), (1, "gn_cosine_28k_range11_seed1")):
      run = data[trained + tag]
      assert run["trained_as"] == trained and run["seed"] == seed
      assert run["eval"]["eps"] == eps and run["eval"]["num_probes"] == 1
      assert_printed(next(printed), run["ode"]["accuracy"], trained + tag)


def test_recipe_levers_dequantizations_prose_equals_its_json():
  data = results("recipe_levers.json")
  match = re.search(r"classifies \*\*([\d.]+)\*\* on the first seed's model and \*\*([\d.]+)\*\* on "
                    r"the second's, against ([\d.]+) and ([\d.]+) with 4 probes on one dequantization "
                    r"and ([\d.]+) and ([\d.]+) with one probe .*? The two trainings average "
                    r"\*\*([\d.]+)\*\*, over the 0\.97 target; with 4 probes they average ([\d.]+)\. "
                    r"The price is scoring time: (\d+) s for the split against (\d+) s with 4 probes "
                    r"and (\d+) s with one .*? the second model's (\d+) s", README_ONE_LINE)
  assert match, "the dequantizations bullet"
  names = [f"gn_cosine_28k_range11{seed}{tag}" for tag in ("_4deq", "_4probes", "")
           for seed in ("", "_seed1")]
  for printed, name in zip(match.groups()[:6], names):
    assert_printed(printed, data[name]["ode"]["accuracy"], name)
  for name in names[:2]:
    assert data[name]["eval"]["num_dequantizations"] == 4 and data[name]["eval"]["num_probes"] == 1
  deq = [data[name]["ode"]["accuracy"] for name in names[:2]]
  probes = [data[name]["ode"]["accuracy"] for name in names[2:4]]
  assert_printed(match[7], np.mean(deq), "mean over the two trainings, 4 dequantizations")
  assert np.mean(deq) >= 0.97
  assert_printed(match[8], np.mean(probes), "mean over the two trainings, 4 probes")
  for printed, name in zip((match[9], match[10], match[11], match[12]),
                           (names[0], names[2], names[4], names[1])):
    assert_printed(printed, data[name]["ode"]["seconds"], name + " scoring seconds")
