"""What the CBIS-DDSM, INbreast and VinDr-Mammo builders share.

A mammography builder only has to say how to match its release's tables to
files on disk (`read_release`, returning a `Resolution`: one
`decode_cache.Source` per record to be, a `decode_cache.Skipped` row per entry
that will not be one). This base class adds duplicate detection (`resolve`,
which is also what `sgc-convert --check` runs, in seconds and without
decoding), then decodes the DICOMs through the decode cache (already filled in
parallel by `sgc_jax.data.convert`, or decoded here serially when a builder is
prepared directly), stores the per-split class counts in the dataset's metadata
and writes one record per decoded image.

The reports (`resolve_report.csv`: every entry and where it resolved;
`errors.csv`: every entry that did not become a record, and why) are written
beside the version folder (`<data_dir>/<dataset>/<config>/`), not inside it:
while TFDS builds, the version folder is a temporary `incomplete.*` folder that
TFDS deletes when the build fails, which is exactly when the reports matter.

Labels follow the method's protocol: 0 benign, 1 malignant. Records keep one
channel; a model pipeline that wants three replicates it.
"""
from __future__ import annotations

import collections
import csv
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
RESOLVE_REPORT_FILENAME = "resolve_report.csv"
RESOLVE_REPORT_FIELDS = ("status", "split", "class", "key", "source_file", "error", "message")
# Skipped rows that mean the download lacks a file (not that a file is bad).
MISSING_ERRORS = ("MissingFileError",)
DUPLICATE_ERRORS = ("DuplicateKeyError", "DuplicateFileError")
# How many reasons a printed summary or an error message shows.
FIRST_REASONS = 5


class ReleaseError(ValueError):
  """The manual dir does not hold what a conversion needs; the message says what it holds."""


