"""Scores an archive of mammograms with a trained model: inputs -> decode pool -> scorer -> chunks.

`score_archive(trained, inputs, out_dir)` is what `sgc-score` runs:

* inputs: directories (walked recursively, files with or without extension,
  symlinks followed, a directory reached twice reported once), text files of
  paths (one per line, relative to the list), single DICOM files, and
  `tfds:NAME[/CONFIG]:SPLIT` record splits. Every input becomes one item with a
  unique key, and ends up in exactly one of the two output tables;
* each DICOM is decoded and preprocessed in a process pool with the
  `PreprocessOptions` and allowed modalities of the dataset builder the model
  was trained on, while the previous batch is being scored;
* batches of `per_device_batch` images per local device are scored by
  `evaluation.make_class_scorer` (all classes in one pass, sharded over the
  local devices; with several processes each scores every process_count-th
  remaining item). An image is dequantized and probed with keys folded from
  its identity (SOPInstanceUID, else its real path), so its numbers do not
  depend on its batch, its process or the run. The per-device batch is a fixed
  flag, not derived from the device count: the adaptive solves' round-off
  depends on the shapes they run at, and equal shapes give equal rows on any
  device count;
* rows are committed in numbered chunks: each chunk is a directory holding a
  scores and an errors table, written under a temporary name, fsynced and
  renamed, so a chunk is either complete or absent. A rerun with the same
  inputs skips every committed key, so after a kill (even kill -9) the final
  tables hold exactly one row per input;
* finally process 0 merges the chunks into `scores.parquet`, `errors.parquet`
  (and CSVs with `csv=True`) in input order and writes `summary.json`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import stat
import time
import uuid
from typing import Iterator, Sequence

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import tqdm

from sgc_jax import api, likelihood, model_calibration, sharding
from sgc_jax.data import dicom, records
from sgc_jax.data.builders import get_builder_class, mammography

SCORES_FILE = "scores.parquet"
ERRORS_FILE = "errors.parquet"
SUMMARY_FILE = "summary.json"
CHUNKS_DIR = "chunks"
_TMP_PREFIX = ".tmp-"
# Reasons found before decoding; decoding adds the DicomError subclasses' names.
UNREADABLE = "UnreadablePathError"
SYMLINK_LOOP = "SymlinkLoopError"
DUPLICATE = "DuplicateInputError"
SOLVER_FAILURE = "SolverFailureError"
WORKER_CRASH = "WorkerCrashError"
SHAPE_MISMATCH = "ShapeMismatchError"
UNEXPECTED = "UnexpectedError"
TFDS_PREFIX = "tfds:"
# A file given as an input is a list of paths unless it is DICOM (by name or preamble).
DICOM_EXTENSIONS = (".dcm", ".dicom")
# Modules a decode worker needs (the worker function lives here), imported once by the
# forkserver that forks every worker.
_WORKER_MODULES = ("sgc_jax.scoring", "pydicom", "skimage.transform", "scipy.ndimage")


class ScoringError(RuntimeError):
  """The run cannot produce complete tables (the message says what to do)."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One input: a file (or record) to score, or an entry already known to be bad."""
  key: str                 # unique across the run: the path as found (plus #n if listed again)
  path: str
  error: tuple[str, str] | None = None  # (reason, message) found while listing
  record: tuple[object, int] | None = None  # (data source, index) for tfds: inputs


# --- inputs ----------------------------------------------------------------


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
    self._keys[path] += 1
    count = self._keys[path]
    return path if count == 1 else f"{path}#{count}"

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


# --- decoding --------------------------------------------------------------


@dataclasses.dataclass
class Decoded:
  """An item after decoding: the image and its metadata, or the error."""
  item: Item
  image: np.ndarray | None = None
  metadata: dict | None = None
  file_size: int | None = None
  mtime: float | None = None
  error: tuple[str, str] | None = None


