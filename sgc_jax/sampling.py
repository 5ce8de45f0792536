"""Class-conditional samplers for visual checks of a trained score model.

Three ways of running the SDE backwards from the prior at T to a small eps
(Song et al., 2021):
  * "euler_maruyama": the reverse-time SDE dx = [f - g^2 s] dt + g dw, fixed steps;
  * "pc": predictor-corrector, one Langevin corrector step (score_sde's
    signal-to-noise step rule) before each Euler-Maruyama predictor step;
  * "ode": the probability-flow ODE dx/dt = f - 1/2 g^2 s, adaptive Tsit5 with a
    PID controller (`sgc_jax.solvers`); deterministic given the prior draw.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sgc_jax import sde as sde_lib
from sgc_jax import solvers

METHODS = ("ode", "euler_maruyama", "pc")
_ODE_SOLVER = "tsit5"
# Per-image step budget of the ODE; a solve that exceeds it returns NaNs.
_ODE_MAX_STEPS = 4096


def _mean_norm(v):
  return jnp.mean(jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)))


def _langevin_step(score_fn, sde, x, t, labels, key, *, snr, dt):
  """One Langevin MCMC step at time t [B] targeting p_t(x | y).

  score_sde's rule: step = 2 alpha (snr ||z|| / ||s||)^2, with alpha = 1 - beta(t) dt
  (its discrete VP alpha_i) for the VP family and 1 otherwise. As in score_sde the
  norms are batch means: one image's ||s|| can come arbitrarily close to 0 (it
  does not concentrate in few dimensions), and its step would then blow up.
  """
  score = score_fn(x, t, labels)
  noise = jax.random.normal(key, x.shape, x.dtype)
  alpha = 1.0 - sde.beta(t[0]) * dt if isinstance(sde, sde_lib.VPSDE) else 1.0
  step = 2.0 * alpha * (snr * _mean_norm(noise) / _mean_norm(score)) ** 2
  return x + step * score + jnp.sqrt(2.0 * step) * noise


def _reverse_sde(score_fn, sde, x_T, labels, key, *, num_steps, eps, snr):
  """Euler-Maruyama on a uniform grid T -> eps, with a Langevin corrector if `snr`."""
  ts = jnp.linspace(sde.T, eps, num_steps + 1, dtype=x_T.dtype)
  dt = (sde.T - eps) / num_steps
  batch = x_T.shape[0]

  def step(carry, inputs):
    x, _ = carry
    t, step_key = inputs
    t_b = jnp.full((batch,), t)
    corrector_key, noise_key = jax.random.split(step_key)
    if snr is not None:
      x = _langevin_step(score_fn, sde, x, t_b, labels, corrector_key, snr=snr, dt=dt)
    score = score_fn(x, t_b, labels)
    x_mean = x - sde.reverse_drift(x, t_b, score) * dt
    g = sde_lib.broadcast_to_image(sde.diffusion(t_b), x)
    noise = jax.random.normal(noise_key, x.shape, x.dtype)
    return (x_mean + g * math.sqrt(dt) * noise, x_mean), None

  keys = jax.random.split(key, num_steps)
  (_, x_mean), _ = jax.lax.scan(step, (x_T, x_T), (ts[:-1], keys))
  # The last step is noise-free (score_sde's denoising step): its noise would add
  # variance g(eps)^2 dt that no later step removes.
  return x_mean


def _probability_flow(score_fn, sde, x_T, labels, *, eps, rtol, atol):
  """Solves the probability-flow ODE from T down to eps, one adaptive solve per image."""
  solver = solvers.get_solver(_ODE_SOLVER)
  # num_steps and grid only shape fixed-step grids; adaptive solves ignore them.
  controller, dt0 = solvers.make_controller(
      solver, adaptive=True, rtol=rtol, atol=atol, eps=eps, T=sde.T, num_steps=1,
      grid="uniform", dtype=x_T.dtype)

  def solve_one(x, y):
    def vector_field(t, x_t, args):
      del args
      t_b = jnp.reshape(t, (1,)).astype(x_t.dtype)
      score = score_fn(x_t[None], t_b, y[None]).astype(x_t.dtype)
      return sde.probability_flow_drift(x_t[None], t_b, score)[0]

    x_eps, success, _ = solvers.solve(vector_field, solver, x, t0=sde.T, t1=eps,
                                      controller=controller, dt0=dt0,
                                      max_steps=_ODE_MAX_STEPS)
    return jnp.where(success, x_eps, jnp.nan)

  # vmap gives every image its own step sizes and error control.
  return jax.vmap(solve_one)(x_T, labels)


@functools.partial(
    jax.jit, static_argnames=("sde", "image_shape", "method", "num_steps", "eps", "snr",
                              "rtol", "atol"))
def _sample(score_fn, labels, key, *, sde, image_shape, method, num_steps, eps, snr, rtol,
            atol):
  prior_key, noise_key = jax.random.split(key)
  x_T = sde.prior_sampling(prior_key, (labels.shape[0],) + image_shape)
  if method == "ode":
    return _probability_flow(score_fn, sde, x_T, labels, eps=eps, rtol=rtol, atol=atol)
  return _reverse_sde(score_fn, sde, x_T, labels, noise_key, num_steps=num_steps, eps=eps,
                      snr=snr if method == "pc" else None)


def sample(score_fn: Callable, sde, labels: jax.Array, image_shape: tuple[int, ...], *,
           key: jax.Array, method: str = "ode", num_steps: int = 500, eps: float = 1e-3,
           snr: float = 0.16, rtol: float = 1e-5, atol: float = 1e-5) -> jax.Array:
  """Draws one image from p(x | y) for every label.

  Args:
    score_fn: `score_fn(x [B,H,W,C], t [B], y [B] int32) -> score [B,H,W,C]`; a
      `jax.tree_util.Partial` passes its bound parameters as traced arguments.
      Reuse the same object across calls to avoid recompiling.
    sde: an `sgc_jax.sde` SDE.
    labels: classes [B] int32, one sample each.
    image_shape: (H, W, C).
    key: PRNG key. The prior draw is
      `sde.prior_sampling(jax.random.split(key)[0], (B, *image_shape))`; the SDE
      methods draw their step noise from the second half of that split.
    method: "ode" (probability flow, adaptive Tsit5 + PID with `rtol`/`atol`),
      "euler_maruyama" or "pc" (predictor-corrector, Langevin corrector at `snr`).
    num_steps: steps of the SDE methods, uniform from T to eps (unused by "ode").
    eps: the final time; the last SDE step is a noise-free denoising step.

  Returns:
    Images [B, *image_shape] at time eps; NaN where an ODE solve failed.
  """
  if method not in METHODS:
    raise ValueError(f"method: unknown sampler {method!r}; choose one of {METHODS}")
  if num_steps < 1:
    raise ValueError(f"num_steps: must be >= 1, got {num_steps}")
  labels = jnp.asarray(labels, jnp.int32)
  if labels.ndim != 1:
    raise ValueError(f"labels: expected shape [B], got {labels.shape}")
  if not isinstance(score_fn, Partial):
    score_fn = Partial(score_fn)
  return _sample(score_fn, labels, key, sde=sde, image_shape=tuple(image_shape), method=method,
                 num_steps=num_steps, eps=eps, snr=snr, rtol=rtol, atol=atol)