@dataclasses.dataclass
class Resolution:
  """A release's tables matched to files on disk, before any decoding.

  Attributes:
    manual_dir: the folder searched.
    tables: each table file read -> its number of rows.
    missing_tables: tables of the release that were not found (a partial
      download converts what the others list).
    image_roots: the folders images were looked for in.
    sources: one per record to be: the entries whose file was found.
    skipped: the entries (and files) that will not become records, and why.
    labels: key -> label of every listed entry whose table gives one, resolved
      or not, so that what is missing is counted per class.
    unnamed: image files (or, for CBIS-DDSM, subject folders) on disk that no
      table row names.
    dataset: the builder's name (set by `MammographyBuilder.resolve`).
    config: the builder config's name (set by `MammographyBuilder.resolve`).
  """

  manual_dir: str
  tables: dict[str, int] = dataclasses.field(default_factory=dict)
  missing_tables: list[str] = dataclasses.field(default_factory=list)
  image_roots: list[str] = dataclasses.field(default_factory=list)
  sources: list[decode_cache.Source] = dataclasses.field(default_factory=list)
  skipped: list[decode_cache.Skipped] = dataclasses.field(default_factory=list)
  labels: dict[str, int] = dataclasses.field(default_factory=dict)
  unnamed: list[str] = dataclasses.field(default_factory=list)
  dataset: str = ""
  config: str = ""

  def add(self, source: decode_cache.Source) -> None:
    """Records an entry whose file was found."""
    self.sources.append(source)
    self.labels[source.key] = source.label

  def skip(self, skipped: decode_cache.Skipped, label: int | None = None) -> None:
    """Records an entry that will not become a record (with its label, if known)."""
    self.skipped.append(skipped)
    if label is not None:
      self.labels[skipped.key] = label

  def missing(self) -> list[str]:
    """What the splits need and the download lacks, one line each ([] when complete)."""
    lines = [f"table {name} not found" for name in self.missing_tables]
    absent = sum(s.error in MISSING_ERRORS for s in self.skipped)
    if absent:
      lines.append(f"{absent} listed images not found")
    return lines

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
  """Base class; subclasses define read_release, METADATA_FEATURES and texts."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  # Extra per-dataset record fields: name -> numpy dtype.
  METADATA_FEATURES: Mapping[str, object] = {}
  ALLOWED_MODALITIES: Sequence[str] | None = dicom.DEFAULT_MODALITIES
  DESCRIPTION = ""
  HOMEPAGE = ""
  CITATION = ""

  @classmethod
  def read_release(cls, manual_dir: str, config: MammographyConfig) -> Resolution:
    """Reads the release's tables and finds the file of every entry (no decoding).

    Raises ReleaseError when no table is found or a table lacks its columns.
    """
    raise NotImplementedError

  @classmethod
  def resolve(cls, manual_dir: str, config: MammographyConfig) -> Resolution:
    """`read_release`, with repeated keys and files reported rather than written twice."""
    resolution = cls.read_release(os.fspath(manual_dir), config)
    resolution.dataset, resolution.config = cls.name, config.name
    _drop_duplicates(resolution)
    return resolution

  @classmethod
  def report_dir(cls, data_dir: str, config: MammographyConfig) -> str:
    """Where this config's reports and decode cache live under a TFDS data_dir.

    Beside the version folders, so TFDS ignores it and never deletes it.
    """
    return os.path.join(os.fspath(data_dir), cls.name, config.name)

  @classmethod
  def decode_cache_dir(cls, data_dir: str, config: MammographyConfig) -> str:
    """Where decoded images of this config live under a TFDS data_dir.

    Named by the preprocessing fingerprint so changed options never reuse
    stale images.
    """
    return os.path.join(cls.report_dir(data_dir, config), "decoded",
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
    data_dir = os.fspath(self.data_dir_root)
    resolution = self.resolve(manual_dir, config)
    # Not self.data_dir: that is TFDS's temporary folder, deleted if this fails.
    report_dir = self.report_dir(data_dir, config)
    write_resolve_report(os.path.join(report_dir, RESOLVE_REPORT_FILENAME), resolution)
    cache_dir = self.decode_cache_dir(data_dir, config)
    decoded, failed = decode_cache.decode_all(
        resolution.sources, config.preprocess_options(), cache_dir,
        allowed_modalities=self.ALLOWED_MODALITIES)
    errors = resolution.skipped + list(failed)
    errors_file = os.path.join(report_dir, ERRORS_FILENAME)
    decode_cache.write_error_csv(errors_file, errors)

    kept = collections.defaultdict(list)
    for source in resolution.sources:
      if source.key in decoded:
        kept[source.split].append(source)
    if not kept:
      raise ReleaseError(
          f"{self.name}/{config.name}: no readable image under {manual_dir}: "
          f"{len(resolution.sources)} listed images found, none decoded; "
          f"skipped {describe_skipped(errors)}\nEvery reason: {errors_file}")
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
  return next(iter(find_all(root, names, max_depth)), None)


def find_all(root: str, names: Sequence[str], max_depth: int = 4) -> list[str]:
  """Every path named one of `names` at depth 0..max_depth below root, shallowest first.

  Depth 0 is `root/<name>`, depth 1 `root/<folder>/<name>`, and so on.
  """
  found = []
  level = [root]
  for depth in range(max_depth + 1):
    for folder in level:
      for name in names:
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
          found.append(candidate)
    if depth == max_depth:
      break  # Listing the next level would read every folder of an image tree.
    level = [os.path.join(folder, entry) for folder in level
             for entry in sorted(_listdir(folder))
             if os.path.isdir(os.path.join(folder, entry))]
  return found


def _listdir(folder: str) -> list[str]:
  try:
    return os.listdir(folder)
  except OSError:
    return []


def missing_file(split: str, key: str, path: str, what: str) -> decode_cache.Skipped:
  """The error row for a table entry whose file is not in the manual dir."""
  return decode_cache.Skipped(split, key, path, "MissingFileError",
                              f"{path}: file not found ({what})")


def _drop_duplicates(resolution: Resolution) -> None:
  """Moves a second entry with an already listed key or file to the skipped rows.

  TFDS refuses repeated keys, and one file written twice (possibly into both
  splits) would count one image twice.
  """
  by_key, by_path, kept = {}, {}, []
  for source in resolution.sources:
    path = os.path.normpath(source.path)
    if source.key in by_key:
      resolution.skipped.append(decode_cache.Skipped(
          source.split, source.key, source.path, "DuplicateKeyError",
          f"{source.key}: listed again ({source.path}); the first entry "
          f"({by_key[source.key].path}) is kept"))
    elif path in by_path:
      resolution.skipped.append(decode_cache.Skipped(
          source.split, source.key, source.path, "DuplicateFileError",
          f"{source.path}: also the file of {by_path[path].key}, which is kept"))
    else:
      by_key[source.key] = by_path[path] = source
      kept.append(source)
  resolution.sources = kept


def _class_name(label) -> str:
  return "?" if label is None else CLASS_NAMES[label]


def write_resolve_report(path: str, resolution: Resolution) -> None:
  """Writes every entry and where it resolved, every missing table and unnamed file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=RESOLVE_REPORT_FIELDS)
    writer.writeheader()
    for name in resolution.missing_tables:
      writer.writerow({"status": "missing_table", "key": name, "error": "MissingTableError",
                       "message": f"{name} not found under {resolution.manual_dir}"})
    for s in resolution.sources:
      writer.writerow({"status": "resolved", "split": s.split, "class": _class_name(s.label),
                       "key": s.key, "source_file": s.path})
    for s in resolution.skipped:
      writer.writerow({"status": "duplicate" if s.error in DUPLICATE_ERRORS else "unresolved",
                       "split": s.split, "class": _class_name(resolution.labels.get(s.key)),
                       "key": s.key, "source_file": s.source_file, "error": s.error,
                       "message": s.message})
    for file in resolution.unnamed:
      writer.writerow({"status": "unnamed", "source_file": file,
                       "message": "on disk, but no table row names it"})


