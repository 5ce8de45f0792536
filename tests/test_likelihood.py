"""The probability-flow likelihood engine against closed-form Gaussian classes."""
import math

import jax
import jax.numpy as jnp
from jax.tree_util import Partial
import numpy as np
import pytest

from gaussian_fixtures import GaussianClasses, anisotropic_classes, sample_images
from sgc_jax import likelihood
from sgc_jax import sde as sde_lib

H, W, CH = 3, 3, 1
DIM = H * W * CH
EPS = 1e-5


def make_classes(sde):
  return anisotropic_classes(sde, (H, W, CH))


def images(classes, n, seed=0):
  return sample_images(classes, n, seed)


def exact_table(classes, x):
  return jnp.stack([jnp.stack([classes.exact_log_likelihood(xi, c, EPS)
                               for c in range(classes.means.shape[0])]) for xi in x])


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.SubVPSDE(),
                                 sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0)],
                         ids=lambda s: type(s).__name__)
def test_exact_divergence_matches_closed_form(sde):
  classes = make_classes(sde)
  x, y = images(classes, 6)
  result = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=jax.random.PRNGKey(0),
                                            divergence="exact")
  assert bool(result.success.all())
  err = np.abs(np.asarray(result.log_likelihood - exact_table(classes, x))) / DIM
  assert err.max() <= 1e-3, err
  # The decision is the class whose mean is nearest in the class metric.
  nearest = np.argmax(np.asarray(exact_table(classes, x)), axis=1)
  np.testing.assert_array_equal(np.argmax(np.asarray(result.log_likelihood), 1), nearest)
  assert (np.asarray(result.num_function_evals) > 1).all()


def test_hutchinson_is_unbiased_within_its_statistical_error():
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 4, seed=1)
  exact = np.asarray(exact_table(classes, x))
  errors = []
  for seed in range(6):
    result = likelihood.class_log_likelihoods(
        classes.score, sde, x, 3, key=jax.random.PRNGKey(seed), divergence="hutchinson",
        probe="gaussian", num_probes=2, rtol=1e-4, atol=1e-4)
    errors.append(np.asarray(result.log_likelihood) - exact)
  errors = np.stack(errors)                   # [keys, B, C]
  assert errors.std() > 1e-3                  # Gaussian probes on a non-isotropic field are noisy
  mean_err = errors.mean(axis=0)
  stderr = errors.std(axis=0, ddof=1) / math.sqrt(errors.shape[0])
  assert (np.abs(mean_err) <= 4 * stderr + 0.02).all(), (mean_err, stderr)


def test_rademacher_is_exact_for_diagonal_jacobians():
  # v^T diag(J) v = tr(J) for every Rademacher v: no noise at all.
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 3, seed=2)
  result = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=jax.random.PRNGKey(3))
  err = np.abs(np.asarray(result.log_likelihood - exact_table(classes, x))) / DIM
  assert err.max() <= 1e-3


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.SubVPSDE(),
                                 sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0)],
                         ids=lambda s: type(s).__name__)
def test_gaussian_probes_are_exact_on_unit_gaussian_scores(sde):
  # For unit-variance classes the score Jacobian is exactly the control variate's
  # -I / (alpha^2 + sigma^2), so one Gaussian probe carries no noise at all
  # (without the control variate its |v|^2 - D would be off by tens of nats).
  means = make_classes(sde).means
  classes = GaussianClasses(sde, means, 1.0)
  x, _ = images(classes, 3, seed=4)
  for seed in range(3):
    result = likelihood.class_log_likelihoods(classes.score, sde, x, 3, probe="gaussian",
                                              key=jax.random.PRNGKey(seed))
    err = np.abs(np.asarray(result.log_likelihood - exact_table(classes, x))) / DIM
    assert err.max() <= 1e-3, err


def test_image_result_is_independent_of_its_batch():
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 5, seed=3)
  key = jax.random.PRNGKey(7)
  batch = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=key)
  alone = likelihood.class_log_likelihoods(classes.score, sde, x[2:3], 3, key=key)
  np.testing.assert_allclose(batch.log_likelihood[2], alone.log_likelihood[0], rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(batch.num_function_evals[2], alone.num_function_evals[0])


def _per_image_keys(ids):
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(5), i))(jnp.asarray(ids))


