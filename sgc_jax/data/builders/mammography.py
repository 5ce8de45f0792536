"""What the CBIS-DDSM, INbreast and VinDr-Mammo builders share.

A mammography builder only has to say how to read its release's tables into
`decode_cache.Source` rows (`list_sources`). This base class then decodes the
DICOMs through the decode cache (already filled in parallel by
`sgc_jax.data.convert`, or decoded here serially when a builder is prepared
directly), writes the per-file error report `errors.csv` next to the records,
stores the per-split class counts in the dataset's metadata and writes one
record per decoded image.

Labels follow the method's protocol: 0 benign, 1 malignant. Records keep one
channel; a model pipeline that wants three replicates it.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from sgc_jax.data import decode_cache
from sgc_jax.data import dicom
from sgc_jax.data import records

CLASS_NAMES = ("benign", "malignant")
ERRORS_FILENAME = "errors.csv"

# Fields every mammography record has. Table values win; empty ones are filled
# from the DICOM header.
COMMON_METADATA = {
    "patient_id": np.str_,
    "study_id": np.str_,
    "image_id": np.str_,
    "laterality": np.str_,  # The breast's side, "L" or "R" (as used for flipping).
    "view": np.str_,  # "CC", "MLO", ...
    "source_file": np.str_,  # Relative to the manual dir.
    "bits_stored": np.int64,  # Of the source DICOM.
    "photometric": np.str_,  # Of the source DICOM.
    "flipped": np.int64,  # 1 if mirrored to put the chest wall on the left.
}
_FROM_DICOM = ("patient_id", "study_id", "image_id", "view")


@dataclasses.dataclass(eq=False)
class MammographyConfig(tfds.core.BuilderConfig):
  """A resolution / crop / bit depth choice; its name is what configs select.

  Attributes:
    image_size: stored height and width.
    roi: records are the release's cropped abnormalities, not full fields.
    bit_depth: 8, 12 or 16 (see `dicom.PreprocessOptions`).
    clahe: apply CLAHE when preprocessing.
    resize: "pad" (aspect-preserving) or "stretch".
  """

  image_size: int = 384
  roi: bool = False
  bit_depth: int = 16
  clahe: bool = False
  resize: str = "pad"

  def preprocess_options(self) -> dicom.PreprocessOptions:
    """The DICOM preprocessing these records are made with."""
    return dicom.PreprocessOptions(
        image_size=self.image_size, bit_depth=self.bit_depth, clahe=self.clahe,
        resize=self.resize,
        # An ROI crop is already the region of interest: cropping or masking
        # it to its "largest component" would cut into the lesion.
        crop_breast=not self.roi, mask_background=not self.roi)


def make_config(name: str, image_size: int, description: str, **kwargs) -> MammographyConfig:
  """A version-1.0.0 config."""
  return MammographyConfig(name=name, version=tfds.core.Version("1.0.0"),
                           release_notes={"1.0.0": "First release."},
                           description=description, image_size=image_size, **kwargs)


class MammographyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class; subclasses define list_sources, METADATA_FEATURES and texts."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  # Extra per-dataset record fields: name -> numpy dtype.
  METADATA_FEATURES: Mapping[str, object] = {}
  ALLOWED_MODALITIES: Sequence[str] | None = dicom.DEFAULT_MODALITIES
  DESCRIPTION = ""
  HOMEPAGE = ""
  CITATION = ""

  @classmethod
  def list_sources(cls, manual_dir: str, config: MammographyConfig):
    """Reads the release's tables: ([decode_cache.Source], [decode_cache.Skipped])."""
    raise NotImplementedError

  @classmethod
  def decode_cache_dir(cls, data_dir: str, config: MammographyConfig) -> str:
    """Where decoded images of this config live under a TFDS data_dir.

    Named by the preprocessing fingerprint so changed options never reuse
    stale images; beside the version folders, so TFDS ignores it.
    """
    return os.path.join(os.fspath(data_dir), cls.name, config.name, "decoded",
                        config.preprocess_options().fingerprint())

  @classmethod
  def feature_names(cls) -> tuple[str, ...]:
    """All record fields other than image and label."""
    return tuple({**COMMON_METADATA, **cls.METADATA_FEATURES})

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    options = config.preprocess_options()
    size = config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=records.image_features((size, size, 1), options.dtype, len(CLASS_NAMES),
                                        {**COMMON_METADATA, **self.METADATA_FEATURES}),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(
            bit_depth=config.bit_depth, class_names=list(CLASS_NAMES),
            preprocess=dataclasses.asdict(options)),
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    manual_dir = os.fspath(dl_manager.manual_dir)
    sources, skipped = self.list_sources(manual_dir, config)
    cache_dir = self.decode_cache_dir(os.fspath(self.data_dir_root), config)
    decoded, failed = decode_cache.decode_all(
        sources, config.preprocess_options(), cache_dir,
        allowed_modalities=self.ALLOWED_MODALITIES)
    errors = list(skipped) + list(failed)
    # self.data_dir is TFDS's temporary folder here; it becomes the records
    # folder when the build succeeds, so the report lands next to the records.
    decode_cache.write_error_csv(os.path.join(self.data_dir, ERRORS_FILENAME), errors)

    kept = collections.defaultdict(list)
    for source in sources:
      if source.key in decoded:
        kept[source.split].append(source)
    if not kept:
      raise ValueError(f"{self.name}/{config.name}: no readable image under {manual_dir}; "
                       f"{len(errors)} files skipped, see "
                       f"{os.path.join(self.data_dir, ERRORS_FILENAME)}")
    self.info.metadata["counts"] = {
        split: {name: sum(s.label == i for s in items) for i, name in enumerate(CLASS_NAMES)}
        for split, items in sorted(kept.items())}
    self.info.metadata["skipped"] = len(errors)
    return {split: self._generate_examples(items, cache_dir, decoded, manual_dir)
            for split, items in sorted(kept.items())}

  def _generate_examples(self, items, cache_dir, decoded, manual_dir):
    for source in items:
      yield source.key, self._record(source, decode_cache.load_image(cache_dir, source.key),
                                     decoded[source.key], manual_dir)

  def _record(self, source, image, dicom_metadata, manual_dir) -> dict:
    record = {"image": image, "label": int(source.label)}
    for name, dtype in {**COMMON_METADATA, **self.METADATA_FEATURES}.items():
      value = source.metadata.get(name)
      if name in _FROM_DICOM and not value:
        value = dicom_metadata.get(name)
      record[name] = value if value is not None else (0 if dtype is np.int64 else "")
    record["laterality"] = dicom_metadata["laterality"]
    record["flipped"] = int(dicom_metadata["flipped"])
    record["bits_stored"] = int(dicom_metadata["bits_stored"])
    record["photometric"] = dicom_metadata["photometric"]
    record["source_file"] = os.path.relpath(source.path, manual_dir)
    return record


def find_file(root: str, names: Sequence[str], max_depth: int = 4) -> str | None:
  """The first of `names` found at or below root (breadth-first, sorted).

  Releases are often unpacked one or two folders deep (e.g. PhysioNet's
  `physionet.org/files/vindr-mammo/1.0.0/`), so tables are searched for.
  """
  level = [root]
  for _ in range(max_depth + 1):
    for folder in level:
      for name in names:
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
          return candidate
    level = [os.path.join(folder, entry) for folder in level
             for entry in sorted(_listdir(folder))
             if os.path.isdir(os.path.join(folder, entry))]
    if not level:
      break
  return None


def _listdir(folder: str) -> list[str]:
  try:
    return os.listdir(folder)
  except OSError:
    return []


def missing_file(split: str, key: str, path: str, what: str) -> decode_cache.Skipped:
  """The error row for a table entry whose file is not in the manual dir."""
  return decode_cache.Skipped(split, key, path, "MissingFileError",
                              f"{path}: file not found ({what})")
