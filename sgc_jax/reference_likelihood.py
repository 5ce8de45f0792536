"""The seed's likelihood path, reimplemented: the baseline that `sgc_jax.likelihood` must beat.

The released code of Sarker et al. (after score_sde's PyTorch tutorial)
computes log p(x | y) like this, and so does `seed_class_log_likelihoods`:

* `scipy.integrate.solve_ivp(method="RK45")` on the host, from eps to T, at
  rtol = atol = 1e-5;
* the whole batch flattened into one ODE state, so one error norm (and one
  step size) serves every image;
* one class at a time;
* every right-hand side runs one network forward pass for the drift, then a
  second forward pass and a backward pass for the Hutchinson divergence with
  one fixed probe (Gaussian in the seed), and copies the state between device
  and host.

Unlike the seed, the label is passed to the network. It exists to be measured
against (`tools/likelihood_speed.py`) and checked against closed forms
(`tests/test_reference_likelihood.py`), not to be used.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial
from scipy import integrate

from sgc_jax.likelihood import LikelihoodResult, draw_probes

# Each right-hand side costs two forward passes (drift, then divergence).
_FORWARD_PASSES_PER_RHS = 2


@functools.partial(jax.jit, static_argnames="sde")
def _drift(score_fn, z, t, y, *, sde):
  times = jnp.full((z.shape[0],), t, jnp.float32)
  return sde.probability_flow_drift(z, times, score_fn(z, times, y))


@functools.partial(jax.jit, static_argnames="sde")
def _divergence(score_fn, z, t, y, noise, *, sde):
  # A second forward pass and a backward pass, as in the seed.
  _, vjp = jax.vjp(lambda v: _drift(score_fn, v, t, y, sde=sde), z)
  (grad,) = vjp(noise)
  return jnp.sum(grad * noise, axis=tuple(range(1, grad.ndim)))


def seed_class_log_likelihoods(score_fn: Callable, sde, x, num_classes: int, *, key: jax.Array,
                               rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                               probe: str = "gaussian") -> LikelihoodResult:
  """log p(x | y) in nats for every image and class, the seed's way (see the module docstring).

  Args:
    score_fn: `score_fn(x [B,H,W,C], t [B], y [B] int32) -> score`; a
      `jax.tree_util.Partial` is reused across calls without recompiling.
    sde: an `sgc_jax.sde` SDE.
    x: images [B, H, W, C], already model inputs.
    num_classes: classes scored one after another, 0..num_classes-1.
    key: PRNG key of the probes (one per image, the same for every class).
    rtol, atol, eps: RK45 tolerances and the starting time.
    probe: "gaussian" (the seed's) or "rademacher".

  Returns:
    `LikelihoodResult` [B, C]: log-likelihoods, forward passes (the batch's, shared
    by its images) and scipy's success flag.
  """
  if not isinstance(score_fn, Partial):
    score_fn = Partial(score_fn)
  x = np.asarray(x, np.float32)
  batch, shape = x.shape[0], x.shape
  noise = draw_probes(key, shape, 1, probe)[0]

  log_likelihood = np.full((batch, num_classes), np.nan)
  evaluations = np.zeros((batch, num_classes), np.int64)
  success = np.zeros((batch, num_classes), bool)
  for c in range(num_classes):
    labels = jnp.full((batch,), c, jnp.int32)

    def rhs(t, state, labels=labels):
      z = jnp.asarray(state[:-batch].reshape(shape), jnp.float32)
      d = np.asarray(_drift(score_fn, z, t, labels, sde=sde), np.float64).ravel()
      div = np.asarray(_divergence(score_fn, z, t, labels, noise, sde=sde), np.float64)
      return np.concatenate([d, div])

    start = np.concatenate([x.ravel().astype(np.float64), np.zeros(batch)])
    solution = integrate.solve_ivp(rhs, (eps, sde.T), start, method="RK45", rtol=rtol, atol=atol)
    end = solution.y[:, -1]
    x_T = jnp.asarray(end[:-batch].reshape(shape), jnp.float32)
    log_likelihood[:, c] = np.asarray(sde.prior_logp(x_T), np.float64) + end[-batch:]
    evaluations[:, c] = _FORWARD_PASSES_PER_RHS * solution.nfev
    success[:, c] = solution.success
  return LikelihoodResult(log_likelihood, evaluations, success)
