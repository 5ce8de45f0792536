"""Building blocks shared by the score networks.

Conventions used by every model in `sgc_jax.models`:
- parameters are always float32; `dtype` only sets the compute dtype;
- time embeddings are computed in float32 whatever the compute dtype, because
  sin/cos of arguments in the hundreds (2*pi*30*t for the Fourier features,
  ~1000*t for the sinusoidal ones) lose all precision in bfloat16.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Collection holding fixed (never trained) random tensors. It is kept out of
# `params` so that an optimiser built on `variables["params"]` cannot touch it,
# while it still travels with the rest of the variables into checkpoints.
CONSTANTS = "constants"


def torch_kernel_init(in_axis: int = -2, out_axis: int = -1):
  """PyTorch's default weight init for Linear/Conv layers.

  kaiming_uniform(a=sqrt(5)) is U(-b, b) with b = 1/sqrt(fan_in), which is a
  variance scaling of 1/3 over fan_in. `in_axis`/`out_axis` select the axes
  that PyTorch treats as input/output features (they differ for transposed
  convolutions, see `SeedUNet`).
  """
  return nn.initializers.variance_scaling(
      1.0 / 3.0, "fan_in", "uniform", in_axis=in_axis, out_axis=out_axis)


def torch_bias_init(fan_in: int):
  """PyTorch's default bias init for Linear/Conv layers: U(-1/sqrt(fan_in), +)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def num_groups(channels: int, requested: int) -> int:
  """Largest group count <= `requested` that divides `channels`.

  Lets the reference group counts (4 and 32) degrade gracefully on the tiny
  channel widths used by tests and CPU runs, e.g. 32 groups on 16 channels
  becomes 16, and 4 groups on 6 channels becomes 3.
  """
  for groups in range(max(1, min(requested, channels)), 0, -1):
    if channels % groups == 0:
      return groups
  raise AssertionError("unreachable: 1 divides every channel count")


class GaussianFourierProjection(nn.Module):
  """Gaussian random Fourier features of t: [sin 2*pi*t*W, cos 2*pi*t*W].

  W ~ scale * N(0, 1) has `embed_dim // 2` entries, drawn once at init from
  the 'params' rng and stored in the `constants` collection (not `params`),
  so it is never trained but is saved and restored with the model, exactly
  like the reference's `requires_grad=False` parameter.

  Attributes:
    embed_dim: output width (even); 2 * number of frequencies.
    scale: standard deviation of the frequencies.
  """
  embed_dim: int
  scale: float = 30.0

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    """Maps times [B] to float32 features [B, embed_dim]."""
    w = self.variable(
        CONSTANTS, "W",
        lambda: self.scale * jax.random.normal(
            self.make_rng("params"), (self.embed_dim // 2,), jnp.float32))
    proj = t.astype(jnp.float32)[:, None] * w.value[None, :] * (2.0 * jnp.pi)
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def sinusoidal_embedding(t: jax.Array, dim: int,
                         max_positions: float = 10000.0) -> jax.Array:
  """Transformer-style sinusoidal embedding of 1000*t, float32 [B, dim].

  Continuous times in [0, 1] are scaled by 1000 so the frequencies span the
  same range as DDPM's integer timesteps (score_sde does the same with 999*t);
  without the scaling the low frequencies would barely change over [0, 1].
  Deterministic, so it needs no stored constants.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_positions)
                  * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def check_spatial_divisible(x: jax.Array, factor: int, field: str,
                            value: Any, model: str) -> None:
  """Raises ValueError unless H and W of NHWC `x` are multiples of `factor`.

  The message names the config field whose depth sets `factor`, since that
  (or the image size) is what the user has to change.
  """
  if x.ndim != 4:
    raise ValueError(f"{model}: expected NHWC input [B, H, W, C], got shape "
                     f"{x.shape}")
  height, width = x.shape[1], x.shape[2]
  if height % factor or width % factor:
    raise ValueError(
        f"{model}: input size {height}x{width} must be divisible by "
        f"2**(len({field})-1) = {factor} for {field}={value!r}")
