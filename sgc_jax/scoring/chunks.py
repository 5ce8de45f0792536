"""Committed chunks: rows written atomically, read back, and tied to the settings that made them.

Each chunk is a directory holding a scores and an errors table, written under
a temporary name, fsynced and renamed, so a chunk is either complete or
absent. Its name starts with the run's number (`r000003-...`): when a file
changed on disk is rescored, its row of the latest run is the one kept. Every
chunk's tables carry the run's `identity` (model step and digest, config hash,
estimator and solver settings, preprocessing, calibration) in their Parquet
metadata; an output made with other settings is refused, never mixed into.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SCORES_FILE = "scores.parquet"
ERRORS_FILE = "errors.parquet"
TMP_PREFIX = ".tmp-"
IDENTITY_KEY = b"sgc_score.identity"
_CHUNK_NAME = re.compile(r"^r(?P<run>\d{6})-")


class ScoringError(RuntimeError):
  """The run cannot produce complete tables (the message says what to do)."""


class SettingsMismatchError(ScoringError):
  """The output holds rows made with another model or other settings than this run's."""


def run_identity(trained, calibration) -> dict:
  """What every row of a run depends on, as plain JSON values.

  Two runs may share an output only when these are equal: the checkpoint (step
  and a hash of its variables), the config (hashed; the records' location
  excluded, it moves between machines), the `eval` block (estimator, solver,
  steps, probes), the DICOM preprocessing and allowed modalities, the
  calibration and the class names.
  """
  checkpoint = trained.identity
  spec = trained.spec
  identity = {
      "model_step": checkpoint.step,
      "model_hash": checkpoint.variables_hash,
      "config_hash": checkpoint.config_hash,
      "estimator": trained.config.eval.estimator,
      "eval": trained.config.eval.to_dict(),
      "preprocessing": None if spec.preprocess is None else {
          **spec.preprocess, "allowed_modalities": spec.allowed_modalities},
      "calibration": None if calibration is None else dataclasses.asdict(calibration),
      "classes": spec.class_names,
  }
  # Tuples become lists, as they are when read back from a chunk.
  return json.loads(json.dumps(identity))


def identity_differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
  """'field: stored there, current now' for every field where the two identities differ."""
  differences = []
  for name in sorted(set(stored) | set(current)):
    a, b = stored.get(name, "absent"), current.get(name, "absent")
    if isinstance(a, dict) and isinstance(b, dict):
      differences += identity_differences(a, b, f"{prefix}{name}.")
    elif a != b:
      differences.append(f"{prefix}{name}: {a!r} there, {b!r} now")
  return differences


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_table(table: pa.Table, path: str, fmt: str = "parquet") -> None:
  """Writes a table to `path` through a temporary name, fsynced, renamed."""
  tmp = os.path.join(os.path.dirname(path), TMP_PREFIX + os.path.basename(path))
  if fmt == "parquet":
    pq.write_table(table, tmp)
  else:
    pacsv.write_csv(table, tmp)
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(os.path.dirname(path))


def with_identity(table: pa.Table, identity: dict) -> pa.Table:
  """`table` carrying `identity` in its Parquet metadata."""
  return table.replace_schema_metadata({IDENTITY_KEY: json.dumps(identity, sort_keys=True)})


class ChunkWriter:
  """Collects rows and commits them as numbered chunk directories (atomic renames)."""

  def __init__(self, chunk_dir: str, schemas, identity: dict, *, run: int, process: int,
               chunk_size: int):
    self.chunk_dir = chunk_dir
    self.schemas = schemas
    self.identity = identity
    self.chunk_size = chunk_size
    # Unique per run and process: a rerun never reuses a committed chunk's name.
    self.prefix = (f"r{run:06d}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
                   f"-p{process:03d}")
    self.sequence = 0
    self.scores: list[dict] = []
    self.errors: list[dict] = []

  def add(self, scores=(), errors=()) -> None:
    """Adds rows; commits a chunk once `chunk_size` rows are waiting."""
    self.scores.extend(scores)
    self.errors.extend(errors)
    if len(self.scores) + len(self.errors) >= self.chunk_size:
      self.commit()

  def commit(self) -> None:
    """Commits the waiting rows as one chunk (nothing when none wait)."""
    if not self.scores and not self.errors:
      return
    name = f"{self.prefix}-{self.sequence:06d}"
    tmp = os.path.join(self.chunk_dir, TMP_PREFIX + name)
    os.makedirs(tmp)
    for rows, schema, file in ((self.scores, self.schemas[0], SCORES_FILE),
                               (self.errors, self.schemas[1], ERRORS_FILE)):
      table = with_identity(pa.Table.from_pylist(rows, schema=schema), self.identity)
      write_table(table, os.path.join(tmp, file))
    os.replace(tmp, os.path.join(self.chunk_dir, name))  # the commit
    _fsync_dir(self.chunk_dir)
    self.sequence += 1
    self.scores, self.errors = [], []


