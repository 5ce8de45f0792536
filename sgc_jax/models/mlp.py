"""A small residual MLP score network for tiny images (e.g. 8x8 digits).

Flattens the image, so it has no spatial inductive bias: it exists for fast
CPU runs and tests, not for mammograms. Conditioning follows DDPMpp: a
sinusoidal time embedding through an MLP, plus a label embedding with
`num_classes + 1` rows whose last row is the null (unconditional) label.
"""
from __future__ import annotations

import functools
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgc_jax.models import layers


class MLPScore(nn.Module):
  """Residual MLP predicting -z.

  Attributes:
    num_classes: real classes; label index `num_classes` is the null label.
    hidden: width of every hidden layer and of the embedding.
    depth: number of residual blocks h += Dense(SiLU(Dense(LN(h)) + e)).
    dtype: compute dtype; parameters stay float32, the output is float32.
  """
  num_classes: int
  hidden: int = 256
  depth: int = 4
  dtype: layers.Dtype = jnp.float32

  supports_null_label: ClassVar[bool] = True

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f"num_classes: must be >= 1, got {self.num_classes}")
    if self.hidden < 1:
      raise ValueError(f"hidden: must be a positive int, got {self.hidden}")
    if self.depth < 0:
      raise ValueError(f"depth: must be >= 0, got {self.depth}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array,
               train: bool = False) -> jax.Array:
    """x [B,H,W,C], t [B] in [0,1], y [B] labels in [0, num_classes].

    `train` is accepted for interface uniformity; the MLP has no dropout or
    batch statistics, so it behaves the same either way.
    """
    del train
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              param_dtype=jnp.float32)
    shape = x.shape
    h = x.reshape(shape[0], -1).astype(self.dtype)

    emb = layers.sinusoidal_embedding(t, self.hidden)
    emb = dense(self.hidden)(nn.silu(dense(self.hidden)(emb)))
    emb = emb + nn.Embed(self.num_classes + 1, self.hidden, dtype=self.dtype,
                         param_dtype=jnp.float32, name="label_emb")(y)
    emb = nn.silu(emb)

    h = dense(self.hidden)(h)
    for _ in range(self.depth):
      r = dense(self.hidden)(nn.LayerNorm(dtype=self.dtype,
                                          param_dtype=jnp.float32)(h))
      r = nn.silu(r + dense(self.hidden)(emb))
      # Scaled by 1/sqrt(depth) so the residual stream's variance stays O(1)
      # however many blocks are stacked.
      h = h + dense(self.hidden)(r) / math.sqrt(self.depth)

    h = nn.silu(nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)(h))
    h = dense(math.prod(shape[1:]))(h)
    return h.reshape(shape).astype(jnp.float32)