def describe_skipped(skipped: Sequence[decode_cache.Skipped],
                     limit: int = FIRST_REASONS) -> str:
  """"N (Error n, ...)" and the first few reasons, one per line."""
  if not skipped:
    return "0"
  by_error = collections.Counter(s.error for s in skipped)
  lines = [f"{len(skipped)} ({', '.join(f'{e} {n}' for e, n in by_error.items())}); "
           f"first {min(limit, len(skipped))}:"]
  lines += [f"    {s.error}: {s.message}" for s in skipped[:limit]]
  return "\n".join(lines)


def format_resolution(resolution: Resolution, report_file: str | None = None) -> str:
  """What a conversion will do, before decoding: the printout of `sgc-convert --check`."""
  r = resolution
  unresolved = [s for s in r.skipped if s.error not in DUPLICATE_ERRORS]
  duplicates = [s for s in r.skipped if s.error in DUPLICATE_ERRORS]
  lines = [f"{r.dataset}/{r.config} in {r.manual_dir}: {len(r.sources)} images resolved, "
           f"{len(unresolved)} not (nothing decoded yet)"]
  lines.append("  tables found:")
  lines += [f"    {path} ({rows} rows)" for path, rows in r.tables.items()]
  if r.missing_tables:
    lines.append(f"  tables missing: {', '.join(r.missing_tables)}")
  lines.append("  images looked for in: " + ", ".join(
      root if os.path.isdir(root) else f"{root} (no such folder)" for root in r.image_roots))

  counts = collections.defaultdict(lambda: [0, 0])
  for s in r.sources:
    counts[(s.split, _class_name(s.label))][0] += 1
  for s in unresolved:
    counts[(s.split or "-", _class_name(r.labels.get(s.key)))][1] += 1
  order = {"train": 0, "test": 1}
  lines.append(f"  {'split':<6} {'class':<10} {'listed':>7} {'resolved':>9} {'unresolved':>11}")
  for split, name in sorted(counts, key=lambda k: (order.get(k[0], 2), k)):
    found, lost = counts[(split, name)]
    lines.append(f"  {split:<6} {name:<10} {found + lost:>7} {found:>9} {lost:>11}")
  if unresolved:
    lines.append("  unresolved: " + describe_skipped(unresolved))
  lines.append(f"  duplicates: {len(duplicates)}")
  lines += [f"    {s.error}: {s.message}" for s in duplicates[:FIRST_REASONS]]
  lines.append(f"  on disk, but named by no table row: {len(r.unnamed)}")
  lines += [f"    {path}" for path in r.unnamed[:FIRST_REASONS]]
  if len(r.unnamed) > FIRST_REASONS:
    lines.append(f"    ... {len(r.unnamed) - FIRST_REASONS} more")
  missing = r.missing()
  lines.append("  complete: every table and listed image is there" if not missing else
               "  INCOMPLETE: " + "; ".join(missing))
  if report_file:
    lines.append(f"  report: {report_file}")
  return "\n".join(lines)
