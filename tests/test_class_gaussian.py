"""The class-Gaussian skip: fitted statistics, its closed-form score, and its exact likelihood."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.scipy.stats import multivariate_normal

from sgc_jax import likelihood, models
from sgc_jax import sde as sde_lib
from sgc_jax.models import class_gaussian

SHAPE = (2, 3, 1)   # D = 6
DIM = 6
NUM_CLASSES = 3


class ZeroNet(nn.Module):
  """A network that predicts nothing, so the skip's Gaussian is the whole model."""
  num_classes: int
  supports_null_label = True

  @nn.compact
  def __call__(self, x, t, y, train=False):
    return jnp.zeros_like(x)


def _samples(seed=0, n=400):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, n)
  means = rng.normal(size=(NUM_CLASSES, DIM))
  mixing = rng.normal(size=(NUM_CLASSES, DIM, DIM)) * 0.4
  x = means[labels] + np.einsum("bde,be->bd", mixing[labels], rng.normal(size=(n, DIM)))
  return x.reshape(n, *SHAPE), labels


def _fit(x, labels, covariance="full", shrinkage=0.2, batch=64):
  batches = ((x[i:i + batch], labels[i:i + batch]) for i in range(0, len(x), batch))
  return class_gaussian.fit_class_gaussians(batches, NUM_CLASSES, covariance=covariance,
                                            shrinkage=shrinkage)


def _covariances(stats):
  if "basis" in stats:
    u, v = stats["basis"], stats["variance"]
    return np.einsum("cdk,ck,cek->cde", u, v, u)
  return np.stack([np.diag(v) for v in stats["variance"]])


def test_fit_streams_to_the_shrunk_sample_covariance():
  x, labels = _samples()
  stats = _fit(x, labels, shrinkage=0.2)
  flat = x.reshape(len(x), -1)
  covs = _covariances(stats)
  for c in range(NUM_CLASSES + 1):
    rows = flat if c == NUM_CLASSES else flat[labels == c]   # row C pools every class
    sample = np.cov(rows.T, bias=True)
    expected = 0.8 * sample + 0.2 * np.trace(sample) / DIM * np.eye(DIM)
    np.testing.assert_allclose(stats["mean"][c], rows.mean(0), atol=1e-5)
    np.testing.assert_allclose(covs[c], expected, atol=1e-4)
  # The diagonal model keeps exactly the full model's per-pixel variances.
  diagonal = _fit(x, labels, covariance="diagonal", shrinkage=0.2)
  np.testing.assert_allclose(diagonal["variance"], np.diagonal(covs, axis1=1, axis2=2), atol=1e-4)
  assert "basis" not in diagonal


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE()],
                         ids=["vp", "subvp", "ve"])
def test_skip_adds_the_exact_marginal_score(covariance, sde):
  x, labels = _samples()
  stats = _fit(x, labels, covariance=covariance)
  model = class_gaussian.ClassGaussianSkip(net=ZeroNet(NUM_CLASSES), sde=sde,
                                           covariance=covariance)
  variables = {"class_gaussian": stats}
  score_fn = models.make_score_fn(model, variables, sde.marginal_std)
  covs = _covariances(stats)
  t = jnp.array([1e-3, 0.1, 0.5, 0.9])
  y = jnp.array([0, 1, 2, 3])            # 3 is the null label: the pooled Gaussian
  xt = jnp.asarray(x[:4], jnp.float32)
  got = score_fn(xt, t, y).reshape(4, DIM)
  for i in range(4):
    alpha, sigma = sde.marginal_mean_coeff(t[i]), sde.marginal_std(t[i])
    cov = alpha**2 * covs[int(y[i])] + sigma**2 * jnp.eye(DIM)
    logpdf = lambda v: multivariate_normal.logpdf(v, alpha * stats["mean"][int(y[i])], cov)
    want = jax.grad(logpdf)(xt[i].reshape(DIM))
    np.testing.assert_allclose(got[i], want, rtol=2e-4, atol=2e-4 * float(jnp.abs(want).max()))


