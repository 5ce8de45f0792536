"""Integer records -> model inputs: dequantization, channel layout and training augmentation.

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


def random_shifts(key, x, shift):
  """Translates each image of x [B,H,W,C] by a random whole number of pixels in each axis.

  `shift` is (at most, in multiples of) pixels; offsets are drawn uniformly from the
  multiples in [-at most, at most], and the borders are filled by edge replication.
  Multiples matter for upsampled records: a 2-pixel shift of digits upsampled 2x is a
  1-pixel shift of the source, one pixel would be an interpolation phase no test image has.
  """
  limit, multiple = shift
  if not limit:
    return x
  batch, h, w, _ = x.shape
  steps = limit // multiple
  offsets = multiple * jax.random.randint(key, (batch, 2), -steps, steps + 1)
  padded = jnp.pad(x, ((0, 0), (limit, limit), (limit, limit), (0, 0)), mode="edge")

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (limit - offset[0], limit - offset[1], 0),
                                 (h, w, image.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def augment(key, x, data_config):
  """The configured training augmentation: random shifts, then random flips.

  The flips draw from `key` itself, as before shifts existed, so a run with flips and
  no shifts sees the flips it saw then.
  """
  x = random_shifts(jax.random.fold_in(key, 1), x, tuple(data_config.random_shift))
  return random_flips(key, x, tuple(data_config.random_flip))