def _decode_file(task):
  """Worker: (image, metadata, size, mtime, error) for one DICOM path."""
  path, options, allowed = task
  size = mtime = None
  try:
    info = os.stat(path)
    size, mtime = int(info.st_size), float(info.st_mtime)
    image, metadata = dicom.load_mammogram(path, options, allowed_modalities=allowed)
    return image, metadata, size, mtime, None
  except dicom.DicomError as e:
    return None, None, size, mtime, (type(e).__name__, str(e))
  except OSError as e:
    return None, None, size, mtime, (UNREADABLE, f"{path}: cannot be read ({e.strerror or e})")
  except Exception as e:  # pylint: disable=broad-except
    # A decoder bug on one odd file must not end a 20,000-file run.
    return None, None, size, mtime, (UNEXPECTED, f"{path}: {type(e).__name__}: {e}")


def _read_record(item: Item) -> Decoded:
  source, index = item.record
  record = source[index]
  metadata = {k: _text(record[k]) for k in ("patient_id", "study_id", "image_id", "view",
                                            "laterality") if k in record}
  if "id" in record:
    metadata["record_id"] = int(record["id"])
  return Decoded(item, image=np.asarray(record["image"]), metadata=metadata)


def _text(value) -> str:
  value = value.item() if isinstance(value, np.ndarray) else value
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_stream(items: Sequence[Item], options, allowed, *, workers: int,
                  window: int) -> Iterator[Decoded]:
  """Yields every item decoded, in order; with `workers` > 0 up to `window` run ahead.

  Records and listing errors are handled in this process; DICOMs go to a
  forkserver pool (not fork: this process holds JAX's threads). A worker that
  dies (a decoder plugin crashing) fails only the file it was decoding.
  """
  if workers <= 0:
    for item in items:
      yield _decode_here(item, options, allowed)
    return
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(list(_WORKER_MODULES))
  pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
  pending: collections.deque = collections.deque()
  position = 0
  try:
    while position < len(items) or pending:
      while position < len(items) and len(pending) < window:
        item = items[position]
        position += 1
        future = None
        if item.error is None and item.record is None:
          future = pool.submit(_decode_file, (item.path, options, allowed))
        pending.append((item, future))
      item, future = pending.popleft()
      if future is None:
        yield _decode_here(item, options, allowed)
        continue
      try:
        image, metadata, size, mtime, error = future.result()
      except concurrent.futures.process.BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
        # Resubmit what the dead pool took down, and retry this file alone: only a
        # file that crashes its own process again is reported.
        pending = collections.deque(
            (i, None if f is None else pool.submit(_decode_file, (i.path, options, allowed)))
            for i, f in pending)
        image, metadata, size, mtime, error = _decode_isolated(item, options, allowed, context)
      yield Decoded(item, image, metadata, size, mtime, error)
  finally:
    pool.shutdown(wait=False, cancel_futures=True)


def _decode_isolated(item: Item, options, allowed, context):
  with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
    try:
      return pool.submit(_decode_file, (item.path, options, allowed)).result()
    except concurrent.futures.process.BrokenProcessPool:
      return None, None, None, None, (WORKER_CRASH, (
          f"{item.path}: the decoding process died while reading this file (a crash inside "
          "a decoder plugin)"))


def _decode_here(item: Item, options, allowed) -> Decoded:
  if item.error is not None:
    return Decoded(item, error=item.error)
  if item.record is not None:
    return _read_record(item)
  image, metadata, size, mtime, error = _decode_file((item.path, options, allowed))
  return Decoded(item, image, metadata, size, mtime, error)


def image_id(decoded: Decoded) -> int:
  """The uint32 that keys an image's dequantization and probes: its identity, not its place.

  A record's stored id (as `sgc-evaluate` uses it), else a hash of the
  SOPInstanceUID (the same image under two paths scores the same), else of
  the real path.
  """
  metadata = decoded.metadata or {}
  if "record_id" in metadata:
    return metadata["record_id"] % 2**32
  name = metadata.get("image_id") or os.path.realpath(decoded.item.path)
  return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest(), "little")


# --- scoring ---------------------------------------------------------------


def preprocess_options(builder):
  """The DICOM preprocessing and allowed modalities of the records `builder` was built from."""
  config = getattr(builder, "builder_config", None)
  if config is None or not hasattr(config, "preprocess_options"):
    return None, None
  return config.preprocess_options(), type(builder).ALLOWED_MODALITIES


def class_names(builder) -> list[str]:
  """Column names of the classes: benign/malignant for mammograms, else the dataset's labels."""
  if isinstance(builder, mammography.MammographyBuilder):
    return list(mammography.CLASS_NAMES)
  return list(builder.info.features["label"].names)


