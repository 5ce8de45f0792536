"""Decodes a dataset's DICOMs once, in parallel, into a cache of .npy files.

Decoding and preprocessing a 4.5k x 2.8k mammogram takes about half a second,
so the mammography builders never decode inside TFDS's (serial) writer: their
sources are first decoded here, across processes, into
`<cache_dir>/<key>.npy` plus a `<key>.json` sidecar holding the DICOM metadata
or the failure. A rerun finds both and redoes nothing, unless the source file's
size or modification time changed. Failures are data, not crashes: they come
back as `Skipped` rows for the per-file error report.

This module deliberately does not import TensorFlow Datasets, so the worker
processes start fast.
"""
from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import csv
import dataclasses
import json
import multiprocessing
import os
import re
import tempfile
import time
from typing import Iterable, Mapping, Sequence

import numpy as np

from sgc_jax.data import dicom

ERROR_FIELDS = ("split", "key", "source_file", "error", "message")
# What a decoding worker imports; preloaded once by the forkserver.
_WORKER_MODULES = ("sgc_jax.data.decode_cache", "pydicom", "pydicom.pixels", "scipy.ndimage",
                   "skimage.transform", "skimage.exposure")


@dataclasses.dataclass(frozen=True)
class Source:
  """One record to be: where its DICOM is and what the dataset's tables say.

  Attributes:
    key: unique record key within the dataset (also names the cache files).
    split: "train" or "test".
    label: 0 benign, 1 malignant.
    path: absolute path of the DICOM file.
    laterality: "L"/"R" from the dataset's table, "" if it does not say.
    metadata: record fields from the tables (feature name -> str or int).
  """

  key: str
  split: str
  label: int
  path: str
  laterality: str = ""
  metadata: Mapping[str, object] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A file or table row that did not become a record, and why."""

  split: str
  key: str
  source_file: str
  error: str
  message: str

  def row(self) -> dict:
    return dataclasses.asdict(self)


def decode_all(sources: Sequence[Source], options: dicom.PreprocessOptions, cache_dir: str,
               *, workers: int = 1,
               allowed_modalities: Sequence[str] | None = dicom.DEFAULT_MODALITIES,
               progress: bool = False, desc: str = "decoding"):
  """Decodes and preprocesses every source into the cache (idempotent).

  Args:
    sources: what to decode.
    options: preprocessing options; the cache directory should be specific to
      them (see `dicom.PreprocessOptions.fingerprint`).
    cache_dir: where the .npy/.json pairs live.
    workers: processes to decode with; 1 decodes in this process.
    allowed_modalities: accepted DICOM Modality values (None: any).
    progress: show a tqdm progress bar.
    desc: the progress bar's label.

  Returns:
    (decoded, skipped): decoded maps key -> the DICOM metadata of
    `dicom.load_mammogram` plus decode_cpu_seconds (of the first, uncached
    decode); skipped lists the failures, in source order.
  """
  os.makedirs(cache_dir, exist_ok=True)
  _write_json(os.path.join(cache_dir, "options.json"), dataclasses.asdict(options))
  tasks = [(s.key, s.path, s.laterality, options, cache_dir,
            tuple(allowed_modalities) if allowed_modalities is not None else None)
           for s in sources]
  results = {}
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(tasks), desc=desc, unit="img")
  try:
    for key, metadata, error in _run(tasks, workers):
      results[key] = (metadata, error)
      if bar is not None:
        bar.update(1)
  finally:
    if bar is not None:
      bar.close()
  decoded, skipped = {}, []
  for s in sources:
    metadata, error = results[s.key]
    if error is None:
      decoded[s.key] = metadata
    else:
      skipped.append(Skipped(s.split, s.key, s.path, error[0], error[1]))
  return decoded, skipped


def load_image(cache_dir: str, key: str) -> np.ndarray:
  """The cached preprocessed image of one source."""
  return np.load(_stem(cache_dir, key) + ".npy")


def write_error_csv(path: str, skipped: Iterable[Skipped]) -> None:
  """Writes the per-file error report (header only when nothing failed)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=ERROR_FIELDS)
    writer.writeheader()
    for s in skipped:
      writer.writerow(s.row())


