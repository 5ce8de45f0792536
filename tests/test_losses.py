"""The denoising losses against closed forms on Gaussian data.

Data x0 ~ N(0, s^2 I) in D dimensions perturbed by the VP SDE stay Gaussian,
x_t ~ N(0, v I) with v = alpha^2 s^2 + sigma^2 at time t, so the exact score is
-x / v. A network `output = -sigma m x / v` is exact at m = 1, and at one t:
- the first-order loss, sum_pixels E(output + z)^2 = D (1 - (sigma^2/v)(2m - m^2)),
  has the gradient -2 D (sigma^2 / v)(1 - m) in m;
- the second-order residual r = sigma tr(grad output) + D - ||sg(output) + z||^2
  has the mean (D sigma^2 / v) m (1 - m), and tr(grad output) = -sigma m D / v
  exactly (a Rademacher probe is exact on a multiple of the identity), so the
  term r^2 / D has the gradient -2 D (sigma^2 / v)^2 m (1 - m): zero at the exact
  score, negative below it, positive above it.
"""
import jax
import jax.numpy as jnp
import pytest

from sgc_jax import losses
from sgc_jax import sde as sde_lib

_SHAPE = (4, 4, 1)
_DIMS = 16
_STD = 0.7
_BATCH = 20000


def _at_one_time(t: float):
  """The VP SDE with T just above t, so that training times t ~ U[eps = t, T] are all t."""
  return sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, T=t + 1e-7)


def _variance_ratio(sde, t: float) -> float:
  """sigma^2 / v at t."""
  t = jnp.asarray(t)
  alpha2 = jnp.exp(2.0 * sde.log_mean_coeff(t))
  sigma2 = sde.marginal_std(t) ** 2
  return float(sigma2 / (alpha2 * _STD ** 2 + sigma2))


def _loss(m, sde, t: float, key, *, second_order_weight: float, batch: int = _BATCH):
  """The mean loss of `output = -sigma m x / v` on N(0, _STD^2 I) data at time t."""

  def apply(variables, x, t, y, *, train, rngs, mutable):
    del y, train, rngs, mutable
    sigma = sde.marginal_std(t)[:, None, None, None]
    alpha2 = jnp.exp(2.0 * sde.log_mean_coeff(t))[:, None, None, None]
    return -sigma * variables["params"]["m"] * x / (alpha2 * _STD ** 2 + sigma ** 2), {}

  data_key, loss_key = jax.random.split(key)
  x0 = _STD * jax.random.normal(data_key, (batch, *_SHAPE))
  loss, _ = losses.dsm_loss(apply, {"params": {"m": m}}, x0, jnp.zeros((batch,), jnp.int32),
                            loss_key, sde, eps=t, second_order_weight=second_order_weight)
  return loss


@pytest.mark.parametrize("t", [0.2, 0.6])
@pytest.mark.parametrize("m", [0.5, 1.0, 1.5])
def test_second_order_term_has_the_closed_form_gradient(t, m):
  sde = _at_one_time(t)
  ratio = _variance_ratio(sde, t)
  key = jax.random.PRNGKey(0)

  def second_order_only(m):
    return (_loss(m, sde, t, key, second_order_weight=1.0)
            - _loss(m, sde, t, key, second_order_weight=0.0))

  grad = float(jax.grad(second_order_only)(jnp.asarray(m)))
  expected = -2.0 * _DIMS * ratio ** 2 * m * (1.0 - m)
  # The Monte Carlo error of the mean residual over 20,000 examples is about 1 % of the
  # gradient half a unit away from the exact score where sigma^2 / v is not small (these t).
  scale = 2.0 * _DIMS * ratio ** 2 * 0.25
  assert abs(grad - expected) < 0.05 * scale, (grad, expected)


@pytest.mark.parametrize("m", [0.5, 1.0, 1.5])
def test_first_order_loss_has_the_closed_form_gradient(m):
  t = 0.4
  sde = _at_one_time(t)
  ratio = _variance_ratio(sde, t)
  grad = float(jax.grad(lambda m: _loss(m, sde, t, jax.random.PRNGKey(1),
                                        second_order_weight=0.0))(jnp.asarray(m)))
  expected = -2.0 * _DIMS * ratio * (1.0 - m)
  assert abs(grad - expected) < 0.03 * _DIMS * ratio, (grad, expected)

