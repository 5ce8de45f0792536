"""The discriminative baseline's class-balanced loss weights."""
import numpy as np

from sgc_jax import baseline


def test_balanced_weights_equalise_the_classes_and_average_one():
  labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
  weights = baseline.class_weights(labels, 3, balanced=True)
  np.testing.assert_allclose(weights, [100 / 270, 100 / 27, 100 / 3])
  # Each class's total weight is the same, and the mean weight over the images is 1.
  totals = np.bincount(labels, weights=weights[labels])
  np.testing.assert_allclose(totals, totals[0])
  assert np.isclose(np.mean(weights[labels]), 1.0)


def test_unbalanced_weights_are_ones_and_absent_classes_do_not_divide_by_zero():
  np.testing.assert_array_equal(baseline.class_weights(np.array([0, 0]), 3, balanced=False),
                                np.ones(3))
  assert np.all(np.isfinite(baseline.class_weights(np.array([0, 0, 1]), 3, balanced=True)))
