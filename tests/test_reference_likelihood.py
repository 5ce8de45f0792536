"""The reimplemented seed likelihood path against closed forms and against the engine."""
import jax
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
