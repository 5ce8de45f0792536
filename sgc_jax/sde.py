"""Forward SDEs dx = f(x, t) dt + g(t) dw: VP, sub-VP and VE (Song et al., 2021).

All three have a drift that is linear in x, f(x, t) = a(t) x, which the
likelihood engine exploits: the divergence of the linear part is a(t) * D,
exactly, with no estimator noise. Every method is pure `jnp` and works on
scalar or batched `t` (broadcast against the trailing image axes by the caller
via `broadcast_to_image`).

The SDE objects are frozen dataclasses, so they are hashable and can be closed
over or passed as static arguments to `jax.jit`.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


def broadcast_to_image(values: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-example values [B] to broadcast against images [B, ...]."""
  values = jnp.asarray(values)
  return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def _sum_over_image(v: jax.Array, batch_ndim: int) -> jax.Array:
  return jnp.sum(v, axis=tuple(range(batch_ndim, v.ndim)))


@dataclasses.dataclass(frozen=True)
class _LinearDriftSDE:
  """Shared behaviour of SDEs whose drift is a(t) x and whose prior is Gaussian."""

  T: float = 1.0

  # --- to be provided by subclasses -------------------------------------
  def drift_coeff(self, t):
    """a(t) such that the drift is f(x, t) = a(t) x."""
    raise NotImplementedError

  def diffusion(self, t):
    """g(t)."""
    raise NotImplementedError

  def marginal_mean_coeff(self, t):
    """alpha(t) such that E[x_t | x_0] = alpha(t) x_0."""
    raise NotImplementedError

  def marginal_std(self, t):
    """sigma(t), the standard deviation of x_t given x_0."""
    raise NotImplementedError

  @property
  def prior_std(self) -> float:
    raise NotImplementedError

  # --- derived ------------------------------------------------------------
  def drift(self, x, t):
    """f(x, t) for images x [B, ...] and times t [B]."""
    return broadcast_to_image(self.drift_coeff(t), x) * x

  def marginal_prob(self, x0, t):
    """Mean and std of p_t(x_t | x_0); std is [B] (one value per image)."""
    mean = broadcast_to_image(self.marginal_mean_coeff(t), x0) * x0
    return mean, self.marginal_std(t)

  def perturb(self, x0, t, noise):
    """x_t = alpha(t) x_0 + sigma(t) z."""
    mean, std = self.marginal_prob(x0, t)
    return mean + broadcast_to_image(std, x0) * noise

  def prior_sampling(self, key, shape, dtype=jnp.float32):
    """Draws x_T from the prior N(0, prior_std^2 I)."""
    return self.prior_std * jax.random.normal(key, shape, dtype)

  def prior_logp(self, z, batch_ndim: int = 1):
    """log N(z; 0, prior_std^2 I), summed over all but the first `batch_ndim` axes."""
    dim = math.prod(z.shape[batch_ndim:])
    var = self.prior_std**2
    return (-0.5 * dim * jnp.log(2 * jnp.pi * var)
            - 0.5 * _sum_over_image(z**2, batch_ndim) / var)

  def probability_flow_drift(self, x, t, score):
    """f(x, t) - 1/2 g(t)^2 score: the drift of the probability-flow ODE."""
    g2 = broadcast_to_image(self.diffusion(t) ** 2, x)
    return self.drift(x, t) - 0.5 * g2 * score

  def reverse_drift(self, x, t, score):
    """f(x, t) - g(t)^2 score: the drift of the reverse-time SDE."""
    g2 = broadcast_to_image(self.diffusion(t) ** 2, x)
    return self.drift(x, t) - g2 * score


