"""An exponential integrator in log-SNR time for the likelihood direction of the flow.

The probability-flow ODE of an SDE with linear drift, written with the noise
prediction eps(x, t) = -sigma(t) s(x, t, y), is semi-linear:

    dx/dt = a(t) x - 1/2 g(t)^2 s = a(t) x - sigma(t) dlambda/dt eps,

with the log-SNR lambda(t) = log(alpha(t) / sigma(t)), because
g^2 = -2 sigma^2 dlambda/dt and a = dlog(alpha)/dt. Variation of constants
gives, from a time s to a time t (lambda falls as t grows: the likelihood
direction runs lambda downwards),

    x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^(-lambda) eps d lambda,

exact in the linear part (Lu et al., 2022, DPM-Solver; here in the other
direction). The divergence integral shares the structure: with
div f = a D - 1/2 g^2 div s = a D - sigma dlambda/dt div eps,

    Delta_t = Delta_s + D log(alpha_t / alpha_s) - int_{lambda_s}^{lambda_t} sigma(lambda) div eps d lambda,

so the linear part's divergence a(t) D is again integrated exactly and only
the network's part is approximated. A multistep method of order k replaces
eps and div eps on each step by the polynomial in lambda through the last k
evaluations (an exponential Adams-Bashforth method, as in DEIS, Zhang & Chen,
2023) and integrates it against the known weights e^(-lambda) and
sigma(lambda) exactly (to float64 quadrature precision, once, when the
schedule is built). Each step costs one network evaluation; the first k - 1
steps use the lower orders their history allows.

Everything that depends on the SDE and the grid (times, alpha ratios and the
quadrature weights) is computed in float64 numpy at trace time
(`make_schedule`); a solve is then a `lax.scan` of one evaluation and a few
weighted sums per step, so every (image, class) takes the same steps and an
image's answer never depends on its batch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sgc_jax import solvers

# Solver name -> multistep order.
SOLVERS = {"expint1": 1, "expint2": 2, "expint3": 3}
GRIDS = ("logsnr",) + solvers.TIME_GRIDS
_QUADRATURE_NODES = 32
_BISECTION_ITERATIONS = 200


class Schedule(NamedTuple):
  """Per-step constants of one multistep solve with `num_steps` steps (numpy float64)."""
  ts: np.ndarray          # [N + 1] times eps .. T
  sigmas: np.ndarray      # [N] sigma(t_i): eps = -sigma s at the evaluation times
  decay: np.ndarray       # [N] alpha_{i+1} / alpha_i
  log_decay: np.ndarray   # [N] log(alpha_{i+1} / alpha_i): the linear drift's divergence per dim
  x_weights: np.ndarray   # [N, k] coefficient of eps_{i-j} in x_{i+1}
  div_weights: np.ndarray  # [N, k] coefficient of div eps_{i-j} in Delta_{i+1}


def order_of(solver: str) -> int:
  """The multistep order of an exponential-integrator solver name (see `SOLVERS`)."""
  try:
    return SOLVERS[solver.lower()]
  except KeyError:
    raise ValueError(f"solver: unknown exponential integrator {solver!r}; choose one of "
                     f"{sorted(SOLVERS)}") from None


def _coefficients(sde, t):
  """alpha(t), sigma(t) in float64 for a numpy array of times."""
  with jax.ensure_compile_time_eval(), jax.enable_x64(True):
    t = jnp.asarray(t, jnp.float64)
    return (np.asarray(sde.marginal_mean_coeff(t), np.float64),
            np.asarray(sde.marginal_std(t), np.float64))


def _log_snr(sde, t):
  alpha, sigma = _coefficients(sde, t)
  return np.log(alpha) - np.log(sigma)


def _time_of_log_snr(sde, lam, eps: float, T: float):
  """t in [eps, T] with lambda(t) = lam, by bisection in log t (lambda falls with t)."""
  lo = np.full(np.shape(lam), np.log(eps))
  hi = np.full(np.shape(lam), np.log(T))
  for _ in range(_BISECTION_ITERATIONS):
    mid = 0.5 * (lo + hi)
    above = _log_snr(sde, np.exp(mid)) > lam
    lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    if np.max(hi - lo) < 1e-15:
      break
  return np.exp(0.5 * (lo + hi))


def time_grid(sde, eps: float, T: float, num_steps: int, kind: str = "logsnr") -> np.ndarray:
  """`num_steps + 1` times from eps to T: evenly spaced in log-SNR ("logsnr") or a t-grid.

  The t-grids are `sgc_jax.solvers.time_grid`'s ("uniform", "quadratic", "log").
  """
  if kind not in GRIDS:
    raise ValueError(f"grid: unknown grid {kind!r} for an exponential integrator; "
                     f"choose one of {GRIDS}")
  if kind != "logsnr":
    return solvers.time_grid(eps, T, num_steps, kind)
  if num_steps < 1:
    raise ValueError(f"num_steps: must be >= 1, got {num_steps}")
  lam = np.linspace(_log_snr(sde, eps), _log_snr(sde, T), num_steps + 1)
  ts = _time_of_log_snr(sde, lam, eps, T)
  ts[0], ts[-1] = eps, T
  return ts


def _lagrange_basis(nodes, points):
  """[len(nodes), len(points)]: the Lagrange basis polynomials through `nodes` at `points`."""
  basis = np.ones((len(nodes), len(points)))
  for j, node_j in enumerate(nodes):
    for m, node_m in enumerate(nodes):
      if m != j:
        basis[j] *= (points - node_m) / (node_j - node_m)
  return basis


def make_schedule(sde, *, eps: float, T: float, num_steps: int, order: int,
                  grid: str = "logsnr") -> Schedule:
  """The times, decays and exact polynomial weights of an order-`order` multistep solve."""
  if order not in SOLVERS.values():
    raise ValueError(f"order: must be one of {sorted(SOLVERS.values())}, got {order}")
  ts = time_grid(sde, eps, T, num_steps, grid)
  alphas, sigmas = _coefficients(sde, ts)
  lams = np.log(alphas) - np.log(sigmas)
  if np.any(np.diff(lams) >= 0):
    raise ValueError("sde: the log-SNR must fall strictly along the grid")
  gl_x, gl_w = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
  # Quadrature points of every step at once: sigma(lambda) needs t(lambda).
  mids, halves = 0.5 * (lams[1:] + lams[:-1]), 0.5 * (lams[1:] - lams[:-1])
  points = mids[:, None] + halves[:, None] * gl_x[None, :]          # [N, Q]
  _, sigma_points = _coefficients(sde, _time_of_log_snr(sde, points.ravel(), eps, T))
  sigma_points = sigma_points.reshape(points.shape)
  x_weights = np.zeros((num_steps, order))
  div_weights = np.zeros((num_steps, order))
  for i in range(num_steps):
    nodes = lams[i::-1][:order]             # lambda_i, lambda_{i-1}, ... (newest first)
    basis = _lagrange_basis(nodes, points[i]) * (halves[i] * gl_w)[None, :]
    # x_{i+1} gets -alpha_{i+1} int e^(-lambda) P; Delta_{i+1} gets -int sigma(lambda) P.
    x_weights[i, :len(nodes)] = -alphas[i + 1] * basis @ np.exp(-points[i])
    div_weights[i, :len(nodes)] = -basis @ sigma_points[i]
  return Schedule(ts=ts, sigmas=sigmas[:-1], decay=alphas[1:] / alphas[:-1],
                  log_decay=np.log(alphas[1:]) - np.log(alphas[:-1]), x_weights=x_weights,
                  div_weights=div_weights)


def solve(score_and_divergence: Callable, x: jax.Array, schedule: Schedule):
  """Integrates the flow and its divergence from x at eps to T for one (image, class).

  Args:
    score_and_divergence: `(t, x, step) -> (score s(x, t), div_x s)` for this
      image's class at step `step` (0, 1, ...; a divergence estimate is fine:
      it enters linearly, and with fresh probes at each step the estimates'
      errors are independent and average out along the path).
    x: the image at t = eps.
    schedule: from `make_schedule`.

  Returns:
    (x_T, Delta): the image at T and int_eps^T div f dt, so that
    log p(x) = log p_T(x_T) + Delta.
  """
  dtype = x.dtype
  dim = x.size
  order = schedule.x_weights.shape[1]
  constants = (jnp.arange(len(schedule.sigmas)),) + tuple(jnp.asarray(c, dtype) for c in (
      schedule.ts[:-1], schedule.sigmas, schedule.decay, schedule.log_decay,
      schedule.x_weights, schedule.div_weights))

  def step(carry, per_step):
    x_i, delta, eps_history, div_history = carry
    index, t, sigma, decay, log_decay, x_w, div_w = per_step
    score, div_score = score_and_divergence(t, x_i, index)
    # eps = -sigma s, so div eps = -sigma div s; the newest value goes first.
    eps_history = jnp.concatenate([(-sigma * score)[None], eps_history[:-1]])
    div_history = jnp.concatenate([(-sigma * div_score)[None], div_history[:-1]])
    x_next = decay * x_i + jnp.tensordot(x_w, eps_history, axes=1)
    delta = delta + dim * log_decay + jnp.dot(div_w, div_history)
    return (x_next, delta, eps_history, div_history), None

  init = (x, jnp.zeros((), dtype), jnp.zeros((order,) + x.shape, dtype), jnp.zeros((order,), dtype))
  (x_T, delta, _, _), _ = jax.lax.scan(step, init, constants)
  return x_T, delta
