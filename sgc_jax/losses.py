"""Denoising score matching for class-conditional score networks.

The network predicts -z for x_t = alpha(t) x_0 + sigma(t) z, so sigma * score =
output and the per-example loss is sum_pixels (output + z)^2 (the seed's
loss). Options follow Song et al. (2021): likelihood weighting lambda(t) = g^2
(turns the loss into a bound on the negative log-likelihood, up to constants)
and importance-sampled t, which removes the variance the weighting adds.

Second-order score matching (Lu et al., ICML 2022, "Maximum Likelihood
Training for Score-Based Diffusion ODEs by High-Order Denoising Score
Matching"), trace form: the first-order loss fits the score but not its
divergence, which is what the probability-flow ODE's log-density integrates.
The divergence of the exact score obeys
sigma^2 tr(grad_x score) + D = E[||sigma score + z||^2 | x_t], so with
output = sigma score the residual
  r = sigma tr(grad_x output) + D - ||sg(output) + z||^2
has zero mean at the exact score; `second_order_weight` adds
weight * r^2 / D to every example's loss, tr estimated by one Rademacher probe
(v^T J v from one forward-mode pass), the squared error's own output held fixed.
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
             importance_sampling: bool = False, second_order_weight: float = 0.0,
             train: bool = True):
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
    second_order_weight: weight of the second-order (trace) term, 0 for none; see the module
      docstring. It costs one forward-mode pass through the network per step.

  Returns:
    (loss, new_model_state) where new_model_state holds updated batch_stats.
  """
  t_key, z_key, dropout_key = jax.random.split(key, 3)
  batch = x0.shape[0]
  t, weight = sample_time(t_key, batch, sde, eps=eps, importance_sampling=importance_sampling)
  z = jax.random.normal(z_key, x0.shape, x0.dtype)
  xt = sde.perturb(x0, t, z)
  mutable = ["batch_stats"] if "batch_stats" in variables else []

  def network(x):
    # A list (even empty) for `mutable` makes Flax return (output, updated collections).
    out, new_state = apply_fn(variables, x, t, labels, train=train,
                              rngs={"dropout": dropout_key}, mutable=mutable)
    return out.astype(jnp.float32), new_state

  if second_order_weight:
    # Folded in rather than split off, so first-order runs keep their random streams.
    probe = jax.random.rademacher(jax.random.fold_in(key, 3), x0.shape, jnp.float32)
    out, probe_jvp, new_state = jax.jvp(network, (xt,), (probe,), has_aux=True)
  else:
    out, new_state = network(xt)
  sq = jnp.square(out + z)
  per_example = jnp.mean(sq, axis=(1, 2, 3)) if reduce_mean else jnp.sum(sq, axis=(1, 2, 3))
  if second_order_weight:
    dims = x0[0].size
    trace = jnp.sum(probe * probe_jvp, axis=(1, 2, 3))
    residual = (sde.marginal_std(t) * trace + dims
                - jax.lax.stop_gradient(jnp.sum(sq, axis=(1, 2, 3))))
    # On the first-order term's scale: per dimension when it averages over pixels.
    second = jnp.square(residual) / (dims * dims if reduce_mean else dims)
    per_example = per_example + second_order_weight * second
  if likelihood_weighting and not importance_sampling:
    # lambda(t) / sigma(t)^2 in noise-prediction units.
    weight = sde.diffusion(t) ** 2 / sde.marginal_std(t) ** 2
  return jnp.mean(weight * per_example), new_state
