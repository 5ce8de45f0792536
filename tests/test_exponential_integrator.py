"""The log-SNR exponential integrator against closed forms: weights, order, batch independence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaussian_fixtures import anisotropic_classes, sample_images
from sgc_jax import exponential_integrator as ei
from sgc_jax import likelihood
from sgc_jax import sde as sde_lib

H, W, CH = 3, 3, 1
DIM = H * W * CH
EPS = 1e-5


def make_classes(sde):
  return anisotropic_classes(sde, (H, W, CH))


def images(classes, n, seed=0):
  return sample_images(classes, n, seed)[0]


def test_logsnr_grid_is_even_in_log_snr():
  sde = sde_lib.VPSDE()
  ts = ei.time_grid(sde, EPS, 1.0, 10, "logsnr")
  alpha, sigma = np.asarray(sde.marginal_mean_coeff(ts)), np.asarray(sde.marginal_std(ts))
  steps = np.diff(np.log(alpha) - np.log(sigma))
  np.testing.assert_allclose(steps, steps.mean(), rtol=1e-4)
  assert ts[0] == EPS and ts[-1] == 1.0


def test_first_order_weights_are_ddim_and_the_closed_form_sigma_integral():
  # VP: order 1 is DDIM in the noise form, x_{i+1} = (a1/a0) x_i - s1 (e^h - 1) eps,
  # and int sigma(lambda) dlambda = -asinh(e^-lambda) because sigma = (1 + e^(2 lambda))^-1/2.
  sde = sde_lib.VPSDE()
  sched = ei.make_schedule(sde, eps=EPS, T=1.0, num_steps=7, order=1)
  ts = sched.ts
  with jax.enable_x64(True):
    alpha = np.asarray(sde.marginal_mean_coeff(jnp.asarray(ts)))
    sigma = np.asarray(sde.marginal_std(jnp.asarray(ts)))
  lam = np.log(alpha / sigma)
  h = np.diff(lam)
  np.testing.assert_allclose(sched.x_weights[:, 0], -sigma[1:] * np.expm1(h), rtol=1e-10)
  expected_div = np.arcsinh(np.exp(-lam[1:])) - np.arcsinh(np.exp(-lam[:-1]))
  np.testing.assert_allclose(sched.div_weights[:, 0], expected_div, rtol=1e-9)
  np.testing.assert_allclose(sched.decay, alpha[1:] / alpha[:-1], rtol=1e-12)


def test_multistep_weights_integrate_polynomials_exactly():
  # Order k reproduces int e^(-lambda) p(lambda) for every p of degree < k.
  sde = sde_lib.VPSDE()
  sched = ei.make_schedule(sde, eps=EPS, T=1.0, num_steps=6, order=3)
  with jax.enable_x64(True):
    alpha = np.asarray(sde.marginal_mean_coeff(jnp.asarray(sched.ts)))
    sigma = np.asarray(sde.marginal_std(jnp.asarray(sched.ts)))
  lam = np.log(alpha / sigma)
  i = 4                                               # a step with a full history
  nodes = lam[i::-1][:3]
  a, b = lam[i], lam[i + 1]
  # int_a^b e^-l l^2 dl = [-e^-l (l^2 + 2 l + 2)]_a^b
  antiderivative = lambda l: -np.exp(-l) * (l**2 + 2 * l + 2)
  expected = -alpha[i + 1] * (antiderivative(b) - antiderivative(a))
  np.testing.assert_allclose(sched.x_weights[i] @ nodes**2, expected, rtol=1e-9)


@pytest.mark.parametrize("solver,order", [("expint1", 1), ("expint2", 2), ("expint3", 3)])
def test_error_falls_at_the_solvers_order(solver, order):
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  with jax.enable_x64(True):
    x = images(classes, 2, seed=1).astype(jnp.float64)
    y = jnp.array([0, 2])
    exact = np.array([classes.exact_log_likelihood(xi, yi, EPS) for xi, yi in zip(x, y)])
    errors = []
    for n in (64, 128, 256):
      sched = ei.make_schedule(sde, eps=EPS, T=1.0, num_steps=n, order=order)

      def one(xi, yi, sched=sched):
        def score_div(t, z, step):
          del step                                  # the exact trace needs no probes
          tb = jnp.reshape(t, (1,))
          score = classes.score(z[None], tb, yi[None])[0]
          return score, jnp.sum(-1.0 / classes.variance(t))   # the exact trace
        x_T, delta = ei.solve(score_div, xi, sched)
        return sde.prior_logp(x_T[None])[0] + delta

      errors.append(np.abs(np.asarray(jax.vmap(one)(x, y)) - exact).max())
  # Each doubling of the steps divides the error by about 2^order.
  rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
  assert rates.min() >= order - 0.3, (errors, rates)


def test_engine_option_matches_closed_form_and_is_batch_independent():
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x = images(classes, 5, seed=3)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(5), i))(jnp.arange(5))
  kwargs = dict(solver="expint3", adaptive=False, num_steps=64, grid="logsnr")
  batch = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=keys, **kwargs)
  alone = likelihood.class_log_likelihoods(classes.score, sde, x[2:3], 3, key=keys[2:3], **kwargs)
  np.testing.assert_allclose(batch.log_likelihood[2], alone.log_likelihood[0], rtol=1e-6,
                             atol=1e-5)
  # One network evaluation per step, for every (image, class).
  assert (np.asarray(batch.num_function_evals) == 64).all()
  exact = np.array([[classes.exact_log_likelihood(xi, c, EPS) for c in range(3)] for xi in x])
  # The Rademacher estimate is exact for these diagonal Jacobians: only solver error remains.
  err = np.abs(np.asarray(batch.log_likelihood) - exact) / DIM
  assert err.max() < 2e-3, err


def test_fixed_step_only_and_grid_errors_are_specific():
  sde = sde_lib.VPSDE()
  x = jnp.zeros((1, 2, 2, 1))
  score = lambda z, t, y: -z
  with pytest.raises(ValueError, match="adaptive=False"):
    likelihood.class_log_likelihoods(score, sde, x, 2, key=jax.random.PRNGKey(0),
                                     solver="expint2")
  with pytest.raises(ValueError, match="grid"):
    ei.time_grid(sde, EPS, 1.0, 4, "cubic")
  with pytest.raises(ValueError, match="expint"):
    ei.order_of("expint9")
