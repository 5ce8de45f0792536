"""The reimplemented seed likelihood path, and a hand-written Euler integration, against the engine."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sgc_jax import likelihood, reference_likelihood
from sgc_jax import sde as sde_lib
from test_likelihood import DIM, EPS, exact_table, images, make_classes


def test_seed_path_matches_the_closed_form():
  # The Gaussian classes' drift has a diagonal Jacobian, so one Rademacher probe
  # gives the exact divergence and only the RK45 error remains.
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 3)
  result = reference_likelihood.seed_class_log_likelihoods(
      classes.score, sde, x, 3, key=jax.random.PRNGKey(0), eps=EPS, probe="rademacher")
  assert result.success.all()
  err = np.abs(result.log_likelihood - np.asarray(exact_table(classes, x))) / DIM
  assert err.max() <= 1e-3, err
  # One error norm for the whole batch: every image of a class reports the same cost.
  assert (result.num_function_evals == result.num_function_evals[0]).all()
  assert result.num_function_evals.min() > 2


def test_seed_path_agrees_with_the_engine():
  sde = sde_lib.SubVPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 4, seed=2)
  ours = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=jax.random.PRNGKey(0),
                                          divergence="exact", rtol=1e-6, atol=1e-6)
  seed = reference_likelihood.seed_class_log_likelihoods(
      classes.score, sde, x, 3, key=jax.random.PRNGKey(1), probe="rademacher")
  np.testing.assert_allclose(seed.log_likelihood, ours.log_likelihood, atol=1e-3 * DIM)


# A tiny network with a non-diagonal Jacobian: s(x, t, y) = -(x - alpha mu_y) / v(t)
# + W2 tanh(W1 x + b_y + w t). Its Jacobian trace is written out by hand below.
_NET = np.random.default_rng(3)
_W1 = 0.25 * _NET.standard_normal((16, DIM))
_W2 = 0.25 * _NET.standard_normal((DIM, 16))
_B = 0.5 * _NET.standard_normal((3, 16))
_WT = _NET.standard_normal(16)
_MU = 0.8 * _NET.standard_normal((3, DIM))
_S2 = 0.25   # the Gaussian part's data variance


def _vp(sde, t):
  """beta(t), alpha(t) and v(t) = alpha^2 s^2 + sigma^2 of the VP SDE, by hand."""
  beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
  alpha = np.exp(-0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min)
  return beta, alpha, alpha**2 * _S2 + 1.0 - alpha**2


def _net_score(x, t, y, sde):
  """The tiny network on the engine's interface: x [B,H,W,C], t [B], y [B]."""
  beta_min, delta = sde.beta_min, sde.beta_max - sde.beta_min
  alpha = jnp.exp(-0.25 * t**2 * delta - 0.5 * t * beta_min)[:, None]
  v = alpha**2 * _S2 + 1.0 - alpha**2
  flat = x.reshape(x.shape[0], -1)
  w1, w2, b, wt, mu = (jnp.asarray(a, x.dtype) for a in (_W1, _W2, _B, _WT, _MU))
  hidden = jnp.tanh(flat @ w1.T + b[y] + t[:, None] * wt)
  score = -(flat - alpha * mu[y]) / v + hidden @ w2.T
  return score.astype(x.dtype).reshape(x.shape)


def _euler_log_likelihoods(sde, x, num_steps):
  """log p(x | y) for every image and class by fixed-step Euler in float64 numpy.

  The divergence is the Jacobian trace in closed form:
  tr J = -D / v + sum_k (1 - h_k^2) (W1 W2)_kk.
  """
  x = np.asarray(x, np.float64).reshape(len(x), 1, DIM).repeat(3, axis=1)   # [B, C, D]
  y = np.arange(3)
  diag = np.einsum("ki,ik->k", _W1, _W2)
  delta = np.zeros(x.shape[:2])
  times = np.linspace(EPS, sde.T, num_steps + 1)
  for t, t_next in zip(times[:-1], times[1:]):
    beta, alpha, v = _vp(sde, t)
    hidden = np.tanh(x @ _W1.T + _B[y] + t * _WT)
    score = -(x - alpha * _MU[y]) / v + hidden @ _W2.T
    trace = -DIM / v + ((1.0 - hidden**2) * diag).sum(-1)
    h = t_next - t
    x, delta = (x + h * (-0.5 * beta * x - 0.5 * beta * score),
                delta + h * (-0.5 * beta * DIM - 0.5 * beta * trace))
  prior = -0.5 * DIM * np.log(2 * np.pi) - 0.5 * (x**2).sum(-1)
  return prior + delta


def test_engine_matches_a_hand_written_euler_integration():
  # A non-Gaussian field (the tanh layer couples the pixels), so no closed form:
  # the reference is Euler with the exact trace. Its O(h) error halves with h
  # (measured: 0.28 and 0.14 nats at 2000 and 4000 steps), and Richardson's
  # 2 E(h/2) - E(h) cancels it (measured: 0.002 nats from the engine).
  sde = sde_lib.VPSDE()
  x = jnp.asarray(_MU + 0.5 * np.random.default_rng(1).standard_normal((3, DIM)),
                  jnp.float32).reshape(3, 3, 3, 1)   # image i near class i
  score = functools.partial(_net_score, sde=sde)   # compiled in, like a plain function
  ours = likelihood.class_log_likelihoods(score, sde, x, 3, key=jax.random.PRNGKey(0),
                                          divergence="exact", eps=EPS)
  assert ours.success.all()
  ours = np.asarray(ours.log_likelihood, np.float64)
  coarse, fine = (_euler_log_likelihoods(sde, x, n) for n in (2000, 4000))
  err_coarse, err_fine = np.abs(coarse - ours).max(), np.abs(fine - ours).max()
  assert 1.8 < err_coarse / err_fine < 2.2, (err_coarse, err_fine)   # first order, converging
  err = np.abs(2 * fine - coarse - ours) / DIM
  assert err.max() <= 1e-3, err
