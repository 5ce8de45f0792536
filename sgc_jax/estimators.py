"""Class-conditional log-likelihoods from forward passes only: the denoising ELBO.

The probability-flow ODE (`sgc_jax.likelihood`) gives exact log-likelihoods but
needs hundreds of sequential score evaluations with JVPs. The evidence lower
bound of Song et al. (2021, "Maximum likelihood training of score-based
diffusion models", Thm. 1 and its per-sample form, likelihood weighting
lambda = g^2) needs only independent forward passes, like Diffusion Classifier
(Li et al., 2023), which scores classes by this same denoising error:

    log p(x | y) >= E_z[log p_T(x_T)]
                    - 1/2 int_eps^T g^2/sigma^2 E_z ||sigma s(x_t, t, y) + z||^2 dt
                    + 1/2 int_eps^T (g^2 D / sigma^2 + 2 a(t) D) dt,

with x_t = alpha(t) x + sigma(t) z, z ~ N(0, I), D = x.size and drift a(t) x.
x is treated as the time-0 sample; the part of the integral on [0, eps] is
dropped (for data with a smooth density its integrand is bounded, so this costs
O(eps) nats). It bounds the log-likelihood of the reverse-SDE model, which is
the probability-flow ODE's (`sgc_jax.likelihood`) when s is the true score. The
bound is tight when s is the true score of the data and the prior equals p_T;
otherwise it lies below by the KL divergence between the forward process and
the model's reverse process, conditioned on x.

Only the middle term depends on the class; the first depends on the image and
the last is a constant of the SDE.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sgc_jax import sde as sde_lib
from sgc_jax.likelihood import LikelihoodResult


def _expected_prior_logp(sde, x):
  """E[log p_T(x_T)] for x_T ~ N(alpha_T x, sigma_T^2 I), in closed form, per image [B]."""
  T = sde.T
  dim = x[0].size
  mean = sde.marginal_mean_coeff(T) * x
  # E||x_T||^2 = ||alpha_T x||^2 + D sigma_T^2 for the Gaussian prior N(0, prior_std^2 I).
  return sde.prior_logp(mean) - 0.5 * dim * sde.marginal_std(T) ** 2 / sde.prior_std**2


def _sde_constant(sde, dim: int, total_weight: float, eps: float):
  """1/2 int_eps^T (g^2 D / sigma^2 + 2 a D) dt, the class- and image-independent term.

  The g^2/sigma^2 integral is the `total_weight` Z that importance sampling of t
  already computed by quadrature; int a dt = log alpha(T) - log alpha(eps)
  exactly, because alpha(t) = exp(int_0^t a).
  """
  log_alpha_ratio = (jnp.log(sde.marginal_mean_coeff(sde.T))
                     - jnp.log(sde.marginal_mean_coeff(eps)))
  return dim * (0.5 * total_weight + log_alpha_ratio)


@functools.partial(
    jax.jit, static_argnames=("sde", "num_classes", "eps", "time_batch_size"))
def _denoising_log_likelihoods(score_fn, x, offset, z, *, sde, num_classes, eps,
                               time_batch_size):
  num_time_samples = z.shape[0]
  dim = x[0].size
  # Stratified uniforms (one shared offset) mapped to t ~ g^2/sigma^2: each stratum of
  # the weighting's mass gets one sample, which removes most of the variance over t.
  u = (jnp.arange(num_time_samples, dtype=x.dtype) + offset) / num_time_samples
  t, total_weight = sde_lib.importance_sample_time(sde, u, eps)
  t = t.astype(x.dtype)

  def denoising_error(image, y, t_k, z_k):
    x_t = sde.perturb(image[None], t_k[None], z_k[None])
    score = score_fn(x_t, t_k[None], y[None])[0].astype(x.dtype)
    return jnp.sum((sde.marginal_std(t_k) * score + z_k) ** 2)

  classes = jnp.arange(num_classes, dtype=jnp.int32)
  per_class = jax.vmap(denoising_error, in_axes=(None, 0, None, None))
  per_image = jax.vmap(per_class, in_axes=(0, None, None, None))
  # Every (image, class) pair of a chunk of time samples goes through the network
  # as one batch of B * C * chunk images; batch_size=0 means all K at once.
  errors = jax.lax.map(lambda tz: per_image(x, classes, *tz), (t, z),
                       batch_size=time_batch_size or 0)  # [K, B, C]

  def bound(mean_error):
    return (_expected_prior_logp(sde, x)[:, None] - 0.5 * total_weight * mean_error
            + _sde_constant(sde, dim, total_weight, eps))

  logp = bound(jnp.mean(errors, axis=0))
  halves = None
  if num_time_samples % 2 == 0:
    # The even and the odd samples, not the first and last K/2: the strata are
    # ordered in t, so each half then spans all of (eps, T] and the halves differ
    # by their independent noises z (and an O(1/K) step within each pair of
    # strata), not by which times they cover. They share the time offset.
    # Keeping the per-sample errors for them lets XLA sum the bound in another
    # order: it moves by float32 rounding (relative ~1e-7), no more.
    halves = jnp.stack([bound(jnp.mean(errors[0::2], axis=0)),
                        bound(jnp.mean(errors[1::2], axis=0))], axis=1)
  nfe = jnp.full(logp.shape, num_time_samples, jnp.int32)
  return LikelihoodResult(logp, nfe, jnp.isfinite(logp), halves)


def denoising_log_likelihoods(
    score_fn: Callable, sde, x: jax.Array, num_classes: int, *, key: jax.Array,
    num_time_samples: int = 64, eps: float = 1e-5,
    time_batch_size: int | None = None) -> LikelihoodResult:
  """Denoising ELBO estimate of log p(x | y) in nats for every image and class.

  A Monte Carlo estimate of the lower bound in the module docstring from
  `num_time_samples` forward passes per (image, class), no JVPs and no ODE
  solve. The K times are stratified and importance-sampled from g^2/sigma^2
  (`sgc_jax.sde.importance_sample_time`), and the K (t, z) pairs are the same
  for every image and class, so only the class-dependent denoising error
  separates classes and an image's result is independent of its batch.

  Args:
    score_fn: `score_fn(x [B,H,W,C], t [B], y [B] int32) -> score [B,H,W,C]`;
      a `jax.tree_util.Partial` passes its bound parameters as traced arguments
      (see `sgc_jax.likelihood.class_log_likelihoods`).
    sde: an `sgc_jax.sde` SDE (drift linear in x, Gaussian prior).
    x: images [B, H, W, C] (already dequantized and scaled as in training).
    num_classes: the classes scored, 0..num_classes-1.
    key: PRNG key for the time offset and the noise, shared by all images and classes.
    num_time_samples: K, the (t, z) pairs; the estimator's standard deviation
      falls as 1/sqrt(K).
    eps: the smallest time; the bound's integral starts here.
    time_batch_size: time samples per network call; each call sees
      B * num_classes * time_batch_size images. None evaluates all K at once.

  Returns:
    `LikelihoodResult` with [B, num_classes] arrays: the bound in nats, K network
    evaluations per entry, and whether the estimate is finite; for even K also
    `half_log_likelihoods` [B, 2, num_classes], the bound from the even- and
    from the odd-numbered (t, z) samples (their mean is the bound).
  """
  if x.ndim != 4:
    raise ValueError(f"x: expected images [B, H, W, C], got shape {x.shape}")
  if num_time_samples < 1:
    raise ValueError(f"num_time_samples: must be >= 1, got {num_time_samples}")
  if not isinstance(score_fn, Partial):
    score_fn = Partial(score_fn)
  x = jnp.asarray(x, jnp.float32)
  # One time offset and one noise draw per time sample, shared by every image and
  # class (common random numbers): class differences carry no noise of their own,
  # and an image's estimate does not depend on its batch-mates. Drawn outside the
  # jitted core because they depend only on (key, K, image shape): JAX then compiles
  # the draws once for all SDEs, class counts and batch sizes.
  offset_key, noise_key = jax.random.split(key)
  offset = jax.random.uniform(offset_key, (), x.dtype)
  z = jax.random.normal(noise_key, (num_time_samples,) + x.shape[1:], x.dtype)
  return _denoising_log_likelihoods(
      score_fn, x, offset, z, sde=sde, num_classes=num_classes, eps=eps,
      time_batch_size=time_batch_size)
