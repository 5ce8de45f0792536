"""A class-conditional DDPM++-style score network (after score_sde's ddpm.py).

Stronger than the seed U-Net: residual blocks with GroupNorm + SiLU, a time
embedding MLP into which a label embedding is added, self-attention at chosen
resolutions, strided-conv downsampling, nearest + conv upsampling, a skip
from every encoder block to the decoder, and (as DDPM++ does) residual sums
rescaled by 1/sqrt(2).

Class conditioning: the label table has `num_classes + 1` rows; row
`num_classes` is the null label, so the same network also gives the
unconditional score (classifier-free-guidance style). The trainer decides when
to feed the null label; the network treats it as just another row.

The last conv of every residual branch and of the network is initialised
near zero (score_sde's `default_init(0.)`, a 1e-10 variance scale), so every
block starts as the identity and the initial output is ~0.
"""
from __future__ import annotations

import functools
import math
from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgc_jax.models import layers

_default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
_near_zero_init = nn.initializers.variance_scaling(1e-10, "fan_avg", "uniform")


def _group_norm(channels: int, dtype: layers.Dtype, name: str | None = None):
  # score_sde's rule: up to 32 groups, at least 4 channels per group.
  return nn.GroupNorm(layers.num_groups(channels, min(channels // 4, 32)),
                      epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


class ResnetBlock(nn.Module):
  """GN-SiLU-conv, + Dense(temb), GN-SiLU-dropout-conv, rescaled residual."""
  features: int
  dropout: float
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, self.features, (3, 3), dtype=self.dtype,
                             param_dtype=jnp.float32)
    h = nn.silu(_group_norm(x.shape[-1], self.dtype)(x))
    h = conv(kernel_init=_default_init, name="conv_0")(h)
    h = h + nn.Dense(self.features, kernel_init=_default_init,
                     dtype=self.dtype, param_dtype=jnp.float32)(
                         nn.silu(temb))[:, None, None, :]
    h = nn.silu(_group_norm(self.features, self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(kernel_init=_near_zero_init, name="conv_1")(h)
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, kernel_init=_default_init, dtype=self.dtype,
                   param_dtype=jnp.float32, name="skip")(x)
    return (x + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
  """Single-head self-attention over all pixels, rescaled residual."""
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = _group_norm(channels, self.dtype)(x)
    dense = functools.partial(nn.Dense, channels, dtype=self.dtype,
                              param_dtype=jnp.float32)
    q, k, v = (dense(kernel_init=_default_init, name=name)(h).reshape(
        batch, -1, channels) for name in ("q", "k", "v"))
    logits = jnp.einsum("bic,bjc->bij", q, k,
                        preferred_element_type=jnp.float32)
    # Softmax in float32: bfloat16 logits over many pixels saturate.
    weights = jax.nn.softmax(logits / math.sqrt(channels), axis=-1)
    h = jnp.einsum("bij,bjc->bic", weights.astype(v.dtype), v)
    h = dense(kernel_init=_near_zero_init, name="out")(
        h.reshape(batch, height, width, channels))
    return (x + h) / math.sqrt(2.0)


class DDPMpp(nn.Module):
  """Class-conditional DDPM++-style U-Net predicting -z.

  Attributes:
    num_classes: real classes; the label table has num_classes + 1 rows and
      label index `num_classes` is the null (unconditional) label.
    ch: base width.
    ch_mult: width multipliers per resolution; len(ch_mult)-1 downsamplings.
    num_res_blocks: residual blocks per resolution in the encoder (the
      decoder has one more, as in DDPM).
    attn_resolutions: spatial sizes (height) at which self-attention is used.
    dropout: dropout rate inside residual blocks; active only when
      train=True, drawing from the 'dropout' rng.
    dtype: compute dtype; parameters stay float32, the output is float32.
  """
  num_classes: int
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  dtype: layers.Dtype = jnp.float32

  supports_null_label: ClassVar[bool] = True

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f"num_classes: must be >= 1, got {self.num_classes}")
    if self.ch < 1:
      raise ValueError(f"ch: must be a positive int, got {self.ch}")
    if not self.ch_mult or any(int(m) < 1 for m in self.ch_mult):
      raise ValueError("ch_mult: must be a non-empty sequence of positive ints, "
                       f"got {self.ch_mult!r}")
    if self.num_res_blocks < 1:
      raise ValueError(f"num_res_blocks: must be >= 1, got "
                       f"{self.num_res_blocks}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array,
               train: bool = False) -> jax.Array:
    """x [B,H,W,C], t [B] in [0,1], y [B] labels in [0, num_classes]."""
    ch_mult = tuple(int(m) for m in self.ch_mult)
    num_levels = len(ch_mult)
    layers.check_spatial_divisible(x, 2 ** (num_levels - 1), "ch_mult",
                                   ch_mult, type(self).__name__)
    attn_resolutions = {int(r) for r in self.attn_resolutions}
    out_channels = x.shape[-1]
    temb_dim = 4 * self.ch

    # Time embedding MLP, then the label embedding added to it.
    temb = layers.sinusoidal_embedding(t, self.ch)
    temb = nn.Dense(temb_dim, kernel_init=_default_init, dtype=self.dtype,
                    param_dtype=jnp.float32)(temb)
    temb = nn.Dense(temb_dim, kernel_init=_default_init, dtype=self.dtype,
                    param_dtype=jnp.float32)(nn.silu(temb))
    temb = temb + nn.Embed(self.num_classes + 1, temb_dim, dtype=self.dtype,
                           param_dtype=jnp.float32, name="label_emb")(y)

    def res_block(level):
      return ResnetBlock(self.ch * ch_mult[level], self.dropout, self.dtype)

    h = nn.Conv(self.ch, (3, 3), kernel_init=_default_init, dtype=self.dtype,
                param_dtype=jnp.float32)(x.astype(self.dtype))
    skips = [h]
    for level in range(num_levels):
      for _ in range(self.num_res_blocks):
        h = res_block(level)(h, temb, train)
        if h.shape[1] in attn_resolutions:
          h = AttnBlock(self.dtype)(h)
        skips.append(h)
      if level != num_levels - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2),
                    kernel_init=_default_init, dtype=self.dtype,
                    param_dtype=jnp.float32)(h)
        skips.append(h)

    h = res_block(num_levels - 1)(h, temb, train)
    h = AttnBlock(self.dtype)(h)
    h = res_block(num_levels - 1)(h, temb, train)

    for level in reversed(range(num_levels)):
      for _ in range(self.num_res_blocks + 1):
        h = res_block(level)(jnp.concatenate([h, skips.pop()], axis=-1), temb,
                             train)
      if h.shape[1] in attn_resolutions:
        h = AttnBlock(self.dtype)(h)
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2
        h = nn.Conv(h.shape[-1], (3, 3), kernel_init=_default_init,
                    dtype=self.dtype, param_dtype=jnp.float32)(h)

    h = nn.silu(_group_norm(h.shape[-1], self.dtype)(h))
    h = nn.Conv(out_channels, (3, 3), kernel_init=_near_zero_init,
                dtype=self.dtype, param_dtype=jnp.float32)(h)
    return h.astype(jnp.float32)
