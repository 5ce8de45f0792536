"""Flow diagnostics: the ODE likelihood against the denoising bound."""
import jax
import numpy as np
import pytest

from gaussian_fixtures import GaussianClasses
from sgc_jax import estimators, flow_diagnostics, likelihood
from sgc_jax import sde as sde_lib


@pytest.fixture(scope="module")
def exact_flow():
  """Closed-form classes scored by their true score: the exact ODE and two bound halves.

  With the true score the bound is tight for every image and class, so the
  ODE's class-centred scores equal the bound's up to the bound's Monte Carlo
  noise: the true slope is 1. 1,024 images, so that slopes fitted against a
  bound with added noise are within a few hundredths of their limit.
  """
  sde = sde_lib.VPSDE()
  means = np.stack([np.full((2, 2, 1), m) for m in (-0.5, 0.0, 0.5)])
  classes = GaussianClasses(sde, means, 0.3)
  key_y, key_x = jax.random.split(jax.random.PRNGKey(0))
  labels = np.asarray(jax.random.randint(key_y, (1024,), 0, 3))
  x = classes.means[labels] + 0.3 * jax.random.normal(key_x, (1024, 2, 2, 1))
  ode = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=jax.random.PRNGKey(1),
                                         divergence="exact").log_likelihood
  # Two independent bounds of 256 (t, z) samples each; their mean is a 512-sample bound.
  halves = [np.asarray(estimators.denoising_log_likelihoods(
      classes.score, sde, x, 3, key=key, num_time_samples=256).log_likelihood)
            for key in jax.random.split(jax.random.PRNGKey(2))]
  return np.asarray(ode), halves, labels


def test_exact_scores_give_slope_one_and_full_agreement(exact_flow):
  ode, halves, labels = exact_flow
  bound = (halves[0] + halves[1]) / 2
  report = flow_diagnostics.flow_diagnostics(ode, bound, labels, bound_halves=halves)
  assert report["images"] == 1024
  assert report["decision_agreement"] >= 0.95
  assert report["centred_slope"] == pytest.approx(1.0, abs=0.05)
  assert report["centred_correlation"] > 0.99
  # The bound's own noise (measured: 0.49 nats against a centred spread of 8)
  # barely attenuates least squares here; the corrected slope is 1.00 too.
  assert report["bound_noise_from"] == "halves"
  assert 0.0 < report["bound_noise_std"] < 1.0
  assert report["centred_slope_deming"] == pytest.approx(1.0, abs=0.02)
  # Tight bound: the gap is Monte Carlo noise shared by all classes (D = 4, in
  # nats), the same for the true and the wrong classes.
  assert abs(report["gap_true_class"]) < 1.0
  assert abs(report["gap_true_class"] - report["gap_wrong_classes"]) < 0.15


# Noise added to every (image, class) bound score: 6 nats, 4.9 after class
# centring (x sqrt(2/3) for 3 classes), against a centred spread of 8.1 nats,
# so least squares attenuates by 66 / (66 + 24) ~ 0.73.
_ADDED_NOISE = 6.0


def test_noisy_bound_attenuates_least_squares_but_not_the_halves_fit(exact_flow):
  ode, halves, labels = exact_flow
  rng = np.random.default_rng(0)
  # Each half gets twice the variance, so that their mean carries _ADDED_NOISE.
  noisy = [h + rng.normal(size=h.shape) * _ADDED_NOISE * np.sqrt(2) for h in halves]
  bound = (noisy[0] + noisy[1]) / 2
  report = flow_diagnostics.flow_diagnostics(ode, bound, labels, bound_halves=noisy)
  assert report["centred_slope"] < 0.8
  assert report["centred_slope_deming"] == pytest.approx(1.0, abs=0.1)
  assert report["bound_noise_std"] == pytest.approx(_ADDED_NOISE * np.sqrt(2 / 3), rel=0.05)
  # Without halves the orthogonal fit assumes the exact ODE as noisy as the
  # bound: better than least squares, still short of 1 (module docstring).
  plain = flow_diagnostics.flow_diagnostics(ode, bound, labels)
  assert report["centred_slope"] < plain["centred_slope_deming"] < 0.9


def test_orthogonal_fit_recovers_the_slope_when_both_scores_are_equally_noisy(exact_flow):
  ode, halves, labels = exact_flow
  rng = np.random.default_rng(1)
  bound = (halves[0] + halves[1]) / 2 + rng.normal(size=ode.shape) * _ADDED_NOISE
  ode = ode + rng.normal(size=ode.shape) * _ADDED_NOISE
  report = flow_diagnostics.flow_diagnostics(ode, bound, labels)
  assert report["bound_noise_from"] == "orthogonal fit"
  assert report["centred_slope"] < 0.8
  assert report["centred_slope_deming"] == pytest.approx(1.0, abs=0.1)
  assert report["bound_noise_std"] == pytest.approx(_ADDED_NOISE * np.sqrt(2 / 3), rel=0.05)


def test_the_halves_fit_is_deming_regression_at_the_implied_error_ratio():
  rng = np.random.default_rng(2)
  signal = rng.normal(size=(400, 3)) * 3.0
  halves = [signal + rng.normal(size=signal.shape) * 2.0 for _ in range(2)]
  bound = (halves[0] + halves[1]) / 2
  for slope in (0.5, -0.7):
    ode = slope * signal + rng.normal(size=signal.shape)
    report = flow_diagnostics.flow_diagnostics(ode, bound, np.zeros(400, int),
                                               bound_halves=halves)
    ode_c = (ode - ode.mean(1, keepdims=True)).ravel()
    bound_c = (bound - bound.mean(1, keepdims=True)).ravel()
    var_x, var_y, cov = np.mean(bound_c**2), np.mean(ode_c**2), np.mean(ode_c * bound_c)
    fitted, noise_var = report["centred_slope_deming"], report["bound_noise_std"]**2
    ratio = (var_y - fitted * cov) / noise_var
    assert ratio > 0
    assert flow_diagnostics._deming_slope(var_x, var_y, cov, ratio) == pytest.approx(fitted)
    assert fitted == pytest.approx(slope, abs=0.1)


def test_compressed_flow_shows_a_small_slope_and_a_class_dependent_gap():
  rng = np.random.default_rng(0)
  bound = rng.normal(size=(50, 4)) * 5.0
  labels = bound.argmax(1)
  ode = 0.2 * bound + 3.0 + rng.normal(size=bound.shape) * 0.01
  report = flow_diagnostics.flow_diagnostics(ode, bound, labels)
  assert report["centred_slope"] == pytest.approx(0.2, abs=0.01)
  # Hardly any scatter: the orthogonal fit agrees with least squares.
  assert report["centred_slope_deming"] == pytest.approx(0.2, abs=0.01)
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
  with pytest.raises(ValueError, match="two tables"):
    flow_diagnostics.flow_diagnostics(ode, bound, np.array([1, 1, 0]), bound_halves=(bound,))
  # A half that failed leaves its row out too.
  half = bound.copy()
  half[2, 0] = np.inf
  report = flow_diagnostics.flow_diagnostics(ode, bound, np.array([1, 1, 0]),
                                             bound_halves=(half, bound))
  assert report["images"] == 1
