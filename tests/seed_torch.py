"""A PyTorch mirror of the seed's `UNetScoreModel_conditional`, for tests and benchmarks.

Written from the released code (sushmitaSARKER/SGC_for_Medical_Image_Classification,
models/unet_score_model_conditional.py, unet_parts.py, embedding.py): the same
layers in the same order under the same attribute names, so its `state_dict()`
has exactly the reference's keys and shapes (what `sgc_jax.seed_import` reads)
and its forward pass computes the reference's function: only the
transposed-convolution upsampling, GroupNorm of 4 groups after the first block
and 32 after every other, and the output divided by sigma(t) (`marginal_std`,
a function of t [B] -> [B]).

One generalisation, so that tests can run it on tiny images: the reference has
exactly five levels and widths that are multiples of 32; here `channels` may
have any length >= 2, and a group count is lowered to the largest that
divides the width (`layers.num_groups`, as the Flax port does). At the
reference's widths this is the reference.

Imports torch: callers skip when it is not installed
(`pytest.importorskip("torch")`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from sgc_jax.models.layers import num_groups


class GaussianFourierProjection(nn.Module):
  """[sin 2 pi t W, cos 2 pi t W] with fixed W ~ scale * N(0, 1)."""

  def __init__(self, embed_dim: int, scale: float = 30.0):
    super().__init__()
    self.W = nn.Parameter(torch.randn(embed_dim // 2) * scale, requires_grad=False)

  def forward(self, t):
    proj = t[:, None] * self.W[None, :] * 2 * math.pi
    return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class Dense(nn.Module):
  """Linear layer whose output is broadcast over the feature map."""

  def __init__(self, input_dim: int, output_dim: int):
    super().__init__()
    self.dense = nn.Linear(input_dim, output_dim)

  def forward(self, x):
    return self.dense(x)[..., None, None]


class DoubleConv(nn.Module):
  """[3x3 conv (no bias) -> BatchNorm -> ReLU] x 2 under the reference's `double_conv`."""

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__()
    self.double_conv = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

  def forward(self, x):
    return self.double_conv(x)


class Down(nn.Module):
  """Max-pool 2 then the double convolution (`maxpool_conv.1.double_conv...`)."""

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__()
    self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

  def forward(self, x):
    return self.maxpool_conv(x)


class Up(nn.Module):
  """2x2 stride-2 transposed conv to half the width, concat [skip, up], double conv."""

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__()
    self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
    self.conv = DoubleConv(in_channels, out_channels)

  def forward(self, x, skip):
    return self.conv(torch.cat([skip, self.up(x)], dim=1))


class OutConv(nn.Module):

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

  def forward(self, x):
    return self.conv(x)


class SeedUNetTorch(nn.Module):
  """The seed's class-conditional U-Net; forward(x NCHW, t, y) -> score."""

  def __init__(self, marginal_std, n_channels: int = 3, n_classes: int = 2,
               channels=(32, 64, 128, 256, 512), embed_dim: int = 256):
    super().__init__()
    depth = len(channels)
    self.marginal_std = marginal_std
    self.embed = nn.Sequential(GaussianFourierProjection(embed_dim),
                               nn.Linear(embed_dim, embed_dim))
    self.label_emb = nn.Embedding(n_classes, embed_dim)
    self.conv1 = DoubleConv(n_channels, channels[0])
    for level, width in enumerate(channels):
      if level:
        setattr(self, f"down{level + 1}", Down(channels[level - 1], width))
      setattr(self, f"dense{level + 1}", Dense(embed_dim, width))
      groups = num_groups(width, 4 if level == 0 else 32)
      setattr(self, f"gnorm{level + 1}", nn.GroupNorm(groups, width))
    for level in reversed(range(depth - 1)):
      width = channels[level]
      setattr(self, f"up{level + 1}", Up(channels[level + 1], width))
      setattr(self, f"t_dense{level + 1}", Dense(embed_dim, width))
      setattr(self, f"t_gnorm{level + 1}", nn.GroupNorm(num_groups(width, 32), width))
    self.depth = depth
    self.outc = OutConv(channels[0], n_channels)

  def forward(self, x, t, y):
    act = lambda h: h * torch.sigmoid(h)  # noqa: E731
    embed = act(self.embed(t)) + self.label_emb(y)
    skips = []
    h = x
    for level in range(self.depth):
      block = self.conv1 if level == 0 else getattr(self, f"down{level + 1}")
      h = block(h)
      h = act(getattr(self, f"gnorm{level + 1}")(h + getattr(self, f"dense{level + 1}")(embed)))
      skips.append(h)
    skips.pop()
    for level in reversed(range(self.depth - 1)):
      h = getattr(self, f"up{level + 1}")(h, skips.pop())
      h = act(getattr(self, f"t_gnorm{level + 1}")(h + getattr(self, f"t_dense{level + 1}")(embed)))
    return self.outc(h) / self.marginal_std(t)[:, None, None, None]


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and BatchNorm running statistics (in place), so no layer is at its init.

  Conv/Linear weights ~ N(0, 1/fan_in), biases and running means ~ N(0, 0.1^2),
  norm scales and running variances ~ U(0.5, 1.5), Fourier frequencies
  ~ 30 N(0, 1). Norm scales stay positive: with scales near 0 or negative most
  ReLUs die and the GroupNorms that follow divide float32 rounding noise by
  sqrt(eps), which makes float32 outputs of any two exact implementations
  differ by ~1e-2 (they agree to ~1e-7 in float64).
  """
  gen = torch.Generator().manual_seed(seed)
  norms = (nn.BatchNorm2d, nn.GroupNorm)
  norm_scales = {f"{name}.weight" for name, module in model.named_modules()
                 if isinstance(module, norms)}
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var") or name in norm_scales:
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
      elif name.endswith("embed.0.W"):
        tensor.copy_(30.0 * torch.randn(tensor.shape, generator=gen))
      elif tensor.ndim > 1:
        fan_in = math.prod(tensor.shape[1:])
        tensor.copy_(torch.randn(tensor.shape, generator=gen) / math.sqrt(fan_in))
      else:
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
  return model
