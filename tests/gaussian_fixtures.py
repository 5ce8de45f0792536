"""Class-conditional Gaussian data with closed-form scores and likelihoods.

Each class y has data N(mu_y, diag(s^2)). Under an SDE with linear drift the
marginal at t is N(alpha mu_y, diag(alpha^2 s^2 + sigma^2)) =: N(m_t, v_t), so
the score is -(x - m_t) / v_t and the probability-flow map from eps to T is
affine: x_T = m_T + sqrt(v_T / v_eps) (x - m_eps). The method's exact answer
is therefore log p_T(x_T) + 1/2 sum log(v_T / v_eps), which includes the small
mismatch between the SDE's marginal at T and the prior (a plain Gaussian
density check would wrongly blame that on the solver).
"""
import jax
import jax.numpy as jnp


class GaussianClasses:

  def __init__(self, sde, means, stds):
    self.sde = sde
    self.means = jnp.asarray(means, jnp.float32)   # [C, H, W, Ch]
    self.stds = jnp.asarray(stds, jnp.float32)     # [H, W, Ch] or scalar

  def variance(self, t):
    a = self.sde.marginal_mean_coeff(t)
    return a**2 * self.stds**2 + self.sde.marginal_std(t) ** 2

  def score(self, x, t, y):
    a = self.sde.marginal_mean_coeff(t)[:, None, None, None]
    std = self.sde.marginal_std(t)[:, None, None, None]
    var = a**2 * self.stds**2 + std**2
    return -(x - a * self.means[y]) / var

  def exact_log_likelihood(self, x, y, eps):
    """The probability-flow method's exact answer for one image x and class y."""
    sde, mu = self.sde, self.means[y]
    a_T, a_e = sde.marginal_mean_coeff(sde.T), sde.marginal_mean_coeff(eps)
    v_T = a_T**2 * self.stds**2 + sde.marginal_std(sde.T) ** 2
    v_e = a_e**2 * self.stds**2 + sde.marginal_std(eps) ** 2
    ratio = jnp.broadcast_to(v_T / v_e, x.shape)
    x_T = a_T * mu + jnp.sqrt(ratio) * (x - a_e * mu)
    return sde.prior_logp(x_T[None])[0] + 0.5 * jnp.sum(jnp.log(ratio))


def anisotropic_classes(sde, shape=(3, 3, 1)):
  """Three classes on tiny images, with per-pixel stds (so Hutchinson probes are noisy)."""
  dim = shape[0] * shape[1] * shape[2]
  means = jnp.stack([jnp.full(shape, -0.6), jnp.full(shape, 0.8),
                     jnp.linspace(-1.0, 1.0, dim).reshape(shape)])
  return GaussianClasses(sde, means, jnp.linspace(0.3, 0.6, dim).reshape(shape))


def sample_images(classes, n, seed=0):
  """n images drawn from random classes of `classes`; returns (images, labels)."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  y = jax.random.randint(keys[0], (n,), 0, classes.means.shape[0])
  noise = jax.random.normal(keys[1], (n,) + classes.means.shape[1:])
  return classes.means[y] + classes.stds * noise, y
