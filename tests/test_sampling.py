"""Tests for the class-conditional samplers against a closed-form Gaussian score.

Class y has data N(mu_y, s^2 I); under the VP SDE its marginal at time t is
N(alpha mu_y, v_t I) with v_t = alpha^2 s^2 + sigma^2, so the exact score is
-(x - alpha mu_y) / v_t and every sampler should return N(alpha_eps mu_y, v_eps I).
One batch shape per sampler keeps the compilations few: the step count is
traced, so every step count reuses the sampler compiled for that batch.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaussian_fixtures import GaussianClasses
from sgc_jax import sampling
from sgc_jax import sde as sde_lib

SDE = sde_lib.VPSDE()
STD = 0.5
EPS = 1e-3
IMAGE_SHAPE = (2, 2, 1)
MEANS = jnp.array([[-1.0, 0.5, 0.0, 2.0], [1.5, -0.5, 1.0, 0.0]]).reshape((2,) + IMAGE_SHAPE)
CLASSES = GaussianClasses(SDE, MEANS, STD)
NUM_PER_CLASS = 1000
LABELS = jnp.repeat(jnp.arange(2, dtype=jnp.int32), NUM_PER_CLASS)
KEY = jax.random.PRNGKey(0)
# Solvers checked at fixed steps, and one adaptive (rtol = atol = 1e-2). SRA1
# shares ShARK's additive-noise SRK code in Diffrax; each solver costs a compile.
FIXED = ("ode", "euler_maruyama", "shark")
ADAPTIVE = "heun"


def _samples(method, num_steps=100, adaptive=False, permuted=False):
  return _cached_samples(method, num_steps, adaptive, permuted)


@functools.lru_cache(maxsize=None)
def _cached_samples(method, num_steps, adaptive, permuted):
  # The ODE keeps tight tolerances: its transport test is pathwise.
  tol = 1e-5 if method == "ode" else 1e-2
  keys = sampling.per_sample_keys(KEY, len(LABELS))
  order = np.arange(len(LABELS))[::-1] if permuted else np.arange(len(LABELS))
  return sampling.sample(CLASSES.score, SDE, LABELS[order], IMAGE_SHAPE, key=keys[order],
                         method=method, num_steps=num_steps, adaptive=adaptive, rtol=tol,
                         atol=tol, eps=EPS)


def _check_class_moments(samples, labels, classes, mean_atol, std_atol):
  target_mean = np.asarray(SDE.marginal_mean_coeff(EPS) * classes.means)
  target_std = float(np.sqrt(classes.variance(EPS)))
  for y in range(len(target_mean)):
    x = samples[labels == y]
    np.testing.assert_allclose(x.mean(axis=0), target_mean[y], atol=mean_atol)
    assert abs(np.std(x - target_mean[y]) - target_std) < std_atol


@pytest.mark.parametrize("method,adaptive", [(m, False) for m in FIXED] + [(ADAPTIVE, True)])
def test_samples_have_the_class_mean_and_std(method, adaptive):
  result = _samples(method, adaptive=adaptive)
  samples = np.asarray(result.images)
  assert samples.shape == (len(LABELS),) + IMAGE_SHAPE
  assert bool(result.success.all())
  # Standard errors: STD / sqrt(1000) = 0.016 per pixel mean; the std pools
  # 4000 values, STD / sqrt(8000) = 0.006. Allow 3-5 of them; a score 10%
  # too small already shifts the std by 0.03-0.4.
  _check_class_moments(samples, np.asarray(LABELS), CLASSES, mean_atol=0.08, std_atol=0.02)


def test_network_evaluations_follow_the_solver():
  nfe = {m: np.asarray(_samples(m).num_function_evals) for m in FIXED}
  # 99 solver steps plus the denoising step; ShARK evaluates the drift twice a step.
  np.testing.assert_array_equal(nfe["euler_maruyama"], 100)
  np.testing.assert_array_equal(nfe["shark"], 2 * 99 + 1)
  # Tsit5 costs 6 a step (first same as last); adaptive steps vary per sample.
  assert (nfe["ode"] % 6 == 0).all() and nfe["ode"].min() > 6
  adaptive = np.asarray(_samples(ADAPTIVE, adaptive=True).num_function_evals)
  assert (adaptive % 2 == 1).all() and adaptive.std() > 0


@pytest.mark.parametrize("method", ["euler_maruyama", "shark"])
def test_samples_converge_path_by_path_as_steps_are_added(method):
  # Every step count queries the same Brownian tree and prior draw, so the
  # samples converge to the sample of a fine grid; the noise-free last step
  # (an O(dt) Euler step) bounds the order at 1. Fresh noise per step count
  # (the old per-batch draws) would leave an O(1) error at every step count.
  reference = np.asarray(_samples(method, 100).images)
  errors = [np.mean(np.abs(np.asarray(_samples(method, n).images) - reference))
            for n in (8, 32)]
  # Against the 100-step path, order 1 predicts the ratio
  # (1/8 - 1/100) / (1/32 - 1/100) = 5.4.
  assert errors[0] / errors[1] > 2.5, errors
  assert errors[1] < 0.15, errors


def test_ode_is_the_deterministic_gaussian_transport_of_the_prior_draw():
  # Along the probability flow of a Gaussian, (x_t - alpha_t mu) / sqrt(v_t) is
  # constant, so each sample is an affine function of its own prior draw.
  keys = sampling.per_sample_keys(KEY, len(LABELS))
  x_T = jax.vmap(lambda k: SDE.prior_sampling(jax.random.split(k)[0], IMAGE_SHAPE))(keys)
  mu = MEANS[LABELS]
  alpha_T, alpha_eps = SDE.marginal_mean_coeff(SDE.T), SDE.marginal_mean_coeff(EPS)
  ratio = CLASSES.variance(EPS) / CLASSES.variance(SDE.T)
  expected = alpha_eps * mu + jnp.sqrt(ratio) * (x_T - alpha_T * mu)
  np.testing.assert_allclose(_samples("ode").images, expected, atol=2e-3)


# Predictor-corrector in 64 dimensions: its per-image Langevin step divides by
# the image's own ||s||, which concentrates only when there are many pixels.
PC_SHAPE = (8, 8, 1)
PC_CLASSES = GaussianClasses(SDE, jnp.stack([
    jnp.full(PC_SHAPE, -0.5), jnp.where(jnp.arange(64) % 2 == 0, 0.5, -1.0).reshape(PC_SHAPE)]),
    STD)
PC_LABELS = jnp.repeat(jnp.arange(2, dtype=jnp.int32), 250)


@functools.lru_cache(maxsize=None)
def _pc_samples():
  return sampling.sample(PC_CLASSES.score, SDE, PC_LABELS, PC_SHAPE, key=KEY, method="pc",
                         num_steps=100, eps=EPS)


def test_a_sample_does_not_depend_on_its_batch_mates():
  # Adaptive steps with per-sample error control: the same (label, key) pairs
  # in reverse order give the same samples, step counts included.
  forward, backward = _samples(ADAPTIVE, adaptive=True), _samples(ADAPTIVE, adaptive=True,
                                                                  permuted=True)
  np.testing.assert_allclose(forward.images, backward.images[::-1], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(forward.num_function_evals, backward.num_function_evals[::-1])


def test_a_sample_alone_equals_the_same_sample_in_a_batch():
  # The corrector's step uses the image's own norms, not the batch's.
  batch = _pc_samples()
  keys = sampling.per_sample_keys(KEY, len(PC_LABELS))
  i = 3
  alone = sampling.sample(PC_CLASSES.score, SDE, PC_LABELS[i:i + 1], PC_SHAPE, key=keys[i:i + 1],
                          method="pc", num_steps=100, eps=EPS)
  np.testing.assert_allclose(alone.images[0], batch.images[i], rtol=1e-5, atol=1e-5)


def test_predictor_corrector_has_the_class_mean_and_std():
  result = _pc_samples()
  np.testing.assert_array_equal(result.num_function_evals, 2 * 99 + 1)
  # Standard errors: 0.5 / sqrt(250) = 0.03 per pixel mean, the pooled std 0.002.
  _check_class_moments(np.asarray(result.images), np.asarray(PC_LABELS), PC_CLASSES,
                       mean_atol=0.15, std_atol=0.02)


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="method"):
    sampling.sample(CLASSES.score, SDE, LABELS, IMAGE_SHAPE, key=KEY, method="ddim")
  with pytest.raises(ValueError, match="adaptive"):
    sampling.sample(CLASSES.score, SDE, LABELS, IMAGE_SHAPE, key=KEY, method="euler_maruyama",
                    adaptive=True)
  with pytest.raises(ValueError, match="num_steps"):
    sampling.sample(CLASSES.score, SDE, LABELS, IMAGE_SHAPE, key=KEY, method="shark", num_steps=1)
  with pytest.raises(ValueError, match="key"):
    sampling.sample(CLASSES.score, SDE, LABELS, IMAGE_SHAPE, key=jax.random.split(KEY, 3),
                    method="shark")
