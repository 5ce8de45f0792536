"""Port of the seed's class-conditional U-Net score network (method.md §1.1).

Reference: `UNetScoreModel_conditional` in
sushmitaSARKER/SGC_for_Medical_Image_Classification (models/
unet_score_model_conditional.py, unet_parts.py, embedding.py), itself built
on the ScoreNet of Yang Song's score-SDE tutorial.

What is kept exactly: the topology, the widths, which layers have biases, the
group counts (see below), GroupNorm eps 1e-5, the fixed Fourier time
embedding on raw t, the label embedding table of `num_classes` rows, PyTorch's
default initialisation, and the parameter count (8,210,787 at 3 channels and
2 classes, of which 128 are the fixed Fourier weights). Submodule names follow
the reference's attribute names (conv1, down2, dense2, gnorm2, t_dense4,
t_gnorm4, outc, label_emb; up4.up/up4.conv -> up4_up/up4_conv, embed.0/embed.1
-> embed_fourier/embed) so that weights can be mapped one to one
(`sgc_jax.seed_import`): PyTorch conv weights OIHW become HWIO kernels, and
the transposed-conv weights IOHW become HWIO kernels *flipped in both spatial
axes* (Flax's ConvTranspose convention, kept by `layers.ConvTranspose`, places
kernel tap (a, b) at output offset (1-a, 1-b)); Linear weights are transposed.
GroupNorm computes its variance in two passes, as PyTorch does. With the
imported weights the output equals the reference's (times sigma(t)) to ~1e-6
relative (tests/test_seed_import.py).

Speed: the convolutions are `layers.Conv` and `layers.ConvTranspose`, which
compute what Flax's layers compute (same parameters) but avoid two XLA:CPU
slow paths: the transposed convolution's weight gradient, and 3x3
convolutions on maps smaller than the kernel (1x1 convolutions run as one
matmul, several times faster in all three phases); `layers.max_pool` avoids a
third, the gradient of `lax.reduce_window`.

Differences, all deliberate:
- the network returns the raw output (an estimate of -z); the reference
  divides by sigma(t) inside `forward`, here the caller does
  (`sgc_jax.models.make_score_fn`), so models know nothing about SDEs;
- BatchNorm follows `train` (batch statistics when training, running averages
  otherwise); the reference demo never switched to eval mode. `norm="group"`
  (not in the reference) puts a GroupNorm in each BatchNorm's place, so that an
  image's output never depends on its batch-mates or on running averages. Flax updates the
  running variance with the biased batch variance, PyTorch with the unbiased
  one (a factor n/(n-1) with n = B*H*W, negligible at these sizes);
- inputs must have H and W divisible by 2**(len(channels)-1); the reference
  instead zero-padded mismatched skip connections;
- only the non-bilinear (transposed-convolution) upsampling path exists, the
  one the reference uses.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgc_jax.models import layers

# Group counts of the reference: 4 after the first encoder block, 32 after
# every other block, including the last decoder block (the reference's
# t_gnorm1 uses 32 groups on 32 channels, i.e. per-channel normalisation).
_FIRST_LEVEL_GROUPS = 4
_GROUPS = 32
_NORM_EPS = 1e-5


NORMS = ("batch", "group")


class DoubleConv(nn.Module):
  """[3x3 conv (no bias) -> BatchNorm -> ReLU] x 2, as in the reference.

  With `dropout` > 0 (not in the reference), dropout between the two, where
  DDPM's residual blocks drop, active only in training. With `norm="group"`
  (not in the reference), GroupNorm with the block's group count instead of
  BatchNorm.
  """
  features: int
  dtype: layers.Dtype = jnp.float32
  dropout: float = 0.0
  norm: str = "batch"
  groups: int = _GROUPS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(2):
      # Named as nn.Conv would be auto-named, so checkpoints stay readable.
      x = layers.Conv(self.features, 3, use_bias=False,
                      kernel_init=layers.torch_kernel_init(), dtype=self.dtype,
                      name=f"Conv_{i}")(x)
      if self.norm == "group":
        x = nn.GroupNorm(layers.num_groups(self.features, self.groups), epsilon=_NORM_EPS,
                         use_fast_variance=False, dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"GroupNorm_{i}")(x)
      else:
        # PyTorch momentum 0.1 on the new value == Flax momentum 0.9 on the old.
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=_NORM_EPS, dtype=self.dtype,
                         param_dtype=jnp.float32)(x)
      x = nn.relu(x)
      if i == 0 and self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class SeedUNet(nn.Module):
  """The seed's class-conditional U-Net; predicts -z (see module docstring).

  Attributes:
    num_classes: rows of the label embedding (no null label).
    channels: widths per resolution level; len(channels)-1 downsamplings.
    embed_dim: width of the time/label embedding (even).
    fourier_scale: std of the fixed Fourier frequencies.
    dtype: compute dtype; parameters stay float32, the output is float32.
    dropout: rate inside every DoubleConv, drawing from the 'dropout' rng when
      train=True; 0 (the reference) adds no layer.
    norm: the DoubleConvs' normalisation, "batch" (the reference) or "group"
      (GroupNorm with the group count of the GroupNorm that follows the block).
  """
  num_classes: int
  channels: Sequence[int] = (32, 64, 128, 256, 512)
  embed_dim: int = 256
  fourier_scale: float = 30.0
  dtype: layers.Dtype = jnp.float32
  dropout: float = 0.0
  norm: str = "batch"

  supports_null_label: ClassVar[bool] = False

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f"num_classes: must be >= 1, got {self.num_classes}")
    if not self.channels or any(int(c) < 1 for c in self.channels):
      raise ValueError("channels: must be a non-empty sequence of positive "
                       f"ints, got {self.channels!r}")
    if self.embed_dim < 2 or self.embed_dim % 2:
      raise ValueError(f"embed_dim: must be a positive even int, got "
                       f"{self.embed_dim}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
    if self.norm not in NORMS:
      raise ValueError(f"norm: unknown {self.norm!r}; choose one of {NORMS}")
    super().__post_init__()

  def _dense(self, features: int, fan_in: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=layers.torch_kernel_init(),
                    bias_init=layers.torch_bias_init(fan_in), dtype=self.dtype,
                    param_dtype=jnp.float32, name=name)

  def _norm_act(self, h: jax.Array, emb: jax.Array, groups: int,
                suffix: str, prefix: str = "") -> jax.Array:
    """act(GroupNorm(h + Dense(emb))): the reference's per-block conditioning."""
    features = h.shape[-1]
    h = h + self._dense(features, self.embed_dim,
                        f"{prefix}dense{suffix}")(emb)[:, None, None, :]
    # Two-pass variance, as PyTorch computes it: Flax's default E[x^2]-E[x]^2
    # differs from the reference by up to 2e-2 relative on the 1-2-channel
    # groups of this network (method.md section 6).
    h = nn.GroupNorm(layers.num_groups(features, groups), epsilon=_NORM_EPS,
                     use_fast_variance=False, dtype=self.dtype,
                     param_dtype=jnp.float32,
                     name=f"{prefix}gnorm{suffix}")(h)
    return nn.silu(h)

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array,
               train: bool = False) -> jax.Array:
    """x [B,H,W,C], t [B] in [0,1], y [B] int labels -> float32 [B,H,W,C]."""
    channels = tuple(int(c) for c in self.channels)
    depth = len(channels)
    layers.check_spatial_divisible(x, 2 ** (depth - 1), "channels", channels,
                                   type(self).__name__)
    out_channels = x.shape[-1]
    x = x.astype(self.dtype)

    # Embedding: act(Linear(Fourier(t))) + Embed(y), both embed_dim wide.
    temb = layers.GaussianFourierProjection(
        self.embed_dim, self.fourier_scale, name="embed_fourier")(t)
    temb = nn.silu(self._dense(self.embed_dim, self.embed_dim, "embed")(temb))
    # nn.Embedding's default init in PyTorch is N(0, 1).
    emb = temb + nn.Embed(self.num_classes, self.embed_dim,
                          embedding_init=nn.initializers.normal(1.0),
                          dtype=self.dtype, param_dtype=jnp.float32,
                          name="label_emb")(y)

    # Encoder: conv1, then down2..downN (max-pool + DoubleConv).
    skips = []
    h = x
    for level, features in enumerate(channels):
      groups = _FIRST_LEVEL_GROUPS if level == 0 else _GROUPS
      if level == 0:
        h = DoubleConv(features, self.dtype, self.dropout, self.norm, groups, name="conv1")(h, train)
      else:
        h = layers.max_pool(h, 2)
        h = DoubleConv(features, self.dtype, self.dropout, self.norm, groups,
                       name=f"down{level + 1}")(h, train)
      h = self._norm_act(h, emb, groups, str(level + 1))
      skips.append(h)

    # Decoder: up(N-1)..up1: 2x2 stride-2 transposed conv to half the input
    # width, concat [skip, upsampled], DoubleConv.
    skips.pop()
    for level in reversed(range(depth - 1)):
      in_features = h.shape[-1]
      up_features = in_features // 2
      # PyTorch computes a ConvTranspose2d's fan_in from its weight's dim 1,
      # which is the *output* width; Flax's kernel is (kh, kw, in, out), so
      # the roles of the last two axes are swapped to reproduce that init.
      h = layers.ConvTranspose(
          up_features, 2,
          kernel_init=layers.torch_kernel_init(in_axis=-1, out_axis=-2),
          bias_init=layers.torch_bias_init(up_features * 4),
          dtype=self.dtype, name=f"up{level + 1}_up")(h)
      h = jnp.concatenate([skips.pop(), h], axis=-1)
      h = DoubleConv(channels[level], self.dtype, self.dropout, self.norm,
                     name=f"up{level + 1}_conv")(h, train)
      h = self._norm_act(h, emb, _GROUPS, str(level + 1), prefix="t_")

    h = layers.Conv(out_channels, 1, kernel_init=layers.torch_kernel_init(),
                    bias_init=layers.torch_bias_init(channels[0]),
                    dtype=self.dtype, name="outc")(h)
    return h.astype(jnp.float32)
