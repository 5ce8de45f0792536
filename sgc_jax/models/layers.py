"""Building blocks shared by the score networks.

Conventions used by every model in `sgc_jax.models`:
- parameters are always float32; `dtype` only sets the compute dtype;
- time embeddings are computed in float32 whatever the compute dtype, because
  sin/cos of arguments in the hundreds (2*pi*30*t for the Fourier features,
  ~1000*t for the sinusoidal ones) lose all precision in bfloat16.
"""
from __future__ import annotations

import functools
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


class ConvTranspose(nn.Module):
  """Transposed convolution whose kernel equals its stride, as one einsum.

  Computes exactly what `nn.ConvTranspose(features, (k, k), strides=(k, k),
  padding="VALID")` computes, with the same parameters (`kernel` (k, k, in,
  out), `bias` (out,)), so checkpoints of either load into the other. With a
  kernel no larger than the stride the output windows do not overlap: every
  input pixel writes its own k x k block, which is one matmul over channels
  and a reshape. Flax's layer lowers to a dilated convolution instead, whose
  weight gradient XLA:CPU runs as a plain loop (tens of ms per layer, growing
  with the image; method.md section 6).

  Attributes:
    features: output channels.
    factor: kernel size and stride k in both spatial axes.
    kernel_init, bias_init: initialisers of the (k, k, in, out) kernel and bias.
    dtype: compute dtype; parameters are float32.
  """
  features: int
  factor: int = 2
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, H, W, C] -> [B, k*H, k*W, features]."""
    k = self.factor
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # Flax's convention (no `transpose_kernel`) places kernel tap (a, b) at
    # offset (k-1-a, k-1-b) of each output block, hence the flip.
    y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel[::-1, ::-1])
    batch, height, _, width, _, _ = y.shape
    return y.reshape(batch, height * k, width * k, self.features) + bias


class Conv(nn.Module):
  """Stride-1 convolution with an odd square kernel and zero 'SAME' padding.

  The same parameters and outputs as `nn.Conv(features, (k, k), padding=k//2)`.
  On feature maps smaller than the kernel (the U-Net's bottom level at 32x32
  inputs is 2x2) XLA:CPU swaps the convolution's operands and runs it as a
  plain loop (~0.5 s of a 1.1 s training step); there this layer pads once,
  gathers the k*k shifted views and does one matmul (im2col), which is exact.
  A 1x1 kernel is that matmul too: XLA:CPU's (YNNPACK) 1x1 convolution took
  57/55/90 ms for the forward/input/weight gradient of the U-Net's output
  layer at 128x128, batch 32, the matmul 4.5/32/9 ms
  (tools/results/train_throughput_layers.json). Larger kernels on larger maps
  use `lax.conv_general_dilated`, as `nn.Conv` does (im2col there is 3-4x
  slower: gathering the shifted views costs more than the convolution).

  Attributes:
    features: output channels.
    kernel_size: k (odd).
    use_bias: whether to add a bias.
    kernel_init, bias_init: initialisers of the (k, k, in, out) kernel and bias.
    dtype: compute dtype; parameters are float32.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, H, W, C] -> [B, H, W, features]."""
    k = self.kernel_size
    if k % 2 != 1:
      raise ValueError(f"kernel_size: must be odd, got {k}")
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    height, width = x.shape[1:3]
    if k == 1 or min(height, width) < k:
      y = _im2col_conv(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, window_strides=(1, 1), padding=[(k // 2, k // 2)] * 2,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y if bias is None else y + bias


def _im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'SAME' stride-1 convolution as k*k shifted views of the padded input and one matmul."""
  k = kernel.shape[0]
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  # Tap order (i, j, c) is the row-major flattening of the HWIO kernel.
  patches = jnp.concatenate([padded[:, i:i + height, j:j + width, :]
                             for i in range(k) for j in range(k)], axis=-1)
  return patches @ kernel.reshape(-1, kernel.shape[-1])


def max_pool(x: jax.Array, factor: int = 2) -> jax.Array:
  """Non-overlapping k x k max-pooling of NHWC `x` (H, W divisible by k), PyTorch's gradient.

  Equals `nn.max_pool(x, (k, k), strides=(k, k))`. Its gradient goes to the
  first maximum of each window in row-major order, as PyTorch's `MaxPool2d`
  does (Flax's goes to one maximum too; the two differ only on exact ties).
  Written as k*k strided views and elementwise maxima with a custom JVP
  (forward mode, which the likelihood's divergence needs, and, by transposing
  it, reverse mode): XLA:CPU runs the gradient of `lax.reduce_window`
  (select-and-scatter) ~100x slower (300 ms against 3 ms for a 32x64x64x32
  batch).
  """
  return _max_pool(x, factor)


def _window_taps(x: jax.Array, factor: int) -> list[jax.Array]:
  """The k*k strided views x[:, i::k, j::k], in row-major (i, j) order."""
  batch, height, width, channels = x.shape
  windows = x.reshape(batch, height // factor, factor, width // factor, factor, channels)
  return [windows[:, :, i, :, j] for i in range(factor) for j in range(factor)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, factor: int) -> jax.Array:
  return functools.reduce(jnp.maximum, _window_taps(x, factor))


@_max_pool.defjvp
def _max_pool_jvp(factor, primals, tangents):
  (x,), (dx,) = primals, tangents
  out = _max_pool(x, factor)
  # The tangent of each window's first maximum (row-major), linear in dx so
  # that its transpose is the gradient.
  taken = jnp.zeros(out.shape, bool)
  tangent = jnp.zeros(out.shape, dx.dtype)
  for tap, dtap in zip(_window_taps(x, factor), _window_taps(dx, factor)):
    first = (tap == out) & ~taken
    taken = taken | first
    tangent = tangent + jnp.where(first, dtap, jnp.zeros_like(dtap))
  return out, tangent


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