def _method_answer(stats, sde, x, eps):
  """The exact ODE likelihood of the Gaussians alone, prior mismatch at T included.

  Each eigen-coordinate's standardised value (x_k - alpha m_k) / sqrt(alpha^2 v_k
  + sigma^2) is constant along the Gaussian probability-flow ODE, so x_T is known
  and log p = log N(x_T; 0, I) + log p_eps(x) - log p_T(x_T) (change of variables).
  """
  out = np.zeros((len(x), NUM_CLASSES))
  for c in range(NUM_CLASSES):
    u, v, m = stats["basis"][c], stats["variance"][c], stats["mean"][c] @ stats["basis"][c]
    a0, s0 = float(sde.marginal_mean_coeff(eps)), float(sde.marginal_std(eps))
    a1, s1 = float(sde.marginal_mean_coeff(sde.T)), float(sde.marginal_std(sde.T))
    var0, var1 = a0**2 * v + s0**2, a1**2 * v + s1**2
    for i, xi in enumerate(x.reshape(len(x), DIM) @ u):
      standard = (xi - a0 * m) / np.sqrt(var0)
      x_T = a1 * m + np.sqrt(var1) * standard   # in the eigenbasis (rotations keep N(0, I))
      log_p_eps = -0.5 * np.sum(standard**2 + np.log(2 * np.pi * var0))
      log_p_T = -0.5 * np.sum(standard**2 + np.log(2 * np.pi * var1))
      log_prior = -0.5 * np.sum(x_T**2 + np.log(2 * np.pi))
      out[i, c] = log_prior + log_p_eps - log_p_T
  return out


def test_gaussian_alone_gives_the_class_gaussian_likelihood():
  # With a zero network the probability-flow ODE transports each class Gaussian
  # affinely, so the engine's answer is known in closed form; away from the
  # small N(0, I)-prior mismatch at T it is the Gaussian's density at time eps.
  sde = sde_lib.VPSDE()
  x, labels = _samples()
  stats = _fit(x, labels)
  model = class_gaussian.ClassGaussianSkip(net=ZeroNet(NUM_CLASSES), sde=sde)
  score_fn = models.make_score_fn(model, {"class_gaussian": stats}, sde.marginal_std)
  eps = 1e-3
  xs = np.asarray(x[:5], np.float32)
  result = likelihood.class_log_likelihoods(score_fn, sde, xs, NUM_CLASSES, key=jax.random.key(0),
                                            divergence="exact", rtol=1e-6, atol=1e-6, eps=eps)
  assert bool(result.success.all())
  want = _method_answer(stats, sde, xs, eps)
  np.testing.assert_allclose(result.log_likelihood, want, atol=1e-3 * DIM)
  covs = _covariances(stats)
  alpha, sigma = sde.marginal_mean_coeff(eps), sde.marginal_std(eps)
  density = np.array([[multivariate_normal.logpdf(xi.reshape(DIM), alpha * stats["mean"][c],
                                                  alpha**2 * covs[c] + sigma**2 * np.eye(DIM))
                       for c in range(NUM_CLASSES)] for xi in xs])
  np.testing.assert_allclose(want, density, atol=0.05 * DIM)  # the T mismatch is small
  np.testing.assert_array_equal(np.argmax(result.log_likelihood, 1), np.argmax(density, 1))


@pytest.mark.parametrize("covariance,shrinkage,labels,shape,match", [
    ("sparse", 0.1, [0, 1, 2], (3, 2, 3, 1), "model.class_gaussian: 'sparse'"),
    ("full", 1.5, [0, 1, 2], (3, 2, 3, 1), "model.class_gaussian_shrinkage"),
    ("full", 0.1, [0, 1, 1], (3, 2, 3, 1), r"no training images for classes \[2\]"),
    ("full", 0.1, [0, 1, 3], (3, 2, 3, 1), "label: values must lie in"),
    ("full", 0.1, [0, 1, 2], (3, 65, 64, 1), "'full' needs D <= 4096"),
])
def test_fit_errors_name_the_field(covariance, shrinkage, labels, shape, match):
  x = np.zeros(shape)
  with pytest.raises(ValueError, match=match):
    class_gaussian.fit_class_gaussians([(x, np.array(labels))], NUM_CLASSES,
                                       covariance=covariance, shrinkage=shrinkage)


def test_get_model_wraps_and_checks_the_field():
  config = ml_collections.ConfigDict({"name": "mlp", "mlp": {"hidden": 8, "depth": 1},
                                      "class_gaussian": "diagonal"})
  model = models.get_model(config, NUM_CLASSES, sde_lib.VPSDE())
  assert isinstance(model, class_gaussian.ClassGaussianSkip)
  assert model.num_classes == NUM_CLASSES and models.has_null_label(model)
  with pytest.raises(ValueError, match="pass sde="):
    models.get_model(config, NUM_CLASSES)
  config.class_gaussian = "low_rank"
  with pytest.raises(ValueError, match="model.class_gaussian: unknown 'low_rank'"):
    models.get_model(config, NUM_CLASSES, sde_lib.VPSDE())
