"""Denoising score matching for class-conditional score networks.

The network predicts -z for x_t = alpha(t) x_0 + sigma(t) z, so sigma * score =
output and the per-example loss is sum_pixels (output + z)^2 (the seed's
loss). Options follow Song et al. (2021): likelihood weighting lambda(t) = g^2
(turns the loss into a bound on the negative log-likelihood, up to constants)
and importance-sampled t, which removes the variance the weighting adds.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sgc_jax import sde as sde_lib


def sample_time(key, batch_size: int, sde, *, eps: float, importance_sampling: bool):
  """Times t [B] and per-example weights for the chosen sampling scheme.

  Uniform t on [eps, T] with weight 1, or t ~ g^2/sigma^2 with constant weight
  Z (the weighting's integral), whose expectation equals the likelihood-weighted
  loss.
  """
  u = jax.random.uniform(key, (batch_size,))
  if importance_sampling:
    t, total = sde_lib.importance_sample_time(sde, u, eps)
    return t, jnp.full((batch_size,), total / (sde.T - eps))
  return eps + u * (sde.T - eps), jnp.ones((batch_size,))


def dsm_loss(apply_fn, variables, x0, labels, key, sde, *, eps: float = 1e-5,
             reduce_mean: bool = False, likelihood_weighting: bool = False,
             importance_sampling: bool = False, train: bool = True):
  """Continuous denoising score-matching loss of one batch.

  Args:
    apply_fn: `apply_fn(variables, x, t, y, train=..., rngs=..., mutable=...)`
      of a `sgc_jax.models` network.
    variables: {'params': ..., 'batch_stats'?: ...}.
    x0, labels: the clean batch [B, H, W, C] and its labels [B].
    key: PRNG key for t, noise and dropout.
    reduce_mean: average over pixels instead of summing (the seed sums).
    likelihood_weighting, importance_sampling: see the module docstring;
      importance sampling implies likelihood weighting.

  Returns:
    (loss, new_model_state) where new_model_state holds updated batch_stats.
  """
  t_key, z_key, dropout_key = jax.random.split(key, 3)
  batch = x0.shape[0]
  t, weight = sample_time(t_key, batch, sde, eps=eps, importance_sampling=importance_sampling)
  z = jax.random.normal(z_key, x0.shape, x0.dtype)
  xt = sde.perturb(x0, t, z)
  mutable = ["batch_stats"] if "batch_stats" in variables else []
  # A list (even empty) for `mutable` makes Flax return (output, updated collections).
  out, new_state = apply_fn(variables, xt, t, labels, train=train,
                            rngs={"dropout": dropout_key}, mutable=mutable)
  sq = jnp.square(out.astype(jnp.float32) + z)
  per_example = jnp.mean(sq, axis=(1, 2, 3)) if reduce_mean else jnp.sum(sq, axis=(1, 2, 3))
  if likelihood_weighting and not importance_sampling:
    # lambda(t) / sigma(t)^2 in noise-prediction units.
    weight = sde.diffusion(t) ** 2 / sde.marginal_std(t) ** 2
  return jnp.mean(weight * per_example), new_state
