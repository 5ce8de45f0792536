"""Flow diagnostics: the ODE likelihood against the denoising bound."""
import jax
import numpy as np
import pytest

from gaussian_fixtures import GaussianClasses
from sgc_jax import estimators, flow_diagnostics, likelihood
from sgc_jax import sde as sde_lib


def test_exact_scores_give_slope_one_and_full_agreement():
  # With the true score the bound is tight for every image and class, so the
  # ODE's class-centred scores equal the bound's up to Monte Carlo noise.
  sde = sde_lib.VPSDE()
  means = np.stack([np.full((2, 2, 1), m) for m in (-0.5, 0.0, 0.5)])
  classes = GaussianClasses(sde, means, 0.3)
  key_y, key_x = jax.random.split(jax.random.PRNGKey(0))
  labels = np.asarray(jax.random.randint(key_y, (24,), 0, 3))
  x = classes.means[labels] + 0.3 * jax.random.normal(key_x, (24, 2, 2, 1))
  ode = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=jax.random.PRNGKey(1),
                                         divergence="exact").log_likelihood
  bound = estimators.denoising_log_likelihoods(classes.score, sde, x, 3,
                                               key=jax.random.PRNGKey(2),
                                               num_time_samples=512).log_likelihood
  report = flow_diagnostics.flow_diagnostics(ode, bound, labels)
  assert report["images"] == 24
  assert report["decision_agreement"] >= 0.95
  assert report["centred_slope"] == pytest.approx(1.0, abs=0.05)
  assert report["centred_correlation"] > 0.99
  # Tight bound: the gap is Monte Carlo noise shared by all classes (D = 4, in
  # nats), the same for the true and the wrong classes.
  assert abs(report["gap_true_class"]) < 1.0
  assert abs(report["gap_true_class"] - report["gap_wrong_classes"]) < 0.15


def test_compressed_flow_shows_a_small_slope_and_a_class_dependent_gap():
  rng = np.random.default_rng(0)
  bound = rng.normal(size=(50, 4)) * 5.0
  labels = bound.argmax(1)
  ode = 0.2 * bound + 3.0 + rng.normal(size=bound.shape) * 0.01
  report = flow_diagnostics.flow_diagnostics(ode, bound, labels)
  assert report["centred_slope"] == pytest.approx(0.2, abs=0.01)
  assert report["decision_agreement"] == 1.0
  # The true class has the largest bound, which the compression pulls down most.
  assert report["gap_true_class"] < report["gap_wrong_classes"]


def test_rows_with_failed_solves_are_left_out_and_shapes_checked():
  ode = np.array([[0.0, 1.0], [np.nan, 0.0], [2.0, 0.0]])
  bound = np.array([[0.0, 2.0], [0.0, 1.0], [4.0, 0.0]])
  report = flow_diagnostics.flow_diagnostics(ode, bound, np.array([1, 1, 0]))
  assert report["images"] == 2 and report["centred_slope"] == pytest.approx(0.5)
  with pytest.raises(ValueError, match="must be"):
    flow_diagnostics.flow_diagnostics(ode, bound[:2], np.array([1, 1, 0]))
