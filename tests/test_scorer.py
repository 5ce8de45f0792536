"""`scorer.score_records`: dequantization draws, their keys and how their results combine."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax import likelihood, scorer, sharding

_CLASSES = 3


def _prepare(key, ids, images):
  """A stand-in dequantization: the image plus a uniform draw from `key` folded with its id."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids, jnp.uint32))
  return images + jax.vmap(lambda k: jax.random.uniform(k, images.shape[1:]))(keys)


def _class_scorer(fail_id=None):
  """A stand-in estimator: log p(x|y) = -sum(x) + y + a probe-like normal draw from `key`."""
  def score(x, ids, key):
    noise = jax.random.normal(key, (len(ids), _CLASSES))
    ll = -jnp.sum(x, axis=(1, 2, 3))[:, None] + jnp.arange(_CLASSES) + noise
    success = jnp.ones_like(ll, bool)
    if fail_id is not None and int(jax.random.bits(key)) % 2:   # fails on some draws only
      ll = ll.at[ids == fail_id].set(jnp.nan)
      success = success.at[ids == fail_id].set(False)
    return likelihood.LikelihoodResult(ll, jnp.full(ll.shape, 7), success,
                                       jnp.stack([ll - 1, ll + 1], axis=1))
  return score


@pytest.fixture(scope="module")
def batch():
  images = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2, 1)
  return images, np.asarray([3, 5, 8, 13], np.uint32), sharding.make_mesh(jax.devices()[:1])


def test_one_dequantization_is_the_single_draw_of_the_split_key(batch):
  images, ids, mesh = batch
  key = jax.random.PRNGKey(4)
  result = scorer.score_records(_class_scorer(), _prepare, images, ids, key, mesh)
  deq_key, probe_key = jax.random.split(key)
  expected = _class_scorer()(_prepare(deq_key, ids, images), ids, probe_key)
  np.testing.assert_allclose(result.log_likelihood, expected.log_likelihood, rtol=1e-6)


def test_several_dequantizations_average_their_draws(batch):
  images, ids, mesh = batch
  key = jax.random.PRNGKey(4)
  deq_key, probe_key = jax.random.split(key)
  draws = [_class_scorer()(_prepare(d, ids, images), ids, p) for d, p in
           [(deq_key, probe_key)] + [(jax.random.fold_in(deq_key, k),
                                      jax.random.fold_in(probe_key, k)) for k in (1, 2)]]
  result = scorer.score_records(_class_scorer(), _prepare, images, ids, key, mesh,
                                num_dequantizations=3)
  np.testing.assert_allclose(result.log_likelihood,
                             np.mean([d.log_likelihood for d in draws], axis=0), rtol=1e-6)
  np.testing.assert_allclose(result.half_log_likelihoods,
                             np.mean([d.half_log_likelihoods for d in draws], axis=0), rtol=1e-6)
  assert (result.num_function_evals == 21).all()           # 7 per draw, added up
  # The draws differ (else averaging them would buy nothing), and their mean has less noise
  # about the noise-free score -sum(E[x]) + y than the single draw has.
  assert not np.allclose(draws[0].log_likelihood, draws[1].log_likelihood)
  exact = -(images.sum(axis=(1, 2, 3)) + 0.5 * 4)[:, None] + np.arange(_CLASSES)
  assert np.abs(result.log_likelihood - exact).mean() < np.abs(draws[0].log_likelihood
                                                               - exact).mean()


def test_a_draw_that_fails_fails_the_image_and_class(batch):
  images, ids, mesh = batch
  result = scorer.score_records(_class_scorer(fail_id=8), _prepare, images, ids,
                                jax.random.PRNGKey(0), mesh, num_dequantizations=6)
  assert not result.success[2].any() and np.isnan(result.log_likelihood[2]).all()
  assert result.success[[0, 1, 3]].all() and np.isfinite(result.log_likelihood[[0, 1, 3]]).all()


def test_zero_dequantizations_are_refused_naming_the_field():
  from configs import digits  # pylint: disable=import-outside-toplevel
  from sgc_jax.config_validation import validate_config  # pylint: disable=import-outside-toplevel
  config = digits.get_config()
  config.eval.num_dequantizations = 0
  with pytest.raises(ValueError, match=r"eval\.num_dequantizations: must be >= 1"):
    validate_config(config)
