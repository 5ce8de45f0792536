"""Committed chunks alone: a later run's row replaces an earlier one; other settings are refused."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgc_jax.scoring import chunks, score

NAMES = ("benign", "malignant")
IDENTITY = {"model_step": 4, "model_hash": "ab", "eval": {"estimator": "ode", "steps": 27},
            "calibration": None}


def _error(key, reason="NotDicomError", size=1):
  return {"key": key, "path": key, "file_size": size, "mtime": 1.0, "sop_instance_uid": "",
          "reason": reason, "message": f"{key}: {reason}"}


def _commit(chunk_dir, run, rows, identity=IDENTITY):
  writer = chunks.ChunkWriter(str(chunk_dir), score.schemas(NAMES), identity, run=run,
                              process=0, chunk_size=100)
  writer.add(errors=rows)
  writer.commit()


def test_the_latest_runs_row_is_kept_and_runs_are_numbered(tmp_path):
  schemas = score.schemas(NAMES)
  assert chunks.read_committed(str(tmp_path), schemas, IDENTITY).next_run == 1
  _commit(tmp_path, 1, [_error("a"), _error("b")])
  _commit(tmp_path, 2, [_error("b", "TruncatedPixelDataError", size=2)])
  committed = chunks.read_committed(str(tmp_path), schemas, IDENTITY)
  assert committed.next_run == 3
  scores, errors = committed.latest()
  assert scores.num_rows == 0 and scores.schema == schemas[0]
  assert [(r["key"], r["reason"], r["file_size"]) for r in errors.to_pylist()] == [
      ("a", "NotDicomError", 1), ("b", "TruncatedPixelDataError", 2)]
  # Two rows for one key from one run: two runs wrote at once.
  _commit(tmp_path, 2, [_error("b")])
  with pytest.raises(chunks.ScoringError, match="committed twice in one run .*e.g. b"):
    chunks.read_committed(str(tmp_path), schemas, IDENTITY).latest()


def test_chunks_carry_the_identity_and_other_settings_are_refused(tmp_path):
  chunk_dir = tmp_path / "out" / "chunks"
  chunk_dir.mkdir(parents=True)
  _commit(chunk_dir, 1, [_error("a")])
  [chunk] = chunks.committed_chunks(str(chunk_dir))
  table = pq.read_table(os.path.join(chunk, chunks.ERRORS_FILE))
  assert b"sgc_score.identity" in table.schema.metadata
  other = {**IDENTITY, "model_step": 6, "eval": {"estimator": "ode", "steps": 9}}
  with pytest.raises(chunks.SettingsMismatchError,
                     match=r"eval.steps: 27 there, 9 now; model_step: 4 there, 6 now\. .*a new "
                           rf"--output, or delete {tmp_path / 'out'} to start afresh"):
    chunks.read_committed(str(chunk_dir), score.schemas(NAMES), other)
  assert chunks.identity_differences({"calibration": None}, {"calibration": {"t": 1.0}}) == [
      "calibration: None there, {'t': 1.0} now"]


def test_a_chunk_without_an_identity_is_refused(tmp_path):
  old = tmp_path / "20240101T000000-abcdef12-p000-000000"   # an older sgc-score's chunk
  old.mkdir()
  for schema, file in zip(score.schemas(NAMES), (chunks.SCORES_FILE, chunks.ERRORS_FILE)):
    pq.write_table(pa.Table.from_pylist([], schema=schema), old / file)
  with pytest.raises(chunks.SettingsMismatchError, match="records no model or settings"):
    chunks.read_committed(str(tmp_path), score.schemas(NAMES), IDENTITY)
