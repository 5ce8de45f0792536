"""The one place that builds Diffrax solvers, step-size controllers and time grids.

Everything that depends on Diffrax's solver and controller API lives here, so a
Diffrax upgrade touches one file.
"""
from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

SOLVERS = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
}

TIME_GRIDS = ("uniform", "quadratic", "log")


def get_solver(name: str) -> diffrax.AbstractSolver:
  """A Diffrax ODE solver by name (see `SOLVERS`)."""
  try:
    return SOLVERS[name.lower()]()
  except KeyError:
    raise ValueError(f"solver: unknown ODE solver {name!r}; choose one of {sorted(SOLVERS)}") from None


def is_adaptive(solver: diffrax.AbstractSolver) -> bool:
  """Whether the solver carries an embedded error estimate (can use a PID controller)."""
  return isinstance(solver, diffrax.AbstractAdaptiveSolver) and not isinstance(
      solver, (diffrax.Euler,))


def evaluations_per_step(solver: diffrax.AbstractSolver) -> int:
  """Vector-field evaluations one step costs (first-same-as-last stages reused)."""
  tableau = getattr(solver, "tableau", None)
  if tableau is None:
    return 1
  num_stages = len(tableau.c) + 1
  return num_stages - (1 if tableau.fsal else 0)


def time_grid(eps: float, T: float, num_steps: int, kind: str = "quadratic") -> np.ndarray:
  """`num_steps + 1` times from eps to T, dense near eps where the flow is stiff.

  "uniform" is evenly spaced; "quadratic" spaces sqrt(t - eps) evenly; "log"
  spaces log t evenly (densest near eps).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps: must be >= 1, got {num_steps}")
  u = np.linspace(0.0, 1.0, num_steps + 1)
  if kind == "uniform":
    ts = eps + (T - eps) * u
  elif kind == "quadratic":
    ts = eps + (T - eps) * u**2
  elif kind == "log":
    ts = np.exp(np.log(eps) + (np.log(T) - np.log(eps)) * u)
  else:
    raise ValueError(f"time_grid: unknown kind {kind!r}; choose one of {TIME_GRIDS}")
  ts[0], ts[-1] = eps, T
  return ts


def make_controller(solver: diffrax.AbstractSolver, *, adaptive: bool, rtol: float,
                    atol: float, eps: float, T: float, num_steps: int, grid: str,
                    dtype=jnp.float32):
  """Returns (stepsize_controller, dt0) for `diffeqsolve`.

  Adaptive solves use a PID controller with the solver's own error estimate and
  let Diffrax choose the first step; fixed-step solves step exactly through a
  grid that is dense near eps (a uniform grid is off by bits/dim there).
  """
  if adaptive:
    if not is_adaptive(solver):
      raise ValueError(f"solver: {type(solver).__name__} has no error estimate; "
                       "use a fixed-step grid (adaptive=False) or an adaptive solver")
    return diffrax.PIDController(rtol=rtol, atol=atol), None
  ts = jnp.asarray(time_grid(eps, T, num_steps, grid), dtype=dtype)
  return diffrax.StepTo(ts=ts), None


def solve(vector_field, solver, y0, *, t0: float, t1: float, controller, dt0, max_steps: int):
  """Integrates dy/dt = vector_field(t, y, None) from t0 to t1 without raising.

  Returns (y1, success, num_steps). A failed solve (max_steps reached,
  non-finite values) is reported in `success`, never raised, so one bad image
  cannot abort a batch.
  """
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), solver, t0=t0, t1=t1, dt0=dt0, y0=y0,
      stepsize_controller=controller, max_steps=max_steps, throw=False,
      saveat=diffrax.SaveAt(t1=True))
  # SaveAt(t1=True) stores a leading axis of length 1.
  y1 = jax.tree.map(lambda a: a[-1], sol.ys)
  success = sol.result == diffrax.RESULTS.successful
  return y1, success, sol.stats["num_steps"]