class _Scorer:
  """Scores decoded images in fixed-shape batches; turns results into table rows."""

  def __init__(self, trained, calibration, per_device_batch: int):
    config = trained.config
    self.trained = trained
    self.batch_size = per_device_batch * trained.mesh.size
    self.names = class_names(trained.builder)
    self.num_dims = math.prod(trained.image_shape[:2]) * config.data.num_channels
    self.data_config = config.data
    self.calibration = calibration
    self.prior = (calibration.log_prior if calibration is not None else
                  np.full(len(self.names), -math.log(len(self.names))))
    self.dtype = np.dtype(trained.builder.info.features["image"].np_dtype)

  def check_image(self, decoded: Decoded) -> Decoded:
    """Records of another shape or dtype than the model's become errors."""
    image = decoded.image
    if image.shape != self.trained.image_shape or image.dtype != self.dtype:
      decoded.error = (SHAPE_MISMATCH,
                       f"{decoded.item.path}: image {image.shape} {image.dtype}, the model "
                       f"scores {self.trained.image_shape} {self.dtype}")
      decoded.image = None
    return decoded

  def score(self, batch: list[Decoded]) -> tuple[list[dict], list[dict]]:
    n = len(batch)
    take = np.minimum(np.arange(self.batch_size), n - 1)  # pad by repeating the last image
    ids = np.asarray([image_id(batch[i]) for i in take], np.uint32)
    # Always the full batch shape: one compilation, and the same round-off for every image.
    result = self.trained.log_likelihoods(np.stack([batch[i].image for i in take]), ids=ids)
    ll = np.asarray(result.log_likelihood, np.float64)[:n]
    nfe = result.num_function_evals[:n]
    success = result.success[:n]
    scores, errors = [], []
    for i, decoded in enumerate(batch):
      if not success[i].all():
        failed = [self.names[c] for c in np.flatnonzero(~success[i])]
        errors.append(error_row(decoded, (SOLVER_FAILURE, (
            f"{decoded.item.path}: the likelihood solve failed for class(es) {failed} "
            f"after {int(nfe[i].sum())} network evaluations"))))
        continue
      scores.append(self._row(decoded, ll[i], int(nfe[i].sum()), int(ids[i])))
    return scores, errors

  def _row(self, decoded: Decoded, ll: np.ndarray, nfe: int, identity: int) -> dict:
    bpd = likelihood.bits_per_dim(ll, self.num_dims, bit_depth=self.data_config.bit_depth,
                                  data_range=tuple(self.data_config.range))
    marginal = float(model_calibration.marginal_bits_per_dim(
        ll[None], self.prior, self.num_dims, self.data_config)[0])
    if self.calibration is not None:
      logpost = self.calibration.calibration().apply(ll[None])[0]
    else:
      logpost = ll + self.prior - np.logaddexp.reduce(ll + self.prior)
    probs = np.exp(logpost)
    threshold = (None if self.calibration is None
                 else self.calibration.ood_threshold_bits_per_dim)
    row = _common_row(decoded)
    row["image_key"] = identity
    for c, name in enumerate(self.names):
      row[f"log_likelihood_{name}"] = float(ll[c])
    for c, name in enumerate(self.names):
      row[f"bits_per_dim_{name}"] = float(bpd[c])
    for c, name in enumerate(self.names):
      row[f"probability_{name}"] = float(probs[c])
    row["prediction"] = self.names[int(np.argmax(probs))]
    row["nfe"] = nfe
    row["ood_score_bits_per_dim"] = marginal
    row["ood"] = None if threshold is None else bool(marginal > threshold)
    return row


def _common_row(decoded: Decoded) -> dict:
  metadata = decoded.metadata or {}
  return {
      "key": decoded.item.key,
      "path": decoded.item.path,
      "file_size": decoded.file_size,
      "mtime": decoded.mtime,
      "sop_instance_uid": metadata.get("image_id", ""),
      "study_instance_uid": metadata.get("study_id", ""),
      "patient_id": metadata.get("patient_id", ""),
      "view": metadata.get("view", ""),
      "laterality": metadata.get("laterality", ""),
  }


_ERROR_COMMON = ("key", "path", "file_size", "mtime")