@dataclasses.dataclass(frozen=True)
class VPSDE(_LinearDriftSDE):
  """Variance-preserving SDE (DDPM in continuous time); the seed's SDE."""

  beta_min: float = 0.1
  beta_max: float = 20.0

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t):
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def drift_coeff(self, t):
    return -0.5 * self.beta(t)

  def diffusion(self, t):
    return jnp.sqrt(self.beta(t))

  def marginal_mean_coeff(self, t):
    return jnp.exp(self.log_mean_coeff(t))

  def marginal_std(self, t):
    # -expm1 keeps precision for small t, where 1 - alpha^2 underflows.
    return jnp.sqrt(-jnp.expm1(2.0 * self.log_mean_coeff(t)))

  @property
  def prior_std(self) -> float:
    return 1.0


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
  """Sub-variance-preserving SDE: VP drift, smaller diffusion (Song et al., 2021)."""

  def diffusion(self, t):
    # 1 - exp(-2 int_0^t beta) = 1 - alpha(t)^4.
    discount = -jnp.expm1(4.0 * self.log_mean_coeff(t))
    return jnp.sqrt(self.beta(t) * discount)

  def marginal_std(self, t):
    return -jnp.expm1(2.0 * self.log_mean_coeff(t))


@dataclasses.dataclass(frozen=True)
class VESDE(_LinearDriftSDE):
  """Variance-exploding SDE (NCSN in continuous time): zero drift."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0

  def _log_ratio(self) -> float:
    return math.log(self.sigma_max / self.sigma_min)

  def drift_coeff(self, t):
    return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

  def diffusion(self, t):
    return self.marginal_std(t) * math.sqrt(2.0 * self._log_ratio())

  def marginal_mean_coeff(self, t):
    return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

  def marginal_std(self, t):
    return self.sigma_min * jnp.exp(t * self._log_ratio())

  @property
  def prior_std(self) -> float:
    return self.sigma_max


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def get_sde(name: str, **kwargs) -> _LinearDriftSDE:
  """Builds an SDE by name ("vp", "subvp" or "ve") with its keyword parameters."""
  try:
    cls = SDES[name.lower()]
  except KeyError:
    raise ValueError(f"sde.name: unknown SDE {name!r}; choose one of {sorted(SDES)}") from None
  return cls(**kwargs)


def from_config(sde_config) -> _LinearDriftSDE:
  """Builds the SDE described by a config's `sde` block."""
  if sde_config.name.lower() == "ve":
    return VESDE(sigma_min=sde_config.sigma_min, sigma_max=sde_config.sigma_max)
  return get_sde(sde_config.name, beta_min=sde_config.beta_min, beta_max=sde_config.beta_max)


def likelihood_weighting_cdf(sde: _LinearDriftSDE, eps: float, num_points: int = 4097):
  """Grid (t, F(t)) of the cumulative integral F(t) = int_eps^t g(s)^2 / sigma(s)^2 ds.

  g^2 / sigma^2 is the likelihood weighting lambda(t) = g^2 divided by the
  noise-prediction scale sigma^2; it is what importance sampling of t follows
  (Song et al., 2021). A log-spaced trapezoid grid handles the 1/t blow-up
  near eps for every SDE alike.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  ts = np.exp(np.linspace(math.log(eps), math.log(sde.T), num_points))
  # A constant of the SDE: evaluate now even when called under `jit`.
  with jax.ensure_compile_time_eval():
    density = np.asarray(sde.diffusion(ts) ** 2 / sde.marginal_std(ts) ** 2, np.float64)
  cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(ts))])
  return ts, cdf


def importance_sample_time(sde: _LinearDriftSDE, u, eps: float):
  """Maps uniforms u in [0, 1) to t ~ p(t) proportional to g^2 / sigma^2 on [eps, T].

  Returns (t, Z) with Z = int g^2 / sigma^2 dt, so that an integral
  int g^2/sigma^2 h(t) dt equals Z * E_p[h(t)].
  """
  ts, cdf = likelihood_weighting_cdf(sde, eps)
  total = float(cdf[-1])
  t = jnp.interp(u * total, jnp.asarray(cdf, jnp.float32), jnp.asarray(ts, jnp.float32))
  return t, total
