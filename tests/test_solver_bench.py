"""sgc_jax.solver_bench: the grid against a reference, the Pareto front, the written report."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import solver_grid
from gaussian_fixtures import GaussianClasses
from sgc_jax import solver_bench
from sgc_jax import sde as sde_lib


def tiny_grid():
  grid = solver_grid.get_config()
  grid.repeats = 1
  grid.reference.tol = 1e-6
  grid.adaptive = ml_collections.ConfigDict({"solvers": ("tsit5",), "tols": (1e-3,)})
  # One Euler step: deliberately wrong.
  grid.fixed = ml_collections.ConfigDict({"solvers": ("euler",), "steps": (1,),
                                          "grid": "quadratic"})
  grid.expint = ml_collections.ConfigDict({"solvers": ("expint1", "expint2"), "steps": (1, 48),
                                           "grid": "logsnr"})
  grid.probes = ml_collections.ConfigDict({"base_solver": "expint2", "base_steps": 48,
                                           "grid": "logsnr", "kinds": ("gaussian",),
                                           "counts": (1,), "resample": (False, True)})
  grid.denoising = ml_collections.ConfigDict({"samples": (8,)})
  grid.batch_sizes = (1, 2)
  return grid


@pytest.fixture(scope="module")
def gaussian_report():
  sde = sde_lib.VPSDE()
  means = jnp.stack([jnp.full((2, 2, 1), -0.5), jnp.full((2, 2, 1), 0.5)])
  classes = GaussianClasses(sde, means, 0.4)
  y = jnp.array([0, 1, 1, 0, 1, 0])
  x = means[y] + 0.4 * jax.random.normal(jax.random.PRNGKey(0), (6, 2, 2, 1))
  keys = jax.random.split(jax.random.PRNGKey(1), 6)
  report = solver_bench.run_grid(classes.score, sde, x, np.asarray(y), 2, tiny_grid(), keys=keys,
                                 log=lambda _: None)
  return report


def test_grid_rows_and_reference_against_itself(gaussian_report):
  names = [r["name"] for r in gaussian_report["rows"]]
  assert len(names) == len(solver_bench.settings(tiny_grid())) == 9
  assert gaussian_report["reference"].startswith("tsit5") and "exact" in gaussian_report["reference"]
  ref = gaussian_report["reference_metrics"]
  assert ref["mean_abs_dlogp"] == 0.0 and ref["agreement"] == 1.0
  rows = {r["name"]: r for r in gaussian_report["rows"]}
  # A converged setting is close to the reference and agrees on every decision.
  good = rows["expint2 48 steps (logsnr)"]
  assert good["mean_abs_dbpd"] < 0.05 and good["agreement"] == 1.0
  assert good["nfe"] == 48.0


def test_one_euler_step_is_off_the_pareto_front(gaussian_report):
  rows = {r["name"]: r for r in gaussian_report["rows"]}
  euler = rows["euler 1 steps (quadratic)"]
  assert euler["mean_abs_dbpd"] > 1.0          # bits/dim off: deliberately wrong
  # One exponential-Euler step costs one evaluation (Euler's count is 2) and
  # decides at least as well: Euler is dominated on decisions against cost.
  assert rows["expint1 1 steps (logsnr)"]["agreement"] >= euler["agreement"]
  assert "euler 1 steps (quadratic)" not in gaussian_report["pareto_decisions"]


def test_pareto_front_and_recommendations_on_hand_made_rows():
  rows = [dict(name="a", seconds=1.0, mean_abs_dbpd=0.5, agreement=0.9, failed=0),
          dict(name="b", seconds=2.0, mean_abs_dbpd=0.005, agreement=1.0, failed=0),
          dict(name="c", seconds=3.0, mean_abs_dbpd=0.01, agreement=1.0, failed=0),  # dominated
          dict(name="d", seconds=1.5, mean_abs_dbpd=0.02, agreement=0.995, failed=0)]
  assert [rows[i]["name"] for i in solver_bench.pareto_front(rows)] == ["a", "d", "b"]
  grid = solver_grid.get_config()
  assert solver_bench.recommend(rows, grid) == {"exact": "b", "fast": "d"}


def test_bench_end_to_end_on_a_tiny_trained_model(trained_tiny_digits, tmp_path):
  workdir = trained_tiny_digits[1]              # read only: the bench writes to `out`
  grid = tiny_grid()
  # Two settings keep it quick: the Gaussian report above covers the families.
  grid.adaptive.solvers = grid.fixed.solvers = grid.probes.kinds = ()
  grid.expint.solvers, grid.expint.steps = ("expint2",), (4,)
  grid.denoising.samples = (4,)
  # A fixed-cost reference: an adaptive float64 solve of 64-dim digits takes ~1000 steps.
  grid.reference.solver, grid.reference.steps = "expint3", 32
  out = str(tmp_path / "bench")
  report = solver_bench.bench(workdir, grid, output=out, num_images=3, log=lambda _: None)
  for name in ("results.json", "results.csv", "work_precision.png", "agreement_vs_nfe.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    written = json.load(f)
  assert written["images"] == 3 and written["classes"] == 10
  assert set(written["recommended"]) == {"exact", "fast"}
  for curve in report["throughput"].values():
    assert [p["batch_size"] for p in curve] == [1, 2]
    assert all(p["image_classes_per_s"] > 0 for p in curve)
