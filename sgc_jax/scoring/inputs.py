"""Listing inputs: directories, path lists, DICOM files and tfds: record splits.

Every input becomes one `Item` with a unique key, in a deterministic order;
what is known to be bad before decoding (a symlink loop, an unreadable path,
the same file listed twice) is an item with its error already set.
`read_identity` is what a rerun and the duplicate check compare a file by.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import os
import re
import stat
from typing import Sequence

from sgc_jax.data import records
from sgc_jax.data.builders import get_builder_class

# Reasons found before decoding; decoding adds the DicomError subclasses' names.
UNREADABLE = "UnreadablePathError"
SYMLINK_LOOP = "SymlinkLoopError"
DUPLICATE = "DuplicateInputError"
TFDS_PREFIX = "tfds:"
# A file given as an input is a list of paths unless it is DICOM (by name or preamble).
DICOM_EXTENSIONS = (".dcm", ".dicom")


@dataclasses.dataclass(frozen=True)
class Item:
  """One input: a file (or record) to score, or an entry already known to be bad."""
  key: str                 # unique across the run: the path as found (plus #n if listed again)
  path: str
  error: tuple[str, str] | None = None  # (reason, message) found while listing
  record: tuple[object, int] | None = None  # (data source, index) for tfds: inputs
  # What a file is compared by on a rerun (`read_identity`, before decoding).
  file_size: int | None = None
  mtime: float | None = None
  sop_instance_uid: str = ""

  @property
  def is_file(self) -> bool:
    """A file still to decode (not a record, not already an error)."""
    return self.error is None and self.record is None


def clean_text(text: str) -> str:
  """`text` as valid UTF-8: a file name that is not (kept by Python as surrogates) gets '?'.

  Parquet strings must be UTF-8; an odd byte in one file name must not stop a run.
  """
  return text.encode("utf-8", "replace").decode("utf-8")


def list_inputs(specs: Sequence[str], *, exclude: Sequence[str] = (),
                data_dir: str | None = None) -> list[Item]:
  """Every input of `specs`, in a deterministic order, each with a unique key.

  `exclude` names directories never walked into (the output directory);
  `data_dir` is where tfds: inputs' records are (default: records.default_data_dir()).
  """
  lister = _Lister([os.path.realpath(p) for p in exclude], data_dir)
  for spec in specs:
    lister.add_spec(spec)
  return lister.items


def read_identity(path: str) -> tuple[int, float, str]:
  """(size, mtime, SOPInstanceUID or "") of a file: what a rerun and the duplicate check compare.

  Reads the header only; a file that is not DICOM has no UID here, and its
  decoding says why it is not scored.
  """
  import pydicom  # pylint: disable=g-import-not-at-top
  info = os.stat(path)
  try:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"],
                         force=not _is_dicom(path))
    uid = clean_text(str(ds.get("SOPInstanceUID", "") or ""))
  except Exception:  # pylint: disable=broad-except
    uid = ""   # an unparsable header: decoding reports it
  return int(info.st_size), float(info.st_mtime), uid


class _Lister:
  """Walks inputs; marks symlink loops, unreadable paths and duplicate files."""

  def __init__(self, exclude, data_dir):
    self.items: list[Item] = []
    self._data_dir = data_dir
    self._exclude = set(exclude)
    self._files: dict[str, str] = {}        # real path -> key of its first listing
    self._dirs: dict[tuple[int, int], str] = {}  # (dev, inode) -> directory walked
    self._keys: collections.Counter = collections.Counter()

  def _key(self, path: str) -> str:
    name = clean_text(path)
    self._keys[name] += 1
    count = self._keys[name]
    return name if count == 1 else f"{name}#{count}"

  def _error(self, path: str, reason: str, message: str) -> None:
    self.items.append(Item(self._key(path), path, (reason, f"{path}: {message}")))

  def add_spec(self, spec: str) -> None:
    if spec.startswith(TFDS_PREFIX):
      self._add_tfds(spec)
      return
    path = os.path.abspath(spec)
    if os.path.isdir(path):
      self._walk(path, ancestors=())
    elif (os.path.isfile(path) and os.path.splitext(path)[1].lower() not in DICOM_EXTENSIONS
          and not _is_dicom(path) and _is_text(path)):
      self._add_list(path)
    else:
      self._add_file(path)

  def _add_list(self, list_path: str) -> None:
    base = os.path.dirname(list_path)
    with open(list_path, encoding="utf-8") as f:
      for line in f:
        entry = line.strip()
        if not entry or entry.startswith("#"):
          continue
        if entry.startswith(TFDS_PREFIX):
          self._add_tfds(entry)
          continue
        path = os.path.normpath(os.path.join(base, entry))
        if os.path.isdir(path):
          self._walk(path, ancestors=())
        else:
          self._add_file(path)

  def _add_file(self, path: str) -> None:
    try:
      info = os.stat(path)
    except OSError as e:
      if e.errno == errno.ELOOP:
        self._error(path, SYMLINK_LOOP, "symbolic link loop")
      else:
        self._error(path, UNREADABLE, f"cannot be read ({e.strerror})")
      return
    if not stat.S_ISREG(info.st_mode):
      self._error(path, UNREADABLE, "not a regular file")
      return
    if not os.access(path, os.R_OK):
      self._error(path, UNREADABLE, "permission denied")
      return
    real = os.path.realpath(path)
    if real in self._files:
      self._error(path, DUPLICATE, f"the same file as the earlier input {self._files[real]}")
      return
    key = self._key(path)
    self._files[real] = key
    self.items.append(Item(key, path))

  def _walk(self, directory: str, ancestors: tuple[tuple[int, int], ...]) -> None:
    try:
      info = os.stat(directory)
    except OSError as e:
      reason = SYMLINK_LOOP if e.errno == errno.ELOOP else UNREADABLE
      self._error(directory, reason, f"cannot be read ({e.strerror})")
      return
    if os.path.realpath(directory) in self._exclude:
      return
    node = (info.st_dev, info.st_ino)
    if node in ancestors:
      self._error(directory, SYMLINK_LOOP, "a symbolic link back to a directory above it")
      return
    if node in self._dirs:
      self._error(directory, DUPLICATE,
                  f"the same directory as {self._dirs[node]}, already walked")
      return
    self._dirs[node] = directory
    try:
      names = sorted(os.listdir(directory))
    except OSError as e:
      self._error(directory, UNREADABLE, f"cannot be listed ({e.strerror})")
      return
    for name in names:
      path = os.path.join(directory, name)
      if os.path.isdir(path):
        self._walk(path, ancestors + (node,))
      else:
        self._add_file(path)

  def _add_tfds(self, spec: str) -> None:
    name, config, split, rows = parse_tfds_spec(spec)
    builder = records.get_builder(get_builder_class(name), self._data_dir, config=config)
    if not builder.is_prepared():
      raise FileNotFoundError(f"--input {spec}: no prepared records under {builder.data_dir}")
    source = records.data_source(builder, split)
    for i in range(len(source))[rows]:
      path = f"{TFDS_PREFIX}{name}{'/' + config if config else ''}:{split}#{i}"
      self.items.append(Item(self._key(path), path, record=(source, i)))


_TFDS_SPEC = re.compile(r"^tfds:(?P<name>[^/:\[\]]+)(/(?P<config>[^/:\[\]]+))?:"
                        r"(?P<split>[^/:\[\]]+)(\[(?P<start>\d*):(?P<stop>\d*)\])?$")


def parse_tfds_spec(spec: str) -> tuple[str, str | None, str, slice]:
  """`tfds:NAME[/CONFIG]:SPLIT[[START:STOP]]` -> (name, config or None, split, record slice)."""
  match = _TFDS_SPEC.match(spec)
  if match is None:
    raise ValueError(f"--input: {spec!r} is not tfds:NAME[/CONFIG]:SPLIT[[START:STOP]]")
  start, stop = match["start"], match["stop"]
  return (match["name"], match["config"], match["split"],
          slice(int(start) if start else None, int(stop) if stop else None))


def _is_dicom(path: str) -> bool:
  with open(path, "rb") as f:
    head = f.read(132)
  return head[128:132] == b"DICM"


def _is_text(path: str) -> bool:
  """A list of paths: UTF-8 text without NUL bytes (checked on its first 64 KiB)."""
  with open(path, "rb") as f:
    head = f.read(65536)
  if b"\0" in head:
    return False
  try:
    head.decode("utf-8")
  except UnicodeDecodeError as e:
    # A multi-byte character cut at the 64 KiB boundary is still text.
    return e.start >= len(head) - 3
  return True


def identify(items: Sequence[Item], pool, *, window: int) -> list[Item]:
  """`items` with every file's `read_identity` filled in (read in `pool`, a `decode.Pool`)."""
  outcomes = pool.map(read_identity, [item.path for item in items if item.is_file],
                      window=window)
  identified = []
  for item in items:
    if item.is_file:
      result, _ = next(outcomes)   # a file that cannot be read: decoding says why
      if result is not None:
        size, mtime, uid = result
        item = dataclasses.replace(item, file_size=size, mtime=mtime, sop_instance_uid=uid)
    identified.append(item)
  return identified
