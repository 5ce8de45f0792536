"""Class-conditional samplers: the reverse-time SDE and the probability-flow ODE in Diffrax.

Every sampler runs the SDE backwards from the prior at T to a small eps
(Song et al., 2021), one Diffrax solve per sample under `vmap`:
  * "ode": the probability-flow ODE dx/dt = f - 1/2 g^2 s, adaptive Tsit5 with a
    PID controller; deterministic given the prior draw;
  * "euler_maruyama", "heun", "sra1", "shark": the reverse-time SDE
    dx = [f - g^2 s] dt + g dw with that Diffrax solver (`solvers.SDE_SOLVERS`),
    fixed steps or, except for Euler–Maruyama, adaptive;
  * "pc": predictor-corrector, one Langevin corrector step (score_sde's
    signal-to-noise rule) before each Euler–Maruyama step.

The SDE samplers integrate in forward time tau = T - t over a
`VirtualBrownianTree` on [0, T - eps], so the Brownian path is a function of the
sample's own key: a sample is the same alone or in a batch, with any step
count, and two step counts can be compared path by path. Their last step, from
eps + dt to eps with dt = (T - eps) / num_steps, is noise-free (score_sde's
denoising step): its noise would add variance g(eps)^2 dt that no later step
removes.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sgc_jax import sde as sde_lib
from sgc_jax import solvers

SDE_METHODS = tuple(solvers.SDE_SOLVERS)
METHODS = ("ode",) + SDE_METHODS + ("pc",)
_ODE_SOLVER = "tsit5"


class Samples(NamedTuple):
  images: jax.Array              # [B, *image_shape] at time eps; NaN where a solve failed
  num_function_evals: jax.Array  # [B] network evaluations spent on each sample
  success: jax.Array             # [B] bool: the solve finished within max_steps


def per_sample_keys(key: jax.Array, num: int) -> jax.Array:
  """The keys `sample` gives samples 0..num-1 when it is passed one key: fold_in(key, i)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num, dtype=jnp.uint32))


def _norm(v):
  return jnp.sqrt(jnp.sum(v**2))


def _langevin_step(score, sde, x, t, key, *, snr, dt):
  """One Langevin MCMC step for one image x at time t, targeting p_t(x | y).

  score_sde's rule, step = 2 alpha (snr ||z|| / ||s||)^2 with alpha = exp(-beta(t) dt)
  for the VP family (its discrete alpha_i = 1 - beta_i to first order, but never
  negative, so a coarse grid cannot make the step negative) and 1 otherwise,
  with this image's own norms: score_sde averages the norms over the batch,
  which makes a sample depend on its batch-mates. For images ||s|| concentrates
  near sqrt(D) / std, so a single image's step is as stable as the batch
  mean's; in a space of a few dimensions it is heavy-tailed (||s|| can come
  near 0), so test it on images, not on a handful of pixels.
  """
  s = score(x, t)
  noise = jax.random.normal(key, x.shape, x.dtype)
  alpha = jnp.exp(-sde.beta(t) * dt) if isinstance(sde, sde_lib.VPSDE) else 1.0
  step = 2.0 * alpha * (snr * _norm(noise) / _norm(s)) ** 2
  return x + step * s + jnp.sqrt(2.0 * step) * noise


def _reverse_sde_one(score, sde, x_T, key, *, method, num_steps, adaptive, eps, snr, rtol, atol,
                     max_steps):
  """One reverse-time SDE sample from x_T; returns (x_eps, success, network evaluations)."""
  T = sde.T
  dt = (T - eps) / num_steps

  def reverse_drift(x, t):
    return sde.reverse_drift(x[None], t[None], score(x, t)[None])[0]

  path_key, corrector_key = jax.random.split(key)
  if method == "pc":
    def corrector(tau, x, dtau, step_key):
      return _langevin_step(score, sde, x, T - tau, step_key, snr=snr, dt=dtau)
    solver = solvers.LangevinCorrected(corrector=corrector, key=corrector_key)
    per_step = 2
  else:
    solver = solvers.get_sde_solver(method)
    per_step = solvers.sde_evaluations_per_step(method)
  brownian = solvers.brownian_motion(path_key, solver, x_T.shape, x_T.dtype, t0=0.0, t1=T - eps)
  # In tau = T - t the reverse-time SDE runs forwards: dx = -[f - g^2 s] dtau + g dw.
  x, success, steps = solvers.solve_sde(
      lambda tau, x: -reverse_drift(x, T - tau), lambda tau: sde.diffusion(T - tau), solver, x_T,
      brownian=brownian, t0=0.0, t1=T - eps - dt, num_steps=num_steps - 1, adaptive=adaptive,
      rtol=rtol, atol=atol, max_steps=max_steps)
  t_last = jnp.asarray(eps + dt, x.dtype)
  x_eps = x - reverse_drift(x, t_last) * dt
  return x_eps, success, steps * per_step + 1


def _probability_flow_one(score, sde, x_T, *, eps, rtol, atol, max_steps):
  """The probability-flow ODE from T down to eps for one image, adaptive Tsit5 + PID."""
  solver = solvers.get_solver(_ODE_SOLVER)
  # num_steps and grid only shape fixed-step grids; adaptive solves ignore them.
  controller, dt0 = solvers.make_controller(
      solver, adaptive=True, rtol=rtol, atol=atol, eps=eps, T=sde.T, num_steps=1,
      grid="uniform", dtype=x_T.dtype)

  def vector_field(t, x_t, args):
    del args
    t = jnp.asarray(t, x_t.dtype)
    return sde.probability_flow_drift(x_t[None], t[None], score(x_t, t)[None])[0]

  x_eps, success, steps = solvers.solve(vector_field, solver, x_T, t0=sde.T, t1=eps,
                                        controller=controller, dt0=dt0, max_steps=max_steps)
  return x_eps, success, steps * solvers.evaluations_per_step(solver)