def error_row(decoded: Decoded, error: tuple[str, str]) -> dict:
  row = {k: v for k, v in _common_row(decoded).items() if k in _ERROR_COMMON}
  row["reason"], row["message"] = error
  return row


# --- committed chunks ------------------------------------------------------


def _schemas(names):
  common = [("key", pa.string()), ("path", pa.string()), ("file_size", pa.int64()),
            ("mtime", pa.float64())]
  scores = common + [
      ("sop_instance_uid", pa.string()), ("study_instance_uid", pa.string()),
      ("patient_id", pa.string()), ("view", pa.string()), ("laterality", pa.string()),
      ("image_key", pa.uint32())]
  scores += [(f"log_likelihood_{n}", pa.float64()) for n in names]
  scores += [(f"bits_per_dim_{n}", pa.float64()) for n in names]
  scores += [(f"probability_{n}", pa.float64()) for n in names]
  scores += [("prediction", pa.string()), ("nfe", pa.int64()),
             ("ood_score_bits_per_dim", pa.float64()), ("ood", pa.bool_())]
  errors = common + [("reason", pa.string()), ("message", pa.string())]
  return pa.schema(scores), pa.schema(errors)


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _write_table(table, path: str, fmt: str = "parquet") -> None:
  """Writes a table to `path` through a temporary name, fsynced, renamed."""
  tmp = os.path.join(os.path.dirname(path), _TMP_PREFIX + os.path.basename(path))
  if fmt == "parquet":
    pq.write_table(table, tmp)
  else:
    pacsv.write_csv(table, tmp)
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(os.path.dirname(path))


class ChunkWriter:
  """Collects rows and commits them as numbered chunk directories (atomic renames)."""

  def __init__(self, chunk_dir: str, names, *, process: int, chunk_size: int):
    self.chunk_dir = chunk_dir
    self.schemas = _schemas(names)
    self.chunk_size = chunk_size
    # Unique per run and process: a rerun never reuses a committed chunk's name.
    self.prefix = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}-p{process:03d}"
    self.sequence = 0
    self.scores: list[dict] = []
    self.errors: list[dict] = []

  def add(self, scores=(), errors=()) -> None:
    self.scores.extend(scores)
    self.errors.extend(errors)
    if len(self.scores) + len(self.errors) >= self.chunk_size:
      self.commit()

  def commit(self) -> None:
    if not self.scores and not self.errors:
      return
    name = f"{self.prefix}-{self.sequence:06d}"
    tmp = os.path.join(self.chunk_dir, _TMP_PREFIX + name)
    os.makedirs(tmp)
    for rows, schema, file in ((self.scores, self.schemas[0], SCORES_FILE),
                               (self.errors, self.schemas[1], ERRORS_FILE)):
      _write_table(pa.Table.from_pylist(rows, schema=schema), os.path.join(tmp, file))
    os.replace(tmp, os.path.join(self.chunk_dir, name))  # the commit
    _fsync_dir(self.chunk_dir)
    self.sequence += 1
    self.scores, self.errors = [], []


def committed_chunks(chunk_dir: str) -> list[str]:
  if not os.path.isdir(chunk_dir):
    return []
  return sorted(os.path.join(chunk_dir, n) for n in os.listdir(chunk_dir)
                if not n.startswith(_TMP_PREFIX))


def read_committed(chunk_dir: str, names):
  """(scores, errors) tables of every committed chunk."""
  schemas = _schemas(names)
  chunks = committed_chunks(chunk_dir)
  tables = []
  for schema, file in zip(schemas, (SCORES_FILE, ERRORS_FILE)):
    parts = [pq.read_table(os.path.join(c, file), schema=schema) for c in chunks]
    tables.append(pa.concat_tables(parts) if parts else schema.empty_table())
  return tables


# --- the run -----------------------------------------------------------------


