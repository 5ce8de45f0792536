"""Tests for the classification-accuracy score of class-conditional samples.

Closed-form classes: four well-separated Gaussians with exact scores, and their
Bayes classifier (the exact class log-densities at eps) in place of a trained CNN.
"""
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from gaussian_fixtures import GaussianClasses
from sgc_jax import baseline, sample_quality
from sgc_jax import sde as sde_lib

SDE = sde_lib.VPSDE()
EPS = 1e-3
SHAPE = (2, 2, 1)
NUM_CLASSES = 4
# Class c puts +-3 on pixel c: means 4.2 apart against a data std of 0.3.
MEANS = 3.0 * jnp.concatenate([jnp.eye(4)[:2], -jnp.eye(4)[:2]]).reshape((4,) + SHAPE)
CLASSES = GaussianClasses(SDE, MEANS, 0.3)


def _bayes_logits(x):
  """log N(x; alpha mu_c, v I) per class at eps: the optimal classifier of the samples."""
  mean = SDE.marginal_mean_coeff(EPS) * MEANS
  diff = x[:, None] - mean[None]
  return -0.5 * jnp.sum(diff**2, axis=(2, 3, 4)) / CLASSES.variance(EPS)


def test_samples_of_well_separated_classes_are_recognised():
  results = sample_quality.score_samplers(
      CLASSES.score, SDE, _bayes_logits, num_classes=NUM_CLASSES, image_shape=SHAPE,
      samplers=("euler_maruyama",), per_class=100, key=jax.random.PRNGKey(0),
      data_range=(-10.0, 10.0), num_steps=50, eps=EPS)
  result = results["euler_maruyama"]
  assert result["score"] > 0.97
  assert min(result["per_class"]) > 0.95 and result["failed"] == 0
  assert result["mean_nfe"] == 50.0  # 49 Euler–Maruyama steps and the denoising step


def test_prior_noise_scores_chance():
  # Images independent of their labels: the expected score is exactly 1 / C.
  labels = np.repeat(np.arange(NUM_CLASSES), 500)
  noise = SDE.prior_sampling(jax.random.PRNGKey(1), (len(labels),) + SHAPE)
  result = sample_quality.classification_accuracy_score(_bayes_logits, noise, labels, NUM_CLASSES)
  assert abs(result["score"] - 1 / NUM_CLASSES) < 0.05


def test_failed_samples_count_as_not_recognised():
  labels = np.repeat(np.arange(NUM_CLASSES), 2)
  images = np.asarray(SDE.marginal_mean_coeff(EPS) * MEANS)[labels]
  images[0] = np.nan
  result = sample_quality.classification_accuracy_score(_bayes_logits, images, labels, NUM_CLASSES)
  assert result["failed"] == 1
  assert result["per_class"] == [0.5, 1.0, 1.0, 1.0] and result["score"] == 0.875


def test_baseline_classifier_round_trip_and_mismatch(tmp_path):
  config = ConfigDict({"data": {"num_classes": 3}, "baseline": {"width": 4}})
  assert baseline.load_logits_fn(config, str(tmp_path), (8, 8, 1)) is None
  model = baseline.SmallCNN(num_classes=3, width=4)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]
  os.makedirs(tmp_path / "baseline")
  (tmp_path / "baseline" / "params.msgpack").write_bytes(flax.serialization.to_bytes(params))
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 1))
  logits_fn = baseline.load_logits_fn(config, str(tmp_path), (8, 8, 1))
  np.testing.assert_allclose(logits_fn(x), model.apply({"params": params}, x), rtol=1e-5,
                             atol=1e-6)
  config.baseline.width = 8
  with pytest.raises(ValueError, match="params.msgpack.*width 8"):
    baseline.load_logits_fn(config, str(tmp_path), (8, 8, 1))
