"""Integer records -> model inputs: dequantization, channel layout and training flips.

Shared by the trainer, the evaluation and the discriminative baseline, so every
model sees exactly the same inputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sgc_jax.likelihood import dequantize


def image_shape(config, builder) -> tuple[int, int, int]:
  """(H, W, C) of the model inputs: the records' size with the configured channels."""
  h, w, _ = builder.info.features["image"].shape
  return (h, w, config.data.num_channels)


def model_inputs(key, images, config):
  """Integer records -> dequantized model inputs with the configured channels."""
  x = dequantize(key, images, bit_depth=config.data.bit_depth, data_range=tuple(config.data.range))
  if x.shape[-1] != config.data.num_channels:
    x = jnp.repeat(x, config.data.num_channels // x.shape[-1], axis=-1)
  return x


def random_flips(key, x, flips):
  """Flips each image of x [B,H,W,C] with probability 1/2 per enabled (horizontal, vertical) axis."""
  h_key, v_key = jax.random.split(key)
  batch = x.shape[0]
  if flips[0]:
    x = jnp.where(jax.random.bernoulli(h_key, 0.5, (batch, 1, 1, 1)), x[:, :, ::-1], x)
  if flips[1]:
    x = jnp.where(jax.random.bernoulli(v_key, 0.5, (batch, 1, 1, 1)), x[:, ::-1], x)
  return x