def score_archive(trained, inputs: Sequence[str], out_dir: str, *, per_device_batch: int = 4,
                  decode_workers: int = 2, chunk_size: int = 256, write_csv: bool = False,
                  progress: bool = True) -> dict:
  """Scores every input; resumes from the chunks committed in `out_dir`. Returns the summary.

  Args:
    trained: an `sgc_jax.api.TrainedModel` (`sgc_jax.load`).
    inputs: directories, path lists, DICOM files or `tfds:NAME[/CONFIG]:SPLIT`.
    out_dir: where chunks, tables and `summary.json` go.
    per_device_batch: images per device and scorer call (a fixed shape: rows
      are equal across device counts only at equal per-device batches).
    decode_workers: decoding processes running ahead of the scorer (0: decode
      in this process, no overlap).
    chunk_size: rows per committed chunk (what a kill can lose at most).
    write_csv: also write scores.csv and errors.csv.
    progress: show a progress bar (process 0).
  """
  if per_device_batch < 1:
    raise ValueError(f"per_device_batch: must be >= 1, got {per_device_batch}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
  start = time.perf_counter()
  process, processes = jax.process_index(), jax.process_count()
  out_dir = os.path.abspath(out_dir)
  chunk_dir = os.path.join(out_dir, CHUNKS_DIR)
  items = list_inputs(inputs, exclude=[out_dir],
                      data_dir=trained.config.data.get("data_dir") or None)
  if not items:
    raise ValueError(f"--input: no files found in {list(inputs)}")
  options, allowed = preprocess_options(trained.builder)
  if options is None and any(i.error is None and i.record is None for i in items):
    raise ValueError(f"--input: the model was trained on {trained.builder.name} records, not "
                     "on DICOMs; score tfds: inputs of that dataset")
  calibration = model_calibration.load(trained.workdir, trained.config.eval.estimator)
  names = class_names(trained.builder)
  if process == 0:
    os.makedirs(chunk_dir, exist_ok=True)
    for name in os.listdir(chunk_dir):  # what a killed run left half-written
      if name.startswith(_TMP_PREFIX):
        shutil.rmtree(os.path.join(chunk_dir, name))
  sharding.barrier("sgc-score: output directory ready")
  scores_done, errors_done = read_committed(chunk_dir, names)
  committed = set(scores_done.column("key").to_pylist()) | set(
      errors_done.column("key").to_pylist())
  todo = [item for item in items if item.key not in committed]
  # Every process has read the committed keys before any writes a chunk.
  sharding.barrier("sgc-score: committed chunks read")
  mine = todo[process::processes]

  scorer = _Scorer(trained, calibration, per_device_batch)
  writer = ChunkWriter(chunk_dir, names, process=process, chunk_size=chunk_size)
  window = max(2 * scorer.batch_size, 4 * decode_workers)
  batch: list[Decoded] = []
  scored_here = 0
  bar = tqdm.tqdm(total=len(mine), desc="score", unit="img", dynamic_ncols=True,
                  disable=not progress or process != 0, mininterval=2.0)
  try:
    for decoded in decode_stream(mine, options, allowed, workers=decode_workers,
                                 window=window):
      if decoded.error is None:
        decoded = scorer.check_image(decoded)
      if decoded.error is not None:
        writer.add(errors=[error_row(decoded, decoded.error)])
        bar.update(1)
        continue
      batch.append(decoded)
      if len(batch) == scorer.batch_size:
        writer.add(*scorer.score(batch))
        scored_here += len(batch)
        bar.update(len(batch))
        batch = []
    if batch:
      writer.add(*scorer.score(batch))
      scored_here += len(batch)
      bar.update(len(batch))
    writer.commit()
  finally:
    bar.close()
  seconds = time.perf_counter() - start
  totals = sharding.gather_from_processes(
      {"scored": np.asarray([scored_here]), "seconds": np.asarray([seconds])})
  sharding.barrier("sgc-score: all chunks committed")
  summary = None
  if process == 0:
    summary = _merge(trained, items, out_dir, chunk_dir, names, calibration,
                     write_csv=write_csv, scored_this_run=int(totals["scored"].sum()),
                     seconds=float(totals["seconds"].max()), previously_committed=len(committed))
  sharding.barrier("sgc-score: tables written")
  if summary is None:
    with open(os.path.join(out_dir, SUMMARY_FILE), encoding="utf-8") as f:
      summary = json.load(f)
  return summary


def _merge(trained, items, out_dir, chunk_dir, names, calibration, *, write_csv,
           scored_this_run, seconds, previously_committed) -> dict:
  """Writes the final tables in input order; checks each input is in exactly one."""
  scores, errors = read_committed(chunk_dir, names)
  order = {item.key: i for i, item in enumerate(items)}
  keys = scores.column("key").to_pylist() + errors.column("key").to_pylist()
  counts = collections.Counter(keys)
  twice = [k for k, c in counts.items() if c > 1]
  missing = [item.key for item in items if item.key not in counts]
  if twice:
    raise ScoringError(f"{chunk_dir}: {len(twice)} inputs were committed twice (e.g. "
                       f"{twice[0]}): two sgc-score runs wrote to the same --output at once")
  if missing:
    raise ScoringError(f"{len(missing)} inputs have no row (e.g. {missing[0]}): a process "
                       "stopped early; rerun the same command to finish")
  tables = []
  for table in (scores, errors):
    # Rows of inputs no longer listed (an earlier run's) are left out.
    table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(list(order))))
    index = pa.array([order[k] for k in table.column("key").to_pylist()], pa.int64())
    tables.append(table.take(pc.sort_indices(index)))
  scores, errors = tables
  _write_table(scores, os.path.join(out_dir, SCORES_FILE))
  _write_table(errors, os.path.join(out_dir, ERRORS_FILE))
  if write_csv:
    _write_table(scores, os.path.join(out_dir, "scores.csv"), "csv")
    _write_table(errors, os.path.join(out_dir, "errors.csv"), "csv")
  ood = scores.column("ood").to_pylist()
  config = trained.config
  summary = {
      "inputs": len(items),
      "scored": scores.num_rows,
      "failed": errors.num_rows,
      "failed_by_reason": dict(sorted(collections.Counter(
          errors.column("reason").to_pylist()).items())),
      "ood": int(sum(1 for v in ood if v)),
      "ood_threshold_bits_per_dim": (None if calibration is None
                                     else calibration.ood_threshold_bits_per_dim),
      "calibrated": calibration is not None,
      "previously_committed": previously_committed,
      "scored_this_run": scored_this_run,
      "seconds": round(seconds, 3),
      "images_per_s": round(scored_this_run / max(seconds, 1e-9), 3),
      "model_step": trained.step,
      "config_hash": hashlib.sha1(config.to_json_best_effort(sort_keys=True).encode()
                                  ).hexdigest()[:12],
      "estimator": config.eval.estimator,
      "devices_per_process": trained.mesh.size,
      "processes": jax.process_count(),
  }
  with open(os.path.join(out_dir, _TMP_PREFIX + SUMMARY_FILE), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(os.path.join(out_dir, _TMP_PREFIX + SUMMARY_FILE),
             os.path.join(out_dir, SUMMARY_FILE))
  return summary


def format_summary(summary: dict) -> str:
  """The summary as a short two-column table."""
  rows = [("inputs", summary["inputs"]), ("scored", summary["scored"]),
          ("failed", summary["failed"])]
  rows += [(f"  {reason}", count) for reason, count in summary["failed_by_reason"].items()]
  threshold = summary["ood_threshold_bits_per_dim"]
  rows += [("out of distribution", summary["ood"] if threshold is not None
            else "n/a (no calibration: run sgc-evaluate)"),
           ("scored this run", summary["scored_this_run"]),
           ("images/s", summary["images_per_s"]), ("seconds", summary["seconds"]),
           ("model step", summary["model_step"]), ("config hash", summary["config_hash"])]
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def load_model(workdir: str, config=None):
  """`sgc_jax.load`, refusing a `config` whose data block differs from the trained run's.

  The data block picks the records' builder config, and with it the DICOM
  preprocessing: scoring with another crop, bit depth or laterality rule than
  the model was trained on would silently score different images.
  """
  if config is not None and os.path.exists(os.path.join(workdir, api.CONFIG_FILE)):
    saved = api.read_config(workdir).data
    given = config.data
    differ = sorted(k for k in set(saved) | set(given)
                    if k not in ("data_dir", "num_classes")
                    and _plain(saved.get(k)) != _plain(given.get(k)))
    if differ:
      raise ValueError(
          f"--config: data.{differ[0]} is {_plain(given.get(differ[0]))!r}, the model in "
          f"{workdir} was trained with {_plain(saved.get(differ[0]))!r} (differing: "
          f"{', '.join('data.' + k for k in differ)}); leave --config out to use the trained "
          "run's config")
  return api.load(workdir, config)


def _plain(value):
  return list(value) if isinstance(value, (list, tuple)) else value
