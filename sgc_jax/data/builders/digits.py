"""The embedded default dataset: scikit-learn's 1,797 real 8x8 handwritten digits.

The pixel values (0..16) are rescaled to 8-bit integers so bits/dim is reported
on the usual 8-bit scale. The train/test split is stratified with a fixed seed,
so every machine gets the same 1,437 / 360 images.

Builder configs choose the stored size: "8x8" (the default, the images as
released) and "16x16" / "32x32", the same images with the same ids and split,
upsampled bilinearly before the 8-bit rounding. These give the seed's
convolutional U-Net (which halves the map at every level) real images of a
size it can take. Bilinear rather than nearest: nearest-neighbour 2x2 blocks
keep only the 17 grey levels and put an edge at every block border that the
3x3 convolutions see; bilinear interpolation gives smooth strokes with many
grey levels, closer to a downsampled real image. Either way the upsampled
images lie close to a subspace of the 8x8 images' dimension (at 16x16, 58 of
the 256 principal axes have a standard deviation above 0.8 grey levels, the rest hold the
8-bit rounding), so bits/dim are not comparable between sizes.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from sgc_jax.data import records

TEST_FRACTION = 0.2
SPLIT_SEED = 0
_SOURCE_SIZE = 8


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  indices = np.arange(len(labels))
  return train_test_split(indices, test_size=test_fraction, random_state=seed,
                          stratify=labels)


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] weights of bilinear resampling along one axis.

  Half-pixel centres with edge clamping (PyTorch's align_corners=False, PIL's
  and `jax.image.resize`'s upsampling convention); each row sums to 1, and
  size_out == size_in gives the identity.
  """
  centres = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
  centres = np.clip(centres, 0.0, size_in - 1)
  lo = np.floor(centres).astype(int)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = centres - lo
  weights = np.zeros((size_out, size_in))
  np.add.at(weights, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(size_out), hi), frac)
  return weights


@dataclasses.dataclass(eq=False)
class DigitsConfig(tfds.core.BuilderConfig):
  """The stored image size (square); the 8x8 images are upsampled bilinearly to it."""

  image_size: int = _SOURCE_SIZE


def _make_config(size: int, description: str) -> DigitsConfig:
  return DigitsConfig(name=f"{size}x{size}", description=description, image_size=size)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn `load_digits` as SxSx1 uint8 images with labels 0..9."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split, seed 0, 8-bit rescaling."}
  BUILDER_CONFIGS = [
      _make_config(8, "The released 8x8 images."),
      _make_config(16, "Upsampled bilinearly to 16x16 (for the seed U-Net)."),
      _make_config(32, "Upsampled bilinearly to 32x32 (for the seed U-Net)."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "8x8"

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"scikit-learn's load_digits: 1,797 real handwritten digits, {size}x{size}.",
        features=records.image_features((size, size, 1), np.uint8, 10, {"id": np.int64}),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(bit_depth=8),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships inside scikit-learn: nothing is downloaded.
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    resample = bilinear_matrix(_SOURCE_SIZE, self.builder_config.image_size)
    images = np.einsum("ph,nhw,qw->npq", resample, digits.images, resample)
    # 0..16 -> 0..255: the 17 real levels (and, upsampled, the values between
    # them) spread over the 8-bit range.
    images = np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return {
        "train": self._generate_examples(images, labels, train_idx),
        "test": self._generate_examples(images, labels, test_idx),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i]), "id": int(i)}
