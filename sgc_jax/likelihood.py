"""Exact class-conditional log-likelihoods through the probability-flow ODE.

For an image x and a class y, the probability-flow ODE
    dx/dt = f~(x, t) = a(t) x - 1/2 g(t)^2 s(x, t, y)
maps x = x(eps) to x(T), and
    log p(x | y) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt.
The state (x, running divergence integral) is integrated jointly by one Diffrax
solve per (image, class), all of them `vmap`-ed into one jitted program:
  * drift and divergence come from one `jax.linearize` of the score (one
    forward pass; each probe is then one JVP through the stored linearisation);
    the linear part a(t) x contributes a(t) * D exactly;
  * every class of an image shares the image's probes and (for fixed steps)
    the same time grid, so class differences carry no probe noise of their own
    (common random numbers); with one key per image (e.g. folded with the
    image's id) the probes differ between images, so their error averages out
    over a split instead of acting as one per-class offset, and an image's
    probes never depend on its batch;
  * each (image, class) has its own adaptive step sizes and error norm: an
    image's result never depends on its batch-mates, and a failed solve only
    marks its own entry (its log-likelihood is NaN, `success` is False).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sgc_jax import exponential_integrator, solvers

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")


class LikelihoodResult(NamedTuple):
  """Per image and class: log p(x|y) in nats, network evaluations, solver success.

  `half_log_likelihoods`, from Monte Carlo estimators that provide it (None
  otherwise): two estimates of log p(x|y) from independent halves of the
  samples, whose mean is `log_likelihood`; `sgc_jax.flow_diagnostics` measures
  the estimate's noise from their difference.
  """
  log_likelihood: jax.Array    # [B, C]; NaN where the solve failed
  num_function_evals: jax.Array  # [B, C] score-network forward passes
  success: jax.Array           # [B, C] bool
  half_log_likelihoods: jax.Array | None = None  # [B, 2, C]


def draw_probes(key, shape, num_probes: int, kind: str = "rademacher", dtype=jnp.float32):
  """Hutchinson probes [K, *shape] with E[v v^T] = I."""
  if kind == "rademacher":
    return jax.random.rademacher(key, (num_probes,) + tuple(shape), dtype=dtype)
  if kind == "gaussian":
    return jax.random.normal(key, (num_probes,) + tuple(shape), dtype=dtype)
  raise ValueError(f"probe: unknown probe distribution {kind!r}; choose one of {PROBES}")


def per_image_keys(key, batch_size: int):
  """`batch_size` PRNG keys: `key` repeated when it is one key, else `key` itself."""
  typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  if key.ndim == (0 if typed else 1):
    return jnp.broadcast_to(key, (batch_size,) + key.shape)
  if key.shape[0] != batch_size:
    raise ValueError(f"key: {key.shape[0]} per-image keys for {batch_size} images")
  return key


def _basis(shape, dtype):
  dim = math.prod(shape)
  return jnp.eye(dim, dtype=dtype).reshape((dim,) + tuple(shape))


def _score_divergence(score_one, x, directions, divergence: str, control):
  """Score at x and an estimate of its divergence, from a single linearisation.

  `directions` are Hutchinson probes or the standard basis (exact trace). The
  Hutchinson estimate is mean_v [v.Jv - control (|v|^2 - D)]: unbiased for any
  `control` because E|v|^2 = D, unchanged for Rademacher probes (|v|^2 = D),
  and, for Gaussian probes, free of the variance of J's part that equals
  control * I. Without it, splitting off the drift's linear part exactly would
  leave the score's large diagonal (about -I at large t) to Gaussian probe noise.
  """
  score, jvp = jax.linearize(score_one, x)
  jv = jax.vmap(jvp)(directions)
  flat = directions.reshape(directions.shape[0], -1)
  quad = jnp.sum(flat * jv.reshape(flat.shape), axis=1)
  if divergence == "exact":
    return score, jnp.sum(quad)
  return score, jnp.mean(quad - control * (jnp.sum(flat * flat, axis=1) - flat.shape[1]))


def _score_and_divergence(score_fn, sde, y, directions, divergence):
  """(t, x, step) -> (s(x, t, y), div_x s) for one image x [H, W, C] and one label y.

  `directions` is an array [K, H, W, C], or a function of the step index
  giving one (probes drawn afresh at every step).
  """

  def evaluate(t, x_t, step=None):
    t_b = jnp.reshape(t, (1,)).astype(x_t.dtype)
    score_one = lambda z: score_fn(z[None], t_b, y[None])[0].astype(z.dtype)
    # The score Jacobian of unit-Gaussian data, -I / (alpha^2 + sigma^2): the
    # Hutchinson control variate (see `_score_divergence`).
    control = -1.0 / (sde.marginal_mean_coeff(t) ** 2 + sde.marginal_std(t) ** 2)
    step_directions = directions(step) if callable(directions) else directions
    return _score_divergence(score_one, x_t, step_directions, divergence,
                             control.astype(x_t.dtype))

  return evaluate


def _solve_one(score_fn, sde, x, y, directions, *, divergence, solver, controller, dt0, eps,
               max_steps):
  """log p(x | y) for one image x [H, W, C] and one label y (scalars out).

  `solver` is a Diffrax solver, or an `exponential_integrator.Schedule`.
  """
  dim = x.size
  score_and_divergence = _score_and_divergence(score_fn, sde, y, directions, divergence)

  if isinstance(solver, exponential_integrator.Schedule):
    x_T, delta = exponential_integrator.solve(score_and_divergence, x, solver)
    success, num_steps = jnp.array(True), jnp.array(len(solver.sigmas), jnp.int32)
  else:
    def vector_field(t, state, args):
      del args
      x_t, _ = state
      score, div_score = score_and_divergence(t, x_t)
      a = sde.drift_coeff(t)
      half_g2 = 0.5 * sde.diffusion(t) ** 2
      dx = a * x_t - half_g2 * score
      ddiv = a * dim - half_g2 * div_score
      return dx, ddiv.astype(x_t.dtype)

    y0 = (x, jnp.zeros((), x.dtype))
    (x_T, delta), success, num_steps = solvers.solve(
        vector_field, solver, y0, t0=eps, t1=sde.T, controller=controller, dt0=dt0,
        max_steps=max_steps)
  logp = sde.prior_logp(x_T[None])[0] + delta
  logp = jnp.where(success & jnp.isfinite(logp), logp, jnp.nan)
  return logp, num_steps, success & jnp.isfinite(logp)


@functools.partial(
    jax.jit,
    static_argnames=("sde", "num_classes", "solver", "adaptive", "rtol", "atol", "num_steps",
                     "grid", "eps", "max_steps", "divergence", "probe", "num_probes",
                     "resample_probes"))
def _class_log_likelihoods(score_fn, x, keys, *, sde, num_classes, solver, adaptive, rtol, atol,
                           num_steps, grid, eps, max_steps, divergence, probe, num_probes,
                           resample_probes):
  if solver.lower() in exponential_integrator.SOLVERS:
    # Fixed steps on a precomputed grid, one network evaluation each.
    solver_obj = exponential_integrator.make_schedule(
        sde, eps=eps, T=sde.T, num_steps=num_steps, order=exponential_integrator.order_of(solver),
        grid=grid)
    controller, dt0, evaluations_per_step, extra = None, None, 1, 0
  else:
    solver_obj = solvers.get_solver(solver)
    controller, dt0 = solvers.make_controller(
        solver_obj, adaptive=adaptive, rtol=rtol, atol=atol, eps=eps, T=sde.T,
        num_steps=num_steps, grid=grid, dtype=x.dtype)
    evaluations_per_step, extra = solvers.evaluations_per_step(solver_obj), 1
  image_shape = x.shape[1:]
  solve = functools.partial(
      _solve_one, score_fn, sde, divergence=divergence, solver=solver_obj,
      controller=controller, dt0=dt0, eps=eps, max_steps=max_steps)
  classes = jnp.arange(num_classes, dtype=jnp.int32)

  def per_image(image, image_key):
    if divergence == "exact":
      directions = _basis(image_shape, x.dtype)
    elif resample_probes:
      directions = lambda step: draw_probes(jax.random.fold_in(image_key, step), image_shape,
                                            num_probes, probe, x.dtype)
    else:
      directions = draw_probes(image_key, image_shape, num_probes, probe, x.dtype)
    # Every class of the image integrates with the same directions (at each step).
    return jax.vmap(lambda y: solve(image, y, directions))(classes)

  logp, steps, success = jax.vmap(per_image)(x, keys)
  nfe = steps * evaluations_per_step + extra
  return LikelihoodResult(logp, nfe, success)


def class_log_likelihoods(
    score_fn: Callable, sde, x: jax.Array, num_classes: int, *, key: jax.Array,
    solver: str = "tsit5", adaptive: bool = True, rtol: float = 1e-5, atol: float = 1e-5,
    num_steps: int = 100, grid: str = "quadratic", eps: float = 1e-5, max_steps: int = 4096,
    divergence: str = "hutchinson", probe: str = "rademacher", num_probes: int = 1,
    resample_probes: bool = False, dtype=jnp.float32) -> LikelihoodResult:
  """log p(x | y) in nats for every image in `x` and every class y, in one pass.

  Args:
    score_fn: `score_fn(x [B,H,W,C], t [B], y [B] int32) -> score [B,H,W,C]`. A
      `jax.tree_util.Partial` (e.g. from `sgc_jax.models.make_score_fn`) passes
      its bound parameters as traced arguments; a plain function is compiled in.
      Reuse the same object across calls to avoid recompiling.
    sde: an `sgc_jax.sde` SDE (its drift must be linear in x).
    x: images [B, H, W, C] (already dequantized and scaled as in training).
    num_classes: the classes scored, 0..num_classes-1.
    key: PRNG key for the Hutchinson probes: one key, shared by every image, or
      one key per image ([B] typed or [B, 2] raw keys), e.g. the image's id
      folded into a base key. Either way all classes of an image share its
      probes, and `num_probes` > 1 averages that many.
    solver: Diffrax solver name (see `sgc_jax.solvers.SOLVERS`), or an
      exponential integrator in log-SNR time, "expint1/2/3" (multistep of that
      order, one network evaluation per step, fixed steps only; see
      `sgc_jax.exponential_integrator`).
    adaptive: PID step-size control with `rtol`/`atol`; else `num_steps` fixed
      steps on a `grid` ("quadratic", "log" or "uniform") dense near `eps`, or,
      for the exponential integrators, also "logsnr" (even in log-SNR).
    eps: the start time (the ODE is stiff at 0).
    max_steps: per-solve step budget; exceeding it fails that solve only.
    divergence: "hutchinson" (`num_probes` probes drawn from `probe`, with a
      control variate that makes Gaussian probes exact on unit-Gaussian scores)
      or "exact" (D JVPs per evaluation: small images only).
    resample_probes: draw the Hutchinson probes afresh at every step
      (exponential integrators only): the steps' estimation errors are then
      independent and average out along the path, instead of one probe's error
      being integrated over all of it (3.8x less error with one probe on the
      digits MLP at 27 steps: README, "Likelihood cost"). Adaptive solvers
      need a deterministic vector field, so they keep one set of probes for
      the whole solve.
    dtype: float32, or float64 (requires `jax.config.update("jax_enable_x64", True)`).

  Returns:
    `LikelihoodResult` with [B, num_classes] arrays.
  """
  if divergence not in DIVERGENCES:
    raise ValueError(f"divergence: unknown {divergence!r}; choose one of {DIVERGENCES}")
  if probe not in PROBES:
    raise ValueError(f"probe: unknown {probe!r}; choose one of {PROBES}")
  if x.ndim != 4:
    raise ValueError(f"x: expected images [B, H, W, C], got shape {x.shape}")
  if adaptive and solver.lower() in exponential_integrator.SOLVERS:
    raise ValueError(f"solver: {solver} takes fixed steps; set adaptive=False and num_steps")
  if resample_probes and solver.lower() not in exponential_integrator.SOLVERS:
    raise ValueError(f"resample_probes: needs an exponential integrator "
                     f"{sorted(exponential_integrator.SOLVERS)}, not {solver!r}")
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("dtype: float64 needs jax.config.update('jax_enable_x64', True) first")
  if not isinstance(score_fn, Partial):
    score_fn = Partial(score_fn)
  return _class_log_likelihoods(
      score_fn, jnp.asarray(x, dtype), per_image_keys(jnp.asarray(key), x.shape[0]), sde=sde,
      num_classes=num_classes, solver=solver,
      adaptive=adaptive, rtol=rtol, atol=atol, num_steps=num_steps, grid=grid, eps=eps,
      max_steps=max_steps, divergence=divergence, probe=probe, num_probes=num_probes,
      resample_probes=bool(resample_probes) and divergence == "hutchinson")


def dequantize(key, images, *, bit_depth: int, data_range: tuple[float, float] = (0.0, 1.0)):
  """Uniformly dequantized model inputs from integer images.

  x = lo + (hi - lo) * (k + u) / 2^bit_depth with u ~ U[0, 1): the continuous
  density of x then bounds the probability of the discrete image k (see
  `bits_per_dim`). With `key=None`, u = 1/2 (bin centres).
  """
  k = jnp.asarray(images, jnp.float32)
  u = 0.5 if key is None else jax.random.uniform(key, k.shape)
  lo, hi = data_range
  return lo + (hi - lo) * (k + u) / (2.0**bit_depth)


def bits_per_dim(log_likelihood, num_dims: int, *, bit_depth: int,
                 data_range: tuple[float, float] = (0.0, 1.0)):
  """Bits per dimension of the discrete data from the density of dequantized inputs.

  Each integer level occupies a bin of width (hi - lo) / 2^bit_depth in model
  space, so -log2 P(k) <= -log2 p(x) - D log2((hi - lo) / 2^bit_depth), giving
  bpd = -log p(x) / (D ln 2) + bit_depth - log2(hi - lo). For 8-bit data in
  [-1, 1] this is score_sde's offset of 7; for 16-bit mammograms in [0, 1] it
  is 16.
  """
  lo, hi = data_range
  return -log_likelihood / (num_dims * math.log(2.0)) + bit_depth - math.log2(hi - lo)
