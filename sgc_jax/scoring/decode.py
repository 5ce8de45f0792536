"""The decode pool: files read in worker processes, in order, ahead of the scorer.

No input can end a run: whatever a decoder raises or panics with becomes that
file's (reason, message). In a worker everything is caught, `BaseException`
included (pylibjpeg-rle's Rust `PanicException` derives from it, and could
not be pickled back to this process); a worker that dies outright fails only
the file that kills a process of its own when retried alone. In this process
(no workers, and tfds: records) everything is caught but KeyboardInterrupt and
SystemExit, which still stop the run.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import signal
from typing import Callable, Iterator, Sequence

import numpy as np

from sgc_jax.data import dicom, records
from sgc_jax.scoring.inputs import UNREADABLE, Item

WORKER_CRASH = "WorkerCrashError"
DECODER_PANIC = "DecoderPanicError"
UNEXPECTED = "UnexpectedError"
# What still stops a run when raised in this process.
_STOP = (KeyboardInterrupt, SystemExit)
# Modules a decode worker needs (the worker functions live in this package), imported
# once by the forkserver that forks every worker.
_WORKER_MODULES = ("sgc_jax.scoring", "pydicom", "skimage.transform", "scipy.ndimage")

# A call's outcome: (result, None), or (None, (reason, message)).
Outcome = tuple


@dataclasses.dataclass
class Decoded:
  """An item after decoding: the image and its metadata, or the error."""
  item: Item
  image: np.ndarray | None = None
  metadata: dict | None = None
  error: tuple[str, str] | None = None


def failure(path: str, error: BaseException) -> tuple[str, str]:
  """The typed (reason, message) of anything decoding `path` raised."""
  if isinstance(error, dicom.DicomError):
    return type(error).__name__, str(error)
  if isinstance(error, OSError):
    return UNREADABLE, f"{path}: cannot be read ({error.strerror or error})"
  if isinstance(error, Exception):
    # A decoder bug on one odd file must not end a 20,000-file run.
    return UNEXPECTED, f"{path}: {type(error).__name__}: {error}"
  return DECODER_PANIC, (f"{path}: the decoder stopped with {type(error).__name__} "
                         f"({error}), a crash inside a decoder plugin")


def guarded(fn: Callable, arg, path: str, stop: tuple = ()) -> Outcome:
  """(fn(arg), None), or (None, failure) for anything raised but the `stop` types."""
  try:
    return fn(arg), None
  except stop:
    raise
  except BaseException as e:  # pylint: disable=broad-except
    return None, failure(path, e)


def _in_worker(fn: Callable, path: str) -> Outcome:
  return guarded(fn, path, path)


def _ignore_interrupt() -> None:
  # Ctrl-C reaches the whole process group: this process stops the run, and a
  # worker must not turn the signal into an error row of the file it was reading.
  signal.signal(signal.SIGINT, signal.SIG_IGN)


class Pool:
  """Worker processes that run one function per path (0 workers: in this process)."""

  def __init__(self, workers: int):
    self.workers = workers
    self._context = self._executor = None
    if workers > 0:
      # Not fork: this process holds JAX's threads.
      self._context = multiprocessing.get_context("forkserver")
      self._context.set_forkserver_preload(list(_WORKER_MODULES))
      self._executor = self._new_executor(workers)

  def _new_executor(self, workers: int):
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=self._context, initializer=_ignore_interrupt)

  def __enter__(self) -> "Pool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Stops the workers (what is still running is abandoned)."""
    if self._executor is not None:
      self._executor.shutdown(wait=False, cancel_futures=True)

  def map(self, fn: Callable, paths: Sequence[str], *, window: int) -> Iterator[Outcome]:
    """Yields `fn(path)`'s outcome for every path, in order, with up to `window` running ahead.

    `fn` must be picklable (a module-level function, or a partial of one).
    """
    if self._executor is None:
      for path in paths:
        yield guarded(fn, path, path, _STOP)
      return
    pending: collections.deque = collections.deque()
    position = 0
    while position < len(paths) or pending:
      while position < len(paths) and len(pending) < window:
        pending.append((paths[position], self._submit(fn, paths[position])))
        position += 1
      path, future = pending.popleft()
      try:
        if future is None:
          raise concurrent.futures.process.BrokenProcessPool
        outcome = _result(future, path)
      except concurrent.futures.process.BrokenProcessPool:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor(self.workers)
        # Resubmit what the dead pool took down, and retry this file alone: only a
        # file that crashes its own process again is reported.
        pending = collections.deque((p, self._submit(fn, p)) for p, _ in pending)
        outcome = self._isolated(fn, path)
      yield outcome

  def _submit(self, fn: Callable, path: str):
    try:
      return self._executor.submit(_in_worker, fn, path)
    except concurrent.futures.process.BrokenProcessPool:
      return None   # the pool died under an earlier file: resubmitted when that one is reached

  def _isolated(self, fn: Callable, path: str) -> Outcome:
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=self._context, initializer=_ignore_interrupt) as pool:
      try:
        return _result(pool.submit(_in_worker, fn, path), path)
      except concurrent.futures.process.BrokenProcessPool:
        return None, (WORKER_CRASH, (
            f"{path}: the decoding process died while reading this file (a crash inside "
            "a decoder plugin)"))


def _result(future, path: str) -> Outcome:
  """A worker's outcome; one that could not travel back (not picklable) is the file's error."""
  try:
    return future.result()
  except (concurrent.futures.process.BrokenProcessPool,) + _STOP:
    raise
  except BaseException as e:  # pylint: disable=broad-except
    return None, (UNEXPECTED, f"{path}: the decoded result could not be returned from its "
                              f"worker ({type(e).__name__}: {e})")


def decode_file(path: str, *, options, allowed) -> tuple[np.ndarray, dict]:
  """(image, metadata) of one DICOM, preprocessed; raises what the decoder raises."""
  return dicom.load_mammogram(path, options, allowed_modalities=allowed)


def read_record(item: Item) -> tuple[np.ndarray, dict]:
  """(image, metadata) of a tfds: record."""
  source, index = item.record
  record = source[index]
  metadata = {k: records.text(record[k]) for k in ("patient_id", "study_id", "image_id", "view",
                                            "laterality") if k in record}
  if "id" in record:
    metadata["record_id"] = int(record["id"])
  return np.asarray(record["image"]), metadata


def decode_stream(items: Sequence[Item], pool: Pool, decode: Callable, *,
                  window: int) -> Iterator[Decoded]:
  """Yields every item decoded, in order: files by `decode` in `pool`, records here."""
  outcomes = pool.map(decode, [item.path for item in items if item.is_file], window=window)
  for item in items:
    if item.error is not None:
      yield Decoded(item, error=item.error)
      continue
    if item.record is not None:
      result, error = guarded(read_record, item, item.path, _STOP)
    else:
      result, error = next(outcomes)
    if error is not None:
      yield Decoded(item, error=error)
    else:
      image, metadata = result
      yield Decoded(item, image=image, metadata=metadata)