def test_per_image_probes_are_batch_independent_and_differ_between_images():
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 4, seed=3)
  x = x.at[3].set(x[1])   # the same pixels under two ids
  keys = _per_image_keys(np.arange(4))
  kwargs = dict(probe="gaussian", rtol=1e-6, atol=1e-6)
  batch = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=keys, **kwargs)
  alone = likelihood.class_log_likelihoods(classes.score, sde, x[2:3], 3, key=keys[2:3], **kwargs)
  np.testing.assert_allclose(batch.log_likelihood[2], alone.log_likelihood[0], rtol=1e-6,
                             atol=1e-5)
  # Different probes for equal pixels: the Hutchinson estimates differ (the
  # anisotropic classes make a single Gaussian probe's error several nats).
  assert np.abs(np.asarray(batch.log_likelihood[1] - batch.log_likelihood[3])).min() > 1e-3
  shared = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=keys[0], **kwargs)
  np.testing.assert_allclose(shared.log_likelihood[1], shared.log_likelihood[3], rtol=1e-6)


def _errors_against_closed_form(num_images, seed, variants):
  """(classes, x, per-image keys, {name: (result, RMS error in nats)}) of each variant."""
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, num_images, seed=seed)
  exact = np.asarray(exact_table(classes, x))
  keys = _per_image_keys(np.arange(num_images))
  out = {}
  for name, options in variants.items():
    result = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=keys, **options)
    out[name] = result, np.sqrt(np.mean((np.asarray(result.log_likelihood) - exact) ** 2))
  return classes, x, keys, out


def test_more_probes_average_out_the_hutchinson_error():
  _, _, _, out = _errors_against_closed_form(8, 6, {k: dict(probe="gaussian", num_probes=k)
                                                 for k in (1, 16)})
  errors = {k: error for k, (_, error) in out.items()}
  # The standard error falls as 1/sqrt(K): 4x fewer nats at K = 16, within noise.
  assert errors[16] < 0.5 * errors[1], errors


def test_per_image_keys_must_match_the_batch():
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 3)
  with pytest.raises(ValueError, match="2 per-image keys for 3 images"):
    likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=_per_image_keys(np.arange(2)))


@pytest.mark.parametrize("per_image", [False, True], ids=["shared_key", "per_image_keys"])
def test_vectorised_pass_equals_a_loop_over_classes(per_image):
  # With per-image keys this also shows that every class of an image uses its probes.
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 3, seed=4)
  key = _per_image_keys(np.array([10, 20, 30])) if per_image else jax.random.PRNGKey(11)
  together = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=key,
                                              probe="gaussian", num_probes=2)
  # The class as a traced argument of one Partial: one compilation serves all three.
  fixed = lambda c, z, t, y: classes.score(z, t, jnp.full_like(y, c))
  for c in range(3):
    one = likelihood.class_log_likelihoods(Partial(fixed, jnp.int32(c)), sde, x, 1, key=key,
                                           probe="gaussian", num_probes=2)
    np.testing.assert_allclose(together.log_likelihood[:, c], one.log_likelihood[:, 0],
                               rtol=1e-6, atol=1e-4)


def test_max_steps_failure_marks_only_its_own_image():
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 3, seed=5)
  x = x.at[1].set(60.0)  # the marked image gets a fast-oscillating score term

  def score(z, t, y):
    marked = (jnp.mean(z, axis=(1, 2, 3)) > 30.0)[:, None, None, None]
    return classes.score(z, t, y) + marked * 30.0 * jnp.sin(400.0 * t)[:, None, None, None]

  result = likelihood.class_log_likelihoods(score, sde, x, 3, key=jax.random.PRNGKey(0),
                                            max_steps=64)
  success = np.asarray(result.success)
  assert not success[1].any()
  assert success[[0, 2]].all()
  assert np.isnan(np.asarray(result.log_likelihood)[1]).all()
  assert np.isfinite(np.asarray(result.log_likelihood)[[0, 2]]).all()


def test_fixed_step_grid_dense_near_eps_is_accurate():
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 2, seed=6)
  exact = np.asarray(exact_table(classes, x))
  errs = {}
  for grid in ("uniform", "quadratic"):
    r = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=jax.random.PRNGKey(0),
                                         solver="heun", adaptive=False, num_steps=60, grid=grid)
    errs[grid] = np.abs(np.asarray(r.log_likelihood) - exact).max() / DIM
  # Measured: quadratic 0.0035, uniform 0.029 nats/dim at 60 Heun steps.
  assert errs["quadratic"] < 0.01
  assert errs["quadratic"] < 0.5 * errs["uniform"]


def test_no_retracing_on_second_call():
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  x, _ = images(classes, 2, seed=7)
  score = jax.tree_util.Partial(classes.score)
  likelihood.class_log_likelihoods(score, sde, x, 3, key=jax.random.PRNGKey(0))
  size = likelihood._class_log_likelihoods._cache_size()
  likelihood.class_log_likelihoods(score, sde, x + 0.1, 3, key=jax.random.PRNGKey(1))
  assert likelihood._class_log_likelihoods._cache_size() == size


