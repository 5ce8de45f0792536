"""The embedded default dataset: scikit-learn's 1,797 real 8x8 handwritten digits.

The pixel values (0..16) are rescaled to 8-bit integers so bits/dim is reported
on the usual 8-bit scale. The train/test split is stratified with a fixed seed,
so every machine gets the same 1,437 / 360 images.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from sgc_jax.data import records

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  indices = np.arange(len(labels))
  return train_test_split(indices, test_size=test_fraction, random_state=seed,
                          stratify=labels)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn `load_digits` as 8x8x1 uint8 images with labels 0..9."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split, seed 0, 8-bit rescaling."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn's load_digits: 1,797 real 8x8 handwritten digits.",
        features=records.image_features((8, 8, 1), np.uint8, 10, {"id": np.int64}),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(bit_depth=8),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships inside scikit-learn: nothing is downloaded.
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    # 0..16 -> 0..255: keep the 17 real levels, spread over the 8-bit range.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return {
        "train": self._generate_examples(images, labels, train_idx),
        "test": self._generate_examples(images, labels, test_idx),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i]), "id": int(i)}
