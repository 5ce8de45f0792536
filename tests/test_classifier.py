"""Tests for the Bayes decision layer: priors, posteriors, temperature fit."""
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from sgc_jax import classifier
from sgc_jax import metrics


def _synthetic(rng, num_examples, num_classes, true_temperature,
               log_prior=None, logit_scale=2.0):
  """Likelihoods whose labels are calibrated at a known temperature.

  Labels are drawn from softmax(z + log_prior) and the "likelihoods" are
  true_temperature * z plus a per-image offset (the log-posterior is
  shift-invariant per row, and real likelihoods are thousands of nats
  negative). So T = true_temperature is the calibrated temperature.
  """
  z = logit_scale * rng.standard_normal((num_examples, num_classes))
  prior = (np.zeros(num_classes) if log_prior is None else log_prior)
  p = special.softmax(z + prior, axis=1)
  # Inverse-CDF sampling, one uniform per row.
  u = rng.random((num_examples, 1))
  labels = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), num_classes - 1)
  offset = -5000.0 + 100.0 * rng.standard_normal((num_examples, 1))
  return true_temperature * z + offset, labels


def test_uniform_prior():
  np.testing.assert_allclose(classifier.log_prior("uniform", 4),
                             np.log(np.full(4, 0.25)))


def test_empirical_prior_matches_smoothed_counts():
  labels = np.array([0] * 5 + [1] * 3)  # class 2 never seen
  prior = classifier.log_prior("empirical", 3, labels)
  np.testing.assert_allclose(np.exp(prior), np.array([6, 4, 1]) / 11)
  assert np.all(np.isfinite(prior))


def test_prior_errors():
  with pytest.raises(ValueError, match="bogus"):
    classifier.log_prior("bogus", 2)
  with pytest.raises(ValueError, match="train_labels"):
    classifier.log_prior("empirical", 2)
  with pytest.raises(ValueError):
    classifier.log_prior("empirical", 2, np.array([0, 2]))


def test_temperature_divides_only_the_likelihood():
  ll = np.array([[-1000.0, -1300.0, -1100.0], [-2000.0, -1900.0, -2100.0]])
  prior = np.log(np.array([0.5, 0.3, 0.2]))
  lp = classifier.log_posteriors(ll, prior, temperature=200.0)
  np.testing.assert_allclose(lp, special.log_softmax(ll / 200.0 + prior, axis=1))
  np.testing.assert_allclose(special.logsumexp(lp, axis=1), 0.0, atol=1e-12)


def test_saturated_log_posteriors_stay_exact():
  # A 2000-nat gap: p(0 | x) underflows to 0 but the log-odds do not.
  ll = np.array([[-10000.0, -8000.0]])
  lp = classifier.log_posteriors(ll, classifier.log_prior("uniform", 2))
  assert np.exp(lp[0, 0]) == 0.0
  np.testing.assert_allclose(classifier.binary_log_odds(lp), [2000.0])


def test_binary_log_odds_formula():
  ll = np.array([[-500.0, -520.0], [-700.0, -640.0]])
  prior = np.log(np.array([0.8, 0.2]))
  lp = classifier.log_posteriors(ll, prior, temperature=10.0)
  np.testing.assert_allclose(classifier.binary_log_odds(lp),
                             (ll[:, 1] - ll[:, 0]) / 10.0 + np.log(0.25))


@pytest.mark.parametrize("temperature", [0.1, 1.0, 37.0, 1e4])
def test_ranking_unchanged_by_temperature_under_uniform_prior(temperature):
  rng = np.random.default_rng(0)
  ll = -3000.0 + 400.0 * rng.standard_normal((200, 5))
  prior = classifier.log_prior("uniform", 5)
  lp = classifier.log_posteriors(ll, prior, temperature)
  np.testing.assert_array_equal(np.argsort(lp, axis=1), np.argsort(ll, axis=1))
  np.testing.assert_array_equal(classifier.predict(lp), np.argmax(ll, axis=1))


def test_non_uniform_prior_decides_when_evidence_is_tempered_away():
  # Class 1 is slightly more likely, class 0 much more frequent: at T = 1 the
  # likelihood decides, at a huge T the prior does.
  ll = np.array([[-1000.0, -995.0]])  # 5 nats > log(0.9 / 0.1) ~ 2.2
  prior = np.log(np.array([0.9, 0.1]))
  assert classifier.predict(classifier.log_posteriors(ll, prior, 1.0)) == [1]
  assert classifier.predict(classifier.log_posteriors(ll, prior, 1e3)) == [0]


@pytest.mark.parametrize("true_temperature", [1.0, 300.0])
def test_fit_temperature_recovers_known_temperature(true_temperature):
  rng = np.random.default_rng(1)
  ll, labels = _synthetic(rng, 4000, 3, true_temperature)
  fitted = classifier.fit_temperature(ll, labels,
                                      classifier.log_prior("uniform", 3))
  assert fitted == pytest.approx(true_temperature, rel=0.15)
  assert isinstance(fitted, float)


def test_fit_temperature_with_non_uniform_prior():
  rng = np.random.default_rng(2)
  prior = np.log(np.array([0.7, 0.3]))
  ll, labels = _synthetic(rng, 4000, 2, 250.0, log_prior=prior)
  assert classifier.fit_temperature(ll, labels, prior) == pytest.approx(
      250.0, rel=0.15)


def test_fit_temperature_perfectly_separated_goes_to_lower_bound():
  # Every label is the argmax: the NLL keeps falling as T -> 0.
  rng = np.random.default_rng(3)
  ll = -1000.0 + 300.0 * rng.standard_normal((100, 2))
  labels = np.argmax(ll, axis=1)
  fitted = classifier.fit_temperature(ll, labels,
                                      classifier.log_prior("uniform", 2))
  assert fitted == pytest.approx(np.exp(-3.0), rel=1e-3)


def test_fit_temperature_rejects_bad_inputs():
  prior = classifier.log_prior("uniform", 2)
  with pytest.raises(ValueError, match="non-finite"):
    classifier.fit_temperature(np.array([[0.0, np.nan]]), np.array([0]), prior)
  with pytest.raises(ValueError, match="entries"):
    classifier.fit_temperature(np.zeros((3, 2)), np.array([0, 1]), prior)


def test_calibration_lowers_ece_on_saturated_likelihoods():
  rng = np.random.default_rng(4)
  prior = classifier.log_prior("uniform", 2)
  fit_ll, fit_labels = _synthetic(rng, 3000, 2, 300.0)
  test_ll, test_labels = _synthetic(rng, 3000, 2, 300.0)

  raw = np.exp(classifier.log_posteriors(test_ll, prior))
  calibration = classifier.calibrate(fit_ll, fit_labels, prior)
  calibrated = np.exp(calibration.apply(test_ll))

  raw_ece = metrics.expected_calibration_error(raw, test_labels)
  calibrated_ece = metrics.expected_calibration_error(calibrated, test_labels)
  # Saturated posteriors claim certainty, so their ECE is their error rate.
  assert raw_ece > 0.1
  assert calibrated_ece < 0.03
  np.testing.assert_array_equal(np.argmax(raw, 1), np.argmax(calibrated, 1))


def test_accepts_jax_arrays():
  ll = jnp.array([[-10.0, -12.0], [-9.0, -8.0]], dtype=jnp.float32)
  lp = classifier.log_posteriors(ll, classifier.log_prior("uniform", 2), 2.0)
  np.testing.assert_array_equal(classifier.predict(lp), [0, 1])