def test_float64_path_matches_closed_form_tightly():
  sde = sde_lib.VPSDE()
  classes = make_classes(sde)
  with jax.enable_x64(True):
    x, _ = images(classes, 2, seed=8)
    x = x.astype(jnp.float64)
    result = likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=jax.random.PRNGKey(0),
                                              divergence="exact", dtype=jnp.float64,
                                              rtol=1e-7, atol=1e-7)
    assert result.log_likelihood.dtype == jnp.float64
    err = np.abs(np.asarray(result.log_likelihood - exact_table(classes, x))) / DIM
  assert err.max() <= 1e-5


def test_float64_without_x64_is_a_clear_error():
  with pytest.raises(ValueError, match="dtype"):
    likelihood.class_log_likelihoods(lambda x, t, y: x, sde_lib.VPSDE(), jnp.zeros((1, 2, 2, 1)),
                                     2, key=jax.random.PRNGKey(0), dtype=jnp.float64)


def test_bits_per_dim_offsets():
  # log p = 0: bpd is the offset bit_depth - log2(range width).
  assert likelihood.bits_per_dim(0.0, 10, bit_depth=8, data_range=(0.0, 1.0)) == pytest.approx(8.0)
  assert likelihood.bits_per_dim(0.0, 10, bit_depth=8, data_range=(-1.0, 1.0)) == pytest.approx(7.0)
  assert likelihood.bits_per_dim(0.0, 10, bit_depth=16, data_range=(0.0, 1.0)) == pytest.approx(16.0)
  # Hand-computed: log p = -100 nats over 50 dims of 12-bit data in [0, 1].
  expected = 100 / (50 * math.log(2)) + 12
  assert likelihood.bits_per_dim(-100.0, 50, bit_depth=12) == pytest.approx(expected)


def test_uniform_dequantization_stays_in_its_bin():
  k = jnp.array([0, 1, 255], jnp.uint8)
  x = likelihood.dequantize(jax.random.PRNGKey(0), jnp.tile(k, 1000), bit_depth=8)
  bins = np.floor(np.asarray(x) * 256).astype(int)
  np.testing.assert_array_equal(bins, np.tile(np.asarray(k), 1000))
  centre = likelihood.dequantize(None, k, bit_depth=8, data_range=(-1.0, 1.0))
  np.testing.assert_allclose(centre, -1 + 2 * (np.asarray(k) + 0.5) / 256, rtol=1e-6)


def test_seed_unet_divergence_in_forward_mode_equals_the_jacobian_trace():
  # The divergence differentiates the network in forward mode (JVPs through a
  # linearisation): every U-Net layer, the max-pool included, must support it.
  from sgc_jax import models  # pylint: disable=import-outside-toplevel
  sde = sde_lib.VPSDE()
  model = models.get_model({"name": "unet", "unet": {"channels": (4, 8)}}, 3, sde)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1), 3)
  score_fn = models.make_score_fn(model, variables, sde.marginal_std)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 1))
  t, y = jnp.array(0.3), jnp.array(2, jnp.int32)
  dim = x.size
  evaluate = likelihood._score_and_divergence(score_fn, sde, y,  # pylint: disable=protected-access
                                             jnp.eye(dim).reshape(dim, 8, 8, 1), "exact")
  score, divergence = jax.jit(evaluate)(t, x)
  score_one = jax.jit(lambda z: score_fn(z[None], t[None], y[None])[0])
  jacobian = jax.jit(jax.jacrev(score_one))(x).reshape(dim, dim)
  np.testing.assert_allclose(score, score_one(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(divergence, jnp.trace(jacobian), rtol=1e-4, atol=1e-4)


def test_fresh_probes_per_step_average_out_along_the_path_and_stay_batch_independent():
  # One probe for the whole path integrates that probe's error over all of it;
  # fresh probes at each of N steps make the steps' errors independent, so the
  # integrated error shrinks (by up to sqrt(N) for equal steps).
  # Gaussian probes: Rademacher ones are exact on these classes' diagonal Jacobians.
  fixed_steps = dict(solver="expint3", adaptive=False, num_steps=32, grid="logsnr",
                     probe="gaussian")
  classes, x, keys, out = _errors_against_closed_form(
      16, 7, {resample: dict(resample_probes=resample, **fixed_steps) for resample in (False, True)})
  errors = {resample: error for resample, (_, error) in out.items()}
  assert errors[True] < 0.5 * errors[False], errors
  sde, result = classes.sde, out[True][0]
  alone = likelihood.class_log_likelihoods(classes.score, sde, x[5:6], 3, key=keys[5:6],
                                           resample_probes=True, **fixed_steps)
  np.testing.assert_allclose(result.log_likelihood[5], alone.log_likelihood[0], rtol=1e-6,
                             atol=1e-5)
  with pytest.raises(ValueError, match="resample_probes: needs an exponential integrator"):
    likelihood.class_log_likelihoods(classes.score, sde, x, 3, key=keys, resample_probes=True)
