"""The one place that talks to TFDS: builder plumbing and random-access reading.

Datasets are converted once into TFDS records in the array_record format, which
gives random access without TensorFlow. Builders describe images with
`tfds.features.Tensor` (never `tfds.features.Image`, which needs TensorFlow to
encode), and are read back through `tfds.data_source`-style access, never
`tfds.load`, which needs TensorFlow too.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

FILE_FORMAT = "array_record"


def default_data_dir() -> str:
  """Where records live unless a config says otherwise: $SGC_DATA_DIR or ~/.cache."""
  return os.environ.get("SGC_DATA_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "sgc_jax", "tfds"))


def image_features(image_shape, image_dtype, num_classes: int,
                   metadata: Mapping[str, object] | None = None) -> tfds.features.FeaturesDict:
  """Features for an image classification record: image, label and metadata.

  Args:
    image_shape: (H, W, C); use None for H and W when sizes vary.
    image_dtype: np.uint8 or np.uint16.
    num_classes: number of labels.
    metadata: extra scalar fields, name -> numpy dtype (`np.str_` for text).
  """
  # ZLIB keeps 16-bit mammograms (mostly black background) small on disk.
  encoding = (tfds.features.Encoding.ZLIB if np.dtype(image_dtype).itemsize > 1
              else tfds.features.Encoding.NONE)
  features = {
      "image": tfds.features.Tensor(shape=tuple(image_shape), dtype=image_dtype,
                                    encoding=encoding),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
  }
  for name, dtype in (metadata or {}).items():
    features[name] = tfds.features.Tensor(shape=(), dtype=dtype)
  return tfds.features.FeaturesDict(features)


def builder_config(builder_cls, name: str | None = None):
  """The builder config called `name` of `builder_cls`; None picks the default.

  Returns None for a builder without configs (and name None).
  """
  configs = builder_cls.builder_configs
  if not configs:
    if name is not None:
      raise ValueError(f"data.config: {builder_cls.name} has no builder configs, "
                       f"got {name!r}")
    return None
  if name is None:
    name = builder_cls.DEFAULT_BUILDER_CONFIG_NAME or next(iter(configs))
  try:
    return configs[name]
  except KeyError:
    raise ValueError(f"data.config: {builder_cls.name} has no config {name!r}; "
                     f"choose one of {sorted(configs)}") from None


def get_builder(builder_cls, data_dir: str | None = None, *,
                config=None) -> tfds.core.DatasetBuilder:
  """The builder for `data_dir`, without preparing anything."""
  kwargs = {"data_dir": data_dir or default_data_dir(), "file_format": FILE_FORMAT}
  if config is not None:
    kwargs["config"] = config
  return builder_cls(**kwargs)


def is_prepared(builder_cls, data_dir: str | None = None, *, config=None) -> bool:
  """Whether finished records of this builder (and config) exist in data_dir."""
  return get_builder(builder_cls, data_dir, config=config).is_prepared()


def prepare(builder_cls, data_dir: str | None = None, *, config=None,
            manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds a dataset's records once (idempotent) and returns its builder.

  A second call finds the finished records and does nothing, which is what
  makes conversions and the demo resumable.
  """
  builder = get_builder(builder_cls, data_dir, config=config)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=download_config)
  return builder


def data_source(builder: tfds.core.DatasetBuilder, split: str):
  """A random-access source (len and __getitem__) over one split's records."""
  if split not in builder.info.splits:
    raise ValueError(f"data.split: {builder.name} has no split {split!r}; "
                     f"available: {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)


def text(value) -> str:
  """A record's string field as `str` (sources return bytes, or 0-d arrays of them)."""
  value = value.item() if isinstance(value, np.ndarray) else value
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
