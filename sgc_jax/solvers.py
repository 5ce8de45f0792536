"""The one place that builds Diffrax solvers, step-size controllers and time grids.

Everything that depends on Diffrax's solver and controller API lives here, so a
Diffrax upgrade touches one file.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import diffrax
import jax
import jax.numpy as jnp
import lineax
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


# --- Reverse-time SDEs (sampling) ---------------------------------------------
# Itô and Stratonovich solutions agree for additive noise g(t) dw, so every
# solver here converges to the same SDE.
SDE_SOLVERS = {
    "euler_maruyama": diffrax.Euler,   # strong order 0.5, fixed steps only
    "heun": diffrax.Heun,              # strong order 1 for additive noise, adaptive
    "sra1": diffrax.SRA1,              # Rößler's additive-noise SRK, strong order 1.5, adaptive
    "shark": diffrax.ShARK,            # Foster et al.'s additive-noise SRK, order 1.5, adaptive
}
# Drift evaluations per step (the diffusion g(t) costs no network pass).
_SDE_EVALUATIONS = {"euler_maruyama": 1, "heun": 2, "sra1": 2, "shark": 2}


def get_sde_solver(name: str) -> diffrax.AbstractSolver:
  """A Diffrax SDE solver by name (see `SDE_SOLVERS`)."""
  try:
    return SDE_SOLVERS[name.lower()]()
  except KeyError:
    raise ValueError(f"solver: unknown SDE solver {name!r}; choose one of "
                     f"{sorted(SDE_SOLVERS)}") from None


def sde_evaluations_per_step(name: str) -> int:
  """Drift (network) evaluations one step of the named SDE solver costs."""
  return _SDE_EVALUATIONS[name.lower()]


def sde_is_adaptive(name: str) -> bool:
  """Whether the named SDE solver has an embedded error estimate (Euler–Maruyama has none)."""
  return name.lower() != "euler_maruyama"


# The finest time a Brownian tree resolves, as a fraction of its interval: each
# query descends log2(1 / resolution) levels, so finer costs time at every step.
_BROWNIAN_RESOLUTION = 2.0**-12


def brownian_motion(key, solver, shape, dtype, *, t0: float, t1: float):
  """A `VirtualBrownianTree` on [t0, t1] with the Lévy area `solver` needs.

  The path is a function of `key` and [t0, t1] alone: every step size, fixed or
  adaptive, and every sub-interval solved queries the same Brownian path. That
  makes a sample independent of its batch-mates and lets step counts be
  compared path by path. The tree resolves `_BROWNIAN_RESOLUTION` of the
  interval; `solve_sde` takes no smaller step, so the increments of
  neighbouring steps stay jointly exact.
  """
  levy_area = (diffrax.SpaceTimeLevyArea if isinstance(solver, diffrax.AbstractSRK)
               else diffrax.BrownianIncrement)
  return diffrax.VirtualBrownianTree(t0, t1, tol=(t1 - t0) * _BROWNIAN_RESOLUTION,
                                     shape=jax.ShapeDtypeStruct(shape, dtype), key=key,
                                     levy_area=levy_area)


class LangevinCorrected(diffrax.AbstractItoSolver):
  """Predictor-corrector: `corrector(t, y, dt, key)` before each Euler–Maruyama step.

  The corrector (a Langevin MCMC step towards the marginal at t) is not part
  of the SDE, so the solver has no error estimate: fixed steps only. Its
  random numbers come from `key`, split once per step.
  """

  corrector: Callable
  key: jax.Array
  term_structure: ClassVar = diffrax.AbstractTerm
  interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

  def order(self, terms):
    return 1

  def strong_order(self, terms):
    return 0.5

  def init(self, terms, t0, t1, y0, args):
    return self.key

  def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
    del made_jump
    key, corrector_key = jax.random.split(solver_state)
    y = self.corrector(t0, y0, t1 - t0, corrector_key)
    y1 = y + terms.vf_prod(t0, y, args, terms.contr(t0, t1))
    return y1, None, dict(y0=y0, y1=y1), key, diffrax.RESULTS.successful

  def func(self, terms, t0, y0, args):
    return terms.vf(t0, y0, args)


def solve_sde(drift, diffusion, solver, y0, *, brownian, t0: float, t1: float, num_steps: int,
              adaptive: bool, rtol: float, atol: float, max_steps: int):
  """Integrates dy = drift(t, y) dt + diffusion(t) dw from t0 to t1 > t0.

  `diffusion(t)` is a scalar g(t) that multiplies every entry's noise
  (additive noise); `brownian` is the path w (see `brownian_motion`; it may
  span more than [t0, t1]). Fixed steps are `num_steps` equal steps; adaptive
  solves use a PID controller on the solver's error estimate and start from
  that step size.

  Returns (y1, success, number of steps taken, rejected ones included); a
  failed solve is reported in `success`, never raised.
  """
  if adaptive and isinstance(solver, (diffrax.Euler, LangevinCorrected)):
    raise ValueError(f"solver: {type(solver).__name__} has no error estimate; "
                     "use fixed steps (adaptive=False)")
  terms = diffrax.MultiTerm(
      diffrax.ODETerm(lambda t, y, args: drift(t, y)),
      diffrax.ControlTerm(
          lambda t, y, args: lineax.DiagonalLinearOperator(jnp.full_like(y, diffusion(t))),
          brownian))
  # An adaptive step never goes below what the Brownian tree resolves.
  dtmin = (brownian.t1 - brownian.t0) * _BROWNIAN_RESOLUTION
  controller = (diffrax.PIDController(rtol=rtol, atol=atol, dtmin=dtmin) if adaptive
                else diffrax.ConstantStepSize())
  sol = diffrax.diffeqsolve(terms, solver, t0=t0, t1=t1, dt0=(t1 - t0) / num_steps, y0=y0,
                            stepsize_controller=controller, max_steps=max_steps, throw=False,
                            saveat=diffrax.SaveAt(t1=True))
  success = sol.result == diffrax.RESULTS.successful
  return sol.ys[-1], success, sol.stats["num_steps"]
