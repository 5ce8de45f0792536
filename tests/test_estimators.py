"""Tests for the denoising-ELBO likelihood estimator against closed-form Gaussians.

Each class y has data N(mu_y, s^2 I). Its score under every SDE here is exact and
closed form: the marginal at time t is N(alpha mu_y, (alpha^2 s^2 + sigma^2) I).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial
from scipy import integrate

from sgc_jax import estimators
from sgc_jax import sde as sde_lib

NUM_CLASSES = 3
STD = 0.5
EPS = 1e-5
IMAGE_SHAPE = (4, 4, 1)  # D = 16
DIM = 16
_RNG = np.random.default_rng(0)
MEANS = jnp.asarray(1.5 * _RNG.standard_normal((NUM_CLASSES,) + IMAGE_SHAPE), jnp.float32)
SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE(), "ve": sde_lib.VESDE()}


def _gaussian_score(scale, x, t, y, *, sde):
  """`scale` times the exact class-conditional score (scale = 1 is exact)."""
  alpha = sde_lib.broadcast_to_image(sde.marginal_mean_coeff(t), x)
  var = alpha**2 * STD**2 + sde_lib.broadcast_to_image(sde.marginal_std(t), x) ** 2
  return -scale * (x - alpha * MEANS[y]) / var


# One function object per SDE, so that jit caches its compilation across tests.
_SCORES = {name: functools.partial(_gaussian_score, sde=sde) for name, sde in SDES.items()}


def _score_fn(name, scale=1.0):
  # The scale is a traced argument: one compilation serves every scale.
  return Partial(_SCORES[name], jnp.float32(scale))




def _gaussian_logpdf(x, means, var):
  """log N(x; mean_c, var I) for images [B, ...] and means [C, ...] -> [B, C]."""
  sq = np.sum((np.asarray(x)[:, None] - np.asarray(means)[None]) ** 2, axis=(2, 3, 4))
  return -0.5 * DIM * np.log(2 * np.pi * var) - 0.5 * sq / var


LABELS = np.tile(np.arange(NUM_CLASSES), 4)
X = MEANS[LABELS] + STD * jnp.asarray(_RNG.standard_normal((len(LABELS),) + IMAGE_SHAPE),
                                      jnp.float32)


@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_score_recovers_the_log_density(name):
  sde = SDES[name]
  result = estimators.denoising_log_likelihoods(
      _score_fn(name), sde, X, NUM_CLASSES, key=jax.random.PRNGKey(2), num_time_samples=8192,
      eps=EPS)
  exact = _gaussian_logpdf(X, MEANS, STD**2 + float(sde.marginal_std(EPS)) ** 2)
  err = np.asarray(result.log_likelihood) - exact
  # With the exact score the bound is tight (up to the prior mismatch, far below
  # a nat), so what is left is Monte Carlo noise at K = 8192 (measured: at most
  # 1.4 nats per entry; mean error over the 36 entries 0.10, -0.24 and 0.10 nats
  # for VP, sub-VP and VE). A 1-nat bias fails this.
  assert np.all(np.abs(err) < 2.0), err
  assert abs(err.mean()) < 0.5, err


def _vp_model_moments(sde, scale):
  """Mean coefficient k and variance P of x_eps under the reverse VP SDE with a scaled score.

  With score scale * s_exact the reverse SDE is still linear, so its samples are
  N(k mu_y, P I); the moments follow ODEs integrated from the prior at T down to eps.
  """
  delta = sde.beta_max - sde.beta_min

  def rhs(t, state):
    k, var = state
    beta = sde.beta_min + t * delta
    alpha = np.exp(-0.25 * t**2 * delta - 0.5 * t * sde.beta_min)
    v = alpha**2 * STD**2 + 1 - alpha**2
    a, g2 = -0.5 * beta, beta
    return [a * k + g2 * scale * (k - alpha) / v, 2 * (a + g2 * scale / v) * var - g2]

  sol = integrate.solve_ivp(rhs, (sde.T, EPS), [0.0, sde.prior_std**2], method="LSODA",
                            rtol=1e-10, atol=1e-12)
  return sol.y[:, -1]


def test_estimate_lower_bounds_a_misspecified_model():
  # An under-confident score (0.7 x exact) defines a broader Gaussian model whose
  # forward and reverse path measures differ, so the ELBO is strictly below its
  # log-density, by several nats here (versus < 1 nat of noise).
  sde = SDES["vp"]
  k, var = _vp_model_moments(sde, 0.7)
  model = _gaussian_logpdf(X, k * MEANS, var)
  result = estimators.denoising_log_likelihoods(
      _score_fn("vp", 0.7), sde, X, NUM_CLASSES, key=jax.random.PRNGKey(2),
      num_time_samples=8192, eps=EPS)
  gap = model - np.asarray(result.log_likelihood)
  assert np.all(gap > 1.0), gap
  # Sanity check of the reference: the exact score gives back the data model.
  np.testing.assert_allclose(_vp_model_moments(sde, 1.0), [1.0, STD**2], rtol=1e-4)


def test_fields_and_argmax_is_the_nearest_mean():
  # K = 64 (the default): class differences are still clear, at hundreds of nats.
  sde = SDES["vp"]
  result = estimators.denoising_log_likelihoods(
      _score_fn("vp"), sde, X, NUM_CLASSES, key=jax.random.PRNGKey(4), num_time_samples=64)
  assert result.log_likelihood.shape == (len(X), NUM_CLASSES)
  np.testing.assert_array_equal(result.num_function_evals, 64)
  assert bool(jnp.all(result.success))
  sq_dist = np.sum((np.asarray(X)[:, None] - np.asarray(MEANS)[None]) ** 2, axis=(2, 3, 4))
  np.testing.assert_array_equal(np.argmax(result.log_likelihood, axis=1),
                                np.argmin(sq_dist, axis=1))


def test_an_image_does_not_depend_on_its_batch():
  sde = SDES["vp"]
  key = jax.random.PRNGKey(5)
  batch = estimators.denoising_log_likelihoods(
      _score_fn("vp"), sde, X, NUM_CLASSES, key=key, num_time_samples=64)
  for i in (0, 4):
    alone = estimators.denoising_log_likelihoods(
        _score_fn("vp"), sde, X[i:i + 1], NUM_CLASSES, key=key, num_time_samples=64)
    np.testing.assert_allclose(alone.log_likelihood[0], batch.log_likelihood[i],
                               rtol=1e-6, atol=1e-4)


def _shifted_score(offset, x, t, y):
  return _SCORES["vp"](1.0, x, t, y + offset)


def test_all_classes_at_once_equal_a_loop_over_classes():
  sde = SDES["vp"]
  key = jax.random.PRNGKey(6)
  together = estimators.denoising_log_likelihoods(
      _score_fn("vp"), sde, X, NUM_CLASSES, key=key, num_time_samples=64)
  for c in range(NUM_CLASSES):
    one_class = Partial(_shifted_score, jnp.int32(c))  # class 0 of this model is class c
    alone = estimators.denoising_log_likelihoods(one_class, sde, X, 1, key=key,
                                                 num_time_samples=64)
    np.testing.assert_allclose(alone.log_likelihood[:, 0], together.log_likelihood[:, c],
                               rtol=1e-6, atol=1e-4)


def test_time_chunks_equal_one_batch():
  sde = SDES["vp"]
  key = jax.random.PRNGKey(7)
  full = estimators.denoising_log_likelihoods(
      _score_fn("vp"), sde, X, NUM_CLASSES, key=key, num_time_samples=64)
  # 64 = 2 chunks of 24 + a remainder of 16.
  chunked = estimators.denoising_log_likelihoods(
      _score_fn("vp"), sde, X, NUM_CLASSES, key=key, num_time_samples=64, time_batch_size=24)
  np.testing.assert_allclose(chunked.log_likelihood, full.log_likelihood, rtol=1e-6, atol=1e-4)


def test_halves_are_the_bounds_of_the_even_and_the_odd_samples():
  sde, key, k = SDES["vp"], jax.random.PRNGKey(8), 64
  result = estimators.denoising_log_likelihoods(
      _score_fn("vp", 0.8), sde, X, NUM_CLASSES, key=key, num_time_samples=k)
  halves = np.asarray(result.half_log_likelihoods, np.float64)
  assert halves.shape == (len(X), 2, NUM_CLASSES)
  np.testing.assert_allclose(halves.mean(axis=1), result.log_likelihood, rtol=1e-6, atol=1e-4)
  # Sample i sits at u = (i + offset) / K: the even ones are a K/2-sample bound
  # at offset / 2, the odd ones one at (1 + offset) / 2, each with its own z.
  offset_key, noise_key = jax.random.split(key)
  offset = jax.random.uniform(offset_key, ())
  z = jax.random.normal(noise_key, (k,) + X.shape[1:])
  for half, (start, shift) in enumerate(((0, offset / 2), (1, (1 + offset) / 2))):
    alone = estimators._denoising_log_likelihoods(
        _score_fn("vp", 0.8), X, shift, z[start::2], sde=sde, num_classes=NUM_CLASSES,
        eps=1e-5, time_batch_size=None)
    np.testing.assert_allclose(halves[:, half], alone.log_likelihood, rtol=1e-5, atol=1e-3)
  # An odd K has no halves with the bound as their mean.
  odd = estimators.denoising_log_likelihoods(_score_fn("vp"), sde, X, NUM_CLASSES, key=key,
                                             num_time_samples=7)
  assert odd.half_log_likelihoods is None


def test_rejects_non_image_input():
  sde = SDES["vp"]
  with pytest.raises(ValueError, match="x: expected images"):
    estimators.denoising_log_likelihoods(_score_fn("vp"), sde, X[:, :, :, 0], NUM_CLASSES,
                                         key=jax.random.PRNGKey(0))