def committed_chunks(chunk_dir: str) -> list[str]:
  """Paths of the committed chunks (not those a killed run left half-written)."""
  if not os.path.isdir(chunk_dir):
    return []
  return sorted(os.path.join(chunk_dir, n) for n in os.listdir(chunk_dir)
                if not n.startswith(TMP_PREFIX))


@dataclasses.dataclass(frozen=True)
class Committed:
  """Every committed row, with the number of the run that wrote it (column `run`)."""
  scores: pa.Table
  errors: pa.Table

  @property
  def next_run(self) -> int:
    """The number of a run that starts now."""
    runs = self.scores.column("run").to_pylist() + self.errors.column("run").to_pylist()
    return 1 + max(runs, default=0)

  def latest(self) -> tuple[pa.Table, pa.Table]:
    """(scores, errors): each key's row of the latest run that wrote it, without `run`.

    Raises:
      ScoringError: a key has two rows from one run (two runs wrote at once).
    """
    keys = self.scores.column("key").to_pylist() + self.errors.column("key").to_pylist()
    runs = self.scores.column("run").to_pylist() + self.errors.column("run").to_pylist()
    latest: dict[str, int] = {}
    for key, run in zip(keys, runs):
      latest[key] = max(run, latest.get(key, run))
    twice = [k for k, c in collections.Counter(
        k for k, r in zip(keys, runs) if r == latest[k]).items() if c > 1]
    if twice:
      raise ScoringError(f"{len(twice)} inputs were committed twice in one run (e.g. "
                         f"{twice[0]}): two sgc-score runs wrote to the same --output at once")
    tables = []
    for table in (self.scores, self.errors):
      keep = [latest[k] == r for k, r in zip(table.column("key").to_pylist(),
                                             table.column("run").to_pylist())]
      tables.append(table.filter(pa.array(keep, pa.bool_())).drop_columns(["run"]))
    return tables[0], tables[1]


def read_committed(chunk_dir: str, schemas, identity: dict) -> Committed:
  """Every committed chunk's rows, refusing chunks made with another `identity`.

  Raises:
    SettingsMismatchError: a chunk was written with other settings (the message
      names every differing field and how to start afresh).
  """
  chunk_paths = committed_chunks(chunk_dir)
  for chunk in chunk_paths:
    _check_identity(chunk, identity)
  tables = []
  for schema, file in zip(schemas, (SCORES_FILE, ERRORS_FILE)):
    parts = [schema.empty_table()]
    runs = [np.zeros(0, np.int64)]
    for chunk in chunk_paths:
      parts.append(pq.read_table(os.path.join(chunk, file), schema=schema))
      run = int(_CHUNK_NAME.match(os.path.basename(chunk))["run"])
      runs.append(np.full(parts[-1].num_rows, run, np.int64))
    table = pa.concat_tables(parts)
    tables.append(table.append_column("run", pa.array(np.concatenate(runs))))
  return Committed(*tables)


def _check_identity(chunk: str, identity: dict) -> None:
  output = os.path.dirname(os.path.dirname(chunk))
  afresh = (f"A rerun resumes only with the model and settings the output was made with: "
            f"pass a new --output, or delete {output} to start afresh.")
  metadata = pq.read_schema(os.path.join(chunk, SCORES_FILE)).metadata or {}
  if IDENTITY_KEY not in metadata or not _CHUNK_NAME.match(os.path.basename(chunk)):
    raise SettingsMismatchError(
        f"{chunk}: the chunk records no model or settings (written by an older sgc-score). "
        + afresh)
  differences = identity_differences(json.loads(metadata[IDENTITY_KEY]), identity)
  if differences:
    raise SettingsMismatchError(
        f"--output {output} holds rows scored with another model or other settings "
        f"(chunk {os.path.basename(chunk)}): {'; '.join(differences)}. " + afresh)