def read_error_csv(path: str) -> list[Skipped]:
  """Reads a report written by `write_error_csv`; [] if there is none."""
  if not os.path.exists(path):
    return []
  with open(path, newline="", encoding="utf-8") as f:
    return [Skipped(**{k: row[k] for k in ERROR_FIELDS}) for row in csv.DictReader(f)]


def _run(tasks, workers: int, work=None):
  """Yields work(task) for every task, in completion order."""
  work = work or _decode_one
  if workers <= 1 or len(tasks) <= 1:
    yield from map(work, tasks)
    return
  # Not fork: the parent may hold JAX or TFDS threads, which fork copies in a
  # broken state. A fresh forkserver imports the decoding stack once (~2 CPU-s)
  # and forks every worker from it, instead of each spawned worker paying it.
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(list(_WORKER_MODULES))
  taken_down = []
  with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
    futures = {pool.submit(work, task): task for task in tasks}
    for future in concurrent.futures.as_completed(futures):
      try:
        yield future.result()
      except concurrent.futures.process.BrokenProcessPool:
        taken_down.append(futures[future])
  # A worker died (e.g. a decoder plugin crashing on a bad file) and took the
  # pool's unfinished tasks with it: retry those one per fresh process, so only
  # the file that crashes again is reported.
  for task in taken_down:
    yield _run_isolated(task, context, work)


def _run_isolated(task, context, work):
  with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
    try:
      return pool.submit(work, task).result()
    except concurrent.futures.process.BrokenProcessPool:
      key, path, cache_dir = task[0], task[1], task[4]
      error = ("WorkerCrashError", f"{path}: the decoding process died while reading this "
               "file (a crash inside a decoder plugin)")
      _store(cache_dir, key, path, None, error)
      return key, None, error


def _decode_one(task):
  """Worker: (key, metadata, None) or (key, None, (error type, message))."""
  key, path, laterality, options, cache_dir, allowed = task
  stem = _stem(cache_dir, key)
  cached = _read_json(stem + ".json")
  if cached is not None and cached.get("source") == path and cached.get("stamp") == _stamp(path):
    if cached["error"] is not None:
      return key, None, tuple(cached["error"])
    if os.path.exists(stem + ".npy"):
      return key, cached["metadata"], None
  error = None
  metadata = None
  started = time.process_time()
  try:
    image, metadata = dicom.load_mammogram(path, options, laterality=laterality,
                                           allowed_modalities=allowed)
    # CPU time, unlike wall time, does not depend on what else the machine runs.
    metadata["decode_cpu_seconds"] = round(time.process_time() - started, 4)
    _save_npy(stem + ".npy", image)
  except dicom.DicomError as e:
    error = (type(e).__name__, str(e))
  except Exception as e:  # pylint: disable=broad-except
    # A decoder bug on one odd file must not end a 20,000-file conversion.
    error = (type(e).__name__, f"{path}: unexpected {type(e).__name__}: {e}")
  _store(cache_dir, key, path, metadata, error)
  return key, metadata, error


def _store(cache_dir: str, key: str, path: str, metadata, error) -> None:
  """Writes the sidecar that makes a rerun skip this source (success or failure)."""
  _write_json(_stem(cache_dir, key) + ".json",
              {"source": path, "stamp": _stamp(path), "metadata": metadata,
               "error": list(error) if error else None})


def _stem(cache_dir: str, key: str) -> str:
  # Keys come from dataset tables; keep file names portable.
  return os.path.join(cache_dir, re.sub(r"[^A-Za-z0-9._-]", "_", key))


def _stamp(path: str):
  try:
    st = os.stat(path)
  except OSError:
    return None
  return [st.st_size, st.st_mtime_ns]


def _read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, value) -> None:
  # Write-then-rename so a killed worker never leaves half a file that a rerun
  # would trust.
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump(value, f)
  os.replace(tmp, path)


def _save_npy(path: str, array: np.ndarray) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npy.tmp")
  with os.fdopen(fd, "wb") as f:
    np.save(f, array)
  os.replace(tmp, path)
