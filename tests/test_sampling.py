"""Tests for the class-conditional samplers against a closed-form Gaussian score.

Class y has data N(mu_y, s^2 I); under the VP SDE its marginal at time t is
N(alpha mu_y, v_t I) with v_t = alpha^2 s^2 + sigma^2, so the exact score is
-(x - alpha mu_y) / v_t and every sampler should return N(alpha_eps mu_y, v_eps I).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax import sampling
from sgc_jax import sde as sde_lib

SDE = sde_lib.VPSDE()
STD = 0.5
EPS = 1e-3
IMAGE_SHAPE = (2, 2, 1)
MEANS = jnp.array([[-1.0, 0.5, 0.0, 2.0], [1.5, -0.5, 1.0, 0.0]]).reshape((2,) + IMAGE_SHAPE)
NUM_PER_CLASS = 1000
LABELS = jnp.repeat(jnp.arange(2, dtype=jnp.int32), NUM_PER_CLASS)


def _variance(t):
  alpha = SDE.marginal_mean_coeff(t)
  return alpha**2 * STD**2 + SDE.marginal_std(t) ** 2


def _gaussian_score(x, t, y):
  alpha = sde_lib.broadcast_to_image(SDE.marginal_mean_coeff(t), x)
  return -(x - alpha * MEANS[y]) / sde_lib.broadcast_to_image(_variance(t), x)


@functools.lru_cache(maxsize=None)
def _samples(method):
  return np.asarray(sampling.sample(_gaussian_score, SDE, LABELS, IMAGE_SHAPE,
                                    key=jax.random.PRNGKey(0), method=method, num_steps=200,
                                    eps=EPS))


@pytest.mark.parametrize("method", sampling.METHODS)
def test_samples_have_the_class_mean_and_std(method):
  samples = _samples(method)
  assert samples.shape == (len(LABELS),) + IMAGE_SHAPE
  target_mean = np.asarray(SDE.marginal_mean_coeff(EPS) * MEANS)
  target_std = float(np.sqrt(_variance(EPS)))
  for y in range(2):
    x = samples[np.asarray(LABELS) == y]
    # Standard errors: STD / sqrt(1000) = 0.016 per pixel mean; the std pools
    # 4000 values, STD / sqrt(8000) = 0.006. Allow 3-5 of them; a score 10%
    # too small already shifts the std by 0.03-0.4.
    np.testing.assert_allclose(x.mean(axis=0), target_mean[y], atol=0.08)
    assert abs(np.std(x - target_mean[y]) - target_std) < 0.02


def test_ode_is_the_deterministic_gaussian_transport_of_the_prior_draw():
  # Along the probability flow of a Gaussian, (x_t - alpha_t mu) / sqrt(v_t) is
  # constant, so each sample is an affine function of its own prior draw.
  key = jax.random.PRNGKey(0)
  x_T = SDE.prior_sampling(jax.random.split(key)[0], (len(LABELS),) + IMAGE_SHAPE)
  mu = MEANS[LABELS]
  alpha_T, alpha_eps = SDE.marginal_mean_coeff(SDE.T), SDE.marginal_mean_coeff(EPS)
  expected = alpha_eps * mu + jnp.sqrt(_variance(EPS) / _variance(SDE.T)) * (x_T - alpha_T * mu)
  np.testing.assert_allclose(_samples("ode"), expected, atol=2e-3)


def test_rejects_unknown_method():
  with pytest.raises(ValueError, match="method"):
    sampling.sample(_gaussian_score, SDE, LABELS, IMAGE_SHAPE, key=jax.random.PRNGKey(0),
                    method="ddim")