@functools.partial(
    jax.jit, static_argnames=("sde", "image_shape", "method", "adaptive", "eps", "snr", "rtol",
                              "atol", "max_steps"))
def _sample(score_fn, labels, keys, num_steps, *, sde, image_shape, method, adaptive, eps, snr,
            rtol, atol, max_steps):
  # num_steps is traced: a new step count reuses the compiled sampler.

  def sample_one(y, key):
    prior_key, path_key = jax.random.split(key)
    x_T = sde.prior_sampling(prior_key, image_shape)

    def score(x, t):
      t_b = jnp.reshape(t, (1,)).astype(x.dtype)
      return score_fn(x[None], t_b, y[None])[0].astype(x.dtype)

    if method == "ode":
      x, success, nfe = _probability_flow_one(score, sde, x_T, eps=eps, rtol=rtol, atol=atol,
                                              max_steps=max_steps)
    else:
      x, success, nfe = _reverse_sde_one(
          score, sde, x_T, path_key, method=method, num_steps=num_steps, adaptive=adaptive,
          eps=eps, snr=snr, rtol=rtol, atol=atol, max_steps=max_steps)
    return jnp.where(success, x, jnp.nan), nfe, success

  # vmap gives every sample its own Brownian path, step sizes and error control.
  return Samples(*jax.vmap(sample_one)(labels, keys))


def sample(score_fn: Callable, sde, labels: jax.Array, image_shape: tuple[int, ...], *,
           key: jax.Array, method: str = "ode", num_steps: int = 500, adaptive: bool = False,
           eps: float = 1e-3, snr: float = 0.16, rtol: float = 1e-5, atol: float = 1e-5,
           max_steps: int = 4096) -> Samples:
  """Draws one image from p(x | y) for every label.

  Args:
    score_fn: `score_fn(x [B,H,W,C], t [B], y [B] int32) -> score [B,H,W,C]`; a
      `jax.tree_util.Partial` passes its bound parameters as traced arguments.
      Reuse the same object across calls to avoid recompiling.
    sde: an `sgc_jax.sde` SDE.
    labels: classes [B] int32, one sample each.
    image_shape: (H, W, C).
    key: one PRNG key, from which sample i gets `per_sample_keys(key, B)[i]`
      (so the first samples of a longer batch are the same), or B keys [B, ...],
      one per sample. A sample's prior draw, Brownian path and corrector noise
      all come from its own key, so it does not depend on its batch-mates.
    method: one of `METHODS`: "ode" (probability flow, adaptive Tsit5 + PID with
      `rtol`/`atol`), a reverse-SDE solver ("euler_maruyama", "heun", "sra1",
      "shark") or "pc" (predictor-corrector, Langevin corrector at `snr`).
    num_steps: reverse-SDE steps from T to eps, uniform, the last one the
      noise-free denoising step (unused by "ode"). With `adaptive` the solver
      chooses its steps and `num_steps` sets the first step's size and the
      denoising step's, (T - eps) / num_steps.
    adaptive: reverse-SDE methods only: a PID controller at `rtol`/`atol` on the
      solver's error estimate (not "euler_maruyama" or "pc", which have none).
    eps: the final time.
    rtol, atol: tolerances of the adaptive solves.
    max_steps: the per-sample step budget of the solves (fixed steps included:
      compiled in); a sample that exceeds it is NaN with `success` False.

  Returns:
    `Samples`: images [B, *image_shape], network evaluations [B] (rejected
    adaptive steps included) and success flags [B].
  """
  if method not in METHODS:
    raise ValueError(f"method: unknown sampler {method!r}; choose one of {METHODS}")
  if method != "ode" and not 2 <= num_steps <= max_steps + 1:
    raise ValueError(f"num_steps: the reverse-SDE samplers need 2 to max_steps + 1 = "
                     f"{max_steps + 1} steps (the last is the denoising step), got {num_steps}")
  if adaptive and method in ("euler_maruyama", "pc"):
    raise ValueError(f"adaptive: {method!r} has no error estimate; use fixed steps or one of "
                     f"{[m for m in SDE_METHODS if solvers.sde_is_adaptive(m)]}")
  labels = jnp.asarray(labels, jnp.int32)
  if labels.ndim != 1:
    raise ValueError(f"labels: expected shape [B], got {labels.shape}")
  keys = _as_per_sample_keys(key, labels.shape[0])
  if not isinstance(score_fn, Partial):
    score_fn = Partial(score_fn)
  return _sample(score_fn, labels, keys, jnp.asarray(num_steps, jnp.int32), sde=sde,
                 image_shape=tuple(image_shape), method=method,
                 adaptive=adaptive and method != "ode", eps=eps, snr=snr, rtol=rtol, atol=atol,
                 max_steps=max_steps)


def _as_per_sample_keys(key, num: int) -> jax.Array:
  key = jnp.asarray(key)
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  single_ndim = 0 if typed else 1
  if key.ndim == single_ndim:
    return per_sample_keys(key, num)
  if key.ndim == single_ndim + 1 and key.shape[0] == num:
    return key
  raise ValueError(f"key: expected one PRNG key or {num} keys (one per label), "
                   f"got an array of shape {key.shape}")
