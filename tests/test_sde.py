"""SDE marginals, prior densities and drifts against closed forms and simulation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax import sde as sde_lib

ALL_SDES = [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0)]


def test_vp_marginals_match_closed_form():
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0)
  t = np.array([1e-5, 0.1, 0.5, 1.0])
  log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
  np.testing.assert_allclose(sde.marginal_mean_coeff(t), np.exp(log_alpha), rtol=1e-5)
  np.testing.assert_allclose(sde.marginal_std(t), np.sqrt(1 - np.exp(2 * log_alpha)), rtol=1e-4)


def test_subvp_and_ve_marginals_match_closed_form():
  t = np.array([0.01, 0.3, 1.0])
  sub = sde_lib.SubVPSDE()
  log_alpha = -0.25 * t**2 * 19.9 - 0.05 * t
  np.testing.assert_allclose(sub.marginal_std(t), 1 - np.exp(2 * log_alpha), rtol=1e-4)
  ve = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0)
  np.testing.assert_allclose(ve.marginal_std(t), 0.01 * (5000.0**t), rtol=1e-5)
  np.testing.assert_allclose(ve.diffusion(t), 0.01 * 5000.0**t * np.sqrt(2 * np.log(5000.0)),
                             rtol=1e-5)


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
def test_marginal_variance_obeys_the_sde(sde):
  # d/dt Var = 2 a(t) Var + g(t)^2 for x_0 = 0: the marginal std must solve it.
  t = np.linspace(0.05, 0.95, 7)
  var = lambda s: sde.marginal_std(s) ** 2
  dvar = jax.vmap(jax.grad(lambda s: var(s)))(jnp.asarray(t))
  np.testing.assert_allclose(dvar, 2 * sde.drift_coeff(t) * var(t) + sde.diffusion(t) ** 2,
                             rtol=2e-3, atol=1e-4)
  dmean = jax.vmap(jax.grad(lambda s: sde.marginal_mean_coeff(s)))(jnp.asarray(t))
  np.testing.assert_allclose(dmean, sde.drift_coeff(t) * sde.marginal_mean_coeff(t),
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
def test_euler_maruyama_samples_match_marginals(sde):
  # Simulate the forward SDE from x_0 = 1 and compare mean/std at t = 0.6.
  n, steps, t_end = 20000, 300, 0.6
  dt = t_end / steps
  x = jnp.ones((n, 1, 1, 1))
  key = jax.random.PRNGKey(0)

  def body(carry, i):
    x, key = carry
    key, sub = jax.random.split(key)
    t = jnp.full((n,), i * dt)
    noise = jax.random.normal(sub, x.shape)
    g = sde_lib.broadcast_to_image(sde.diffusion(t), x)
    return (x + sde.drift(x, t) * dt + g * math.sqrt(dt) * noise, key), None

  (x, _), _ = jax.lax.scan(body, (x, key), jnp.arange(steps))
  mean, std = sde.marginal_prob(jnp.ones((1, 1, 1, 1)), jnp.array([t_end]))
  # For VE, std(0) = sigma_min is part of the marginal but not of the simulation.
  expected_var = float(std[0]) ** 2 - (float(sde.marginal_std(0.0)) ** 2
                                       if isinstance(sde, sde_lib.VESDE) else 0.0)
  np.testing.assert_allclose(float(x.mean()), float(mean.ravel()[0]), atol=4 * math.sqrt(expected_var / n) + 2e-3)
  np.testing.assert_allclose(float(x.var()), expected_var, rtol=0.04)


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
def test_prior_logp_is_the_gaussian_density(sde):
  z = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 2, 1)) * sde.prior_std
  s2 = sde.prior_std**2
  expected = (-0.5 * 4 * np.log(2 * np.pi * s2) - 0.5 * np.sum(np.asarray(z) ** 2, (1, 2, 3)) / s2)
  np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)
  samples = sde.prior_sampling(jax.random.PRNGKey(2), (20000, 1, 1, 1))
  assert abs(float(samples.std()) - sde.prior_std) < 0.03 * sde.prior_std


def test_probability_flow_drift_halves_the_score_term():
  sde = sde_lib.VPSDE()
  x = jnp.ones((2, 2, 2, 1))
  t = jnp.array([0.3, 0.7])
  score = jnp.full_like(x, 2.0)
  pf = sde.probability_flow_drift(x, t, score)
  rev = sde.reverse_drift(x, t, score)
  beta = np.asarray(sde.beta(t))[:, None, None, None]
  np.testing.assert_allclose(pf, np.broadcast_to(-0.5 * beta - 0.5 * beta * 2.0, x.shape), rtol=1e-6)
  np.testing.assert_allclose(rev, np.broadcast_to(-0.5 * beta - beta * 2.0, x.shape), rtol=1e-6)


def test_importance_sampling_matches_weighting_integral():
  sde = sde_lib.VPSDE()
  u = jnp.linspace(0.0, 1.0, 2001)[:-1] + 0.5 / 2000
  t, total = sde_lib.importance_sample_time(sde, u, 1e-5)
  # VP closed form: int g^2 / sigma^2 dt = log(e^B(t) - 1) evaluated between eps and 1.
  big_b = lambda s: 0.1 * s + 0.5 * 19.9 * s**2
  expected = np.log(np.expm1(big_b(1.0))) - np.log(np.expm1(big_b(1e-5)))
  np.testing.assert_allclose(total, expected, rtol=1e-3)
  assert float(t.min()) >= 1e-5 and float(t.max()) <= 1.0
  # Half the mass lies below the median of the proposal.
  median = float(jnp.median(t))
  f = lambda s: np.log(np.expm1(big_b(s))) - np.log(np.expm1(big_b(1e-5)))
  np.testing.assert_allclose(f(median), expected / 2, rtol=2e-2)


def test_get_sde_names_the_field_on_error():
  with pytest.raises(ValueError, match="sde.name"):
    sde_lib.get_sde("cosine")
