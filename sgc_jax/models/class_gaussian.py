"""A class-Gaussian skip: any score network plus the exact score of a Gaussian per class.

If class y's data were N(mu_y, Sigma_y), its marginal under any of the package's
SDEs (x_t = alpha x_0 + sigma z) would be N(alpha mu_y, alpha^2 Sigma_y + sigma^2 I),
whose score is known in closed form at every t. `ClassGaussianSkip` adds that
score (in the networks' -z units: sigma * score) to a wrapped network's output,
so the network only models what the class Gaussians miss; the sum is trained by
the usual denoising loss and integrated by the usual likelihood engine.

Why: on small data the exact probability-flow likelihood of a plain network is
a poor classifier even when its denoising bound is a good one (digits: 0.75
against 0.98, README), while the class Gaussians alone already separate the
classes. The skip gives the flow that global structure exactly, in the spirit
of EDM's c_skip (the optimal denoiser of an isotropic Gaussian) and PriorGrad's
data-dependent Gaussian priors.

The Gaussians are fitted once, before training, from the training split
(`fit_class_gaussians`), and live in the variable collection "class_gaussian"
(saved in checkpoints with the other model state, never trained):

    mean     [C+1, D]     per-class means; row C pools all classes (null label)
    variance [C+1, D]     eigenvalues of the shrunk covariances
    basis    [C+1, D, D]  their eigenvectors ("full" only; "diagonal" uses the
                          pixel axes)
"""
from __future__ import annotations

from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

COLLECTION = "class_gaussian"  # the variable collection that holds the fitted Gaussians
COVARIANCES = ("full", "diagonal")
# A full covariance per class is D x D floats: fine for 8x8 digits, not for
# mammograms, which need "diagonal".
MAX_FULL_DIM = 4096


class ClassGaussianSkip(nn.Module):
  """`net(x, t, y) + sigma(t) * grad log N(x; alpha mu_y, alpha^2 Sigma_y + sigma^2 I)`.

  Attributes:
    net: the wrapped score network (output estimates -z).
    sde: an `sgc_jax.sde` SDE (hashable); only its marginal_mean_coeff (alpha)
      and marginal_std (sigma) are used.
    covariance: "full" (eigenbasis per class) or "diagonal" (per-pixel variances).
  """
  net: nn.Module
  sde: Any
  covariance: str = "full"

  @property
  def num_classes(self) -> int:
    return self.net.num_classes

  @property
  def supports_null_label(self) -> bool:
    return type(self.net).supports_null_label

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array,
               train: bool = False) -> jax.Array:
    out = self.net(x, t, y, train=train)
    dim = int(np.prod(x.shape[1:]))
    rows = self.num_classes + 1
    mean = self.variable(COLLECTION, "mean", jnp.zeros, (rows, dim)).value
    variance = self.variable(COLLECTION, "variance", jnp.ones, (rows, dim)).value
    alpha = self.sde.marginal_mean_coeff(t)[:, None]
    sigma = self.sde.marginal_std(t)[:, None]
    residual = x.reshape(x.shape[0], dim).astype(jnp.float32) - alpha * mean[y]
    inverse_variance = 1.0 / (alpha**2 * variance[y] + sigma**2)
    if self.covariance == "full":
      basis = self.variable(COLLECTION, "basis",
                            lambda: jnp.broadcast_to(jnp.eye(dim), (rows, dim, dim))).value[y]
      coords = jnp.einsum("bdk,bd->bk", basis, residual)
      gaussian_score = -jnp.einsum("bdk,bk->bd", basis, coords * inverse_variance)
    else:
      gaussian_score = -residual * inverse_variance
    return out + (sigma * gaussian_score).reshape(x.shape)


def fit_class_gaussians(batches: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int, *,
                        covariance: str, shrinkage: float) -> dict[str, np.ndarray]:
  """Per-class Gaussians of model inputs, for the "class_gaussian" collection.

  Args:
    batches: (x [B, ...] model inputs, labels [B]) pairs covering the training
      split once (streamed: only sums are kept).
    num_classes: C; labels must lie in [0, C).
    covariance: "full" or "diagonal".
    shrinkage: lambda in [0, 1]: Sigma = (1 - lambda) S + lambda (tr S / D) I,
      towards an isotropic covariance of the same total variance (Ledoit-Wolf
      style); it keeps rare-pixel directions from getting near-zero variance,
      which would let one stray pixel decide the class.

  Returns:
    {"mean", "variance"} (and "basis" for "full") as float32 numpy arrays with
    C + 1 rows; row C is the pooled Gaussian of all classes.

  Raises:
    ValueError: naming the field for a bad covariance/shrinkage, an empty class,
      or a label out of range.
  """
  if covariance not in COVARIANCES:
    raise ValueError(f"model.class_gaussian: {covariance!r} is not one of {list(COVARIANCES)}")
  if not 0.0 <= shrinkage <= 1.0:
    raise ValueError(f"model.class_gaussian_shrinkage: must be in [0, 1], got {shrinkage}")
  full = covariance == "full"
  count = np.zeros(num_classes)
  total = second = None
  for x, labels in batches:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"label: values must lie in [0, {num_classes}), got "
                       f"{labels.min()}..{labels.max()}")
    if total is None:
      dim = x.shape[1]
      if full and dim > MAX_FULL_DIM:
        raise ValueError(f"model.class_gaussian: 'full' needs D <= {MAX_FULL_DIM} pixel values, "
                         f"the images have {dim}; use 'diagonal'")
      total = np.zeros((num_classes, dim))
      second = np.zeros((num_classes, dim, dim) if full else (num_classes, dim))
    one_hot = np.eye(num_classes)[labels]
    count += one_hot.sum(0)
    total += one_hot.T @ x
    if full:
      second += np.einsum("bc,bd,be->cde", one_hot, x, x)
    else:
      second += one_hot.T @ (x * x)
  if total is None or (count == 0).any():
    empty = [] if total is None else np.flatnonzero(count == 0).tolist()
    raise ValueError(f"label: no training images for classes {empty or 'any'}")

  # Row C pools every class: the null label's Gaussian.
  count = np.append(count, count.sum())
  total = np.concatenate([total, total.sum(0, keepdims=True)])
  second = np.concatenate([second, second.sum(0, keepdims=True)])
  mean = total / count[:, None]
  if full:
    cov = second / count[:, None, None] - np.einsum("cd,ce->cde", mean, mean)
    iso = np.trace(cov, axis1=1, axis2=2) / cov.shape[1]
    cov = (1 - shrinkage) * cov + shrinkage * iso[:, None, None] * np.eye(cov.shape[1])
    variance, basis = np.linalg.eigh(cov)
    out = {"mean": mean, "variance": variance, "basis": basis}
  else:
    var = second / count[:, None] - mean**2
    out = {"mean": mean, "variance": (1 - shrinkage) * var + shrinkage * var.mean(1, keepdims=True)}
  # Guards the closed form against round-off making a variance slightly negative.
  out["variance"] = np.maximum(out["variance"], 1e-12)
  return {k: v.astype(np.float32) for k, v in out.items()}


def has_class_gaussian(variables: dict[str, Any]) -> bool:
  """Whether a model's variables carry class Gaussians to fit."""
  return COLLECTION in variables
