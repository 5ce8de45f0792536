"""The run: list, plan against what is committed, decode and score, commit, merge, summarise.

A rerun into the same output resumes: rows of inputs unchanged since they were
committed are kept; a file whose size, mtime or SOPInstanceUID changed is
rescored and its old row replaced; an output made with another model or other
settings is refused (`chunks.SettingsMismatchError`). Inputs sharing one
SOPInstanceUID are decided together, in input order, by one process: the
first that decodes is scored, the others are reported as its duplicates.
With several processes each scores every process_count-th remaining input
(a group of duplicates counted once); process 0 merges the chunks into the
final tables in input order and writes `summary.json`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Sequence

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tqdm

from sgc_jax import api, model_calibration, sharding
from sgc_jax.scoring import chunks, decode, report, score, tables
from sgc_jax.scoring.inputs import DUPLICATE, Item, identify, list_inputs

SUMMARY_FILE = "summary.json"
CHUNKS_DIR = "chunks"


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run scores, given what earlier runs committed."""
  todo: list[Item]          # inputs to score, in input order, over all processes
  kept: int                 # inputs whose committed row stays
  changed: int              # inputs rescored because the file changed since its row
  scored_uids: dict[str, str]  # SOPInstanceUID -> key, of the kept scored rows


def plan_run(items: Sequence[Item], committed: chunks.Committed) -> Plan:
  """The inputs without a current committed row, and those whose row depended on one.

  Of inputs sharing a SOPInstanceUID the first that decodes is scored: an
  input's row depends on the earlier inputs that share its UID, now or when it
  was committed. So once one of them is redone, every later one is redone too.
  """
  scores, errors = committed.latest()
  state = {}   # key -> (file_size, mtime, sop_instance_uid) of its committed row
  for table in (scores, errors):
    columns = [table.column(c).to_pylist()
               for c in ("key", "file_size", "mtime", "sop_instance_uid")]
    state.update((key, tuple(rest)) for key, *rest in zip(*columns))
  # Records never change under their key; a file is compared by what its row recorded.
  changed = {item.key for item in items if item.key in state and item.record is None
             and state[item.key] != (item.file_size, item.mtime, item.sop_instance_uid)}
  todo = {item.key for item in items if item.key not in state} | changed
  group = _uid_groups(items, state)
  first_redone: dict[str, int] = {}
  for position, item in enumerate(items):
    if item.key in todo:
      first_redone.setdefault(group[item.key], position)
  todo |= {item.key for position, item in enumerate(items)
           if position > first_redone.get(group[item.key], len(items))}
  kept = {item.key for item in items} - todo
  scored_uids = {uid: key for key, uid in zip(scores.column("key").to_pylist(),
                                              scores.column("sop_instance_uid").to_pylist())
                 if key in kept and uid}
  return Plan([item for item in items if item.key in todo], len(kept), len(changed),
              scored_uids)


def _uid_groups(items: Sequence[Item], state: dict) -> dict[str, str]:
  """key -> its group: inputs linked by a SOPInstanceUID they share now or when committed."""
  parent: dict[str, str] = {}

  def root(uid: str) -> str:
    while parent.get(uid, uid) != uid:
      uid = parent[uid]
    return uid

  uids = {}
  for item in items:
    found = sorted({item.sop_instance_uid, state.get(item.key, (0, 0, ""))[2]} - {""})
    for uid in found[1:]:
      parent[root(uid)] = root(found[0])
    uids[item.key] = found
  return {key: root(found[0]) if found else f"key:{key}" for key, found in uids.items()}


def share(todo: Sequence[Item], process: int, processes: int) -> list[Item]:
  """This process's inputs: every processes-th, those sharing a UID kept together."""
  first: dict[str, int] = {}
  mine = []
  for position, item in enumerate(todo):
    owner = (first.setdefault(item.sop_instance_uid, position) if item.sop_instance_uid
             else position)
    if owner % processes == process:
      mine.append(item)
  return mine


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

  Raises:
    chunks.SettingsMismatchError: `out_dir` holds rows made with another model
      or other settings.
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
  spec = trained.spec
  options, allowed = spec.preprocess_options(), spec.allowed_modalities
  if options is None and any(item.is_file for item in items):
    raise ValueError(f"--input: the model was trained on {spec.dataset} records, not on "
                     "DICOMs; score tfds: inputs of that dataset")
  calibration = model_calibration.load(trained.workdir, trained.config.eval.estimator)
  # Not in the chunks' identity: the breast tables are rebuilt from the image rows at every merge.
  breast_calibration = tables.breast_calibration(trained.workdir, trained.config.eval.estimator,
                                                 calibration, len(spec.class_names))
  thumbnails = report.Thumbnails(out_dir, 2**trained.config.data.bit_depth - 1)
  schemas = score.schemas(spec.class_names)
  identity = chunks.run_identity(trained, calibration)
  if process == 0:
    os.makedirs(chunk_dir, exist_ok=True)
    for name in os.listdir(chunk_dir):  # what a killed run left half-written
      if name.startswith(chunks.TMP_PREFIX):
        shutil.rmtree(os.path.join(chunk_dir, name))
  sharding.barrier("sgc-score: output directory ready")
  committed = chunks.read_committed(chunk_dir, schemas, identity)
  # Every process has read the committed chunks before any writes one.
  sharding.barrier("sgc-score: committed chunks read")

  scorer = score.Scorer(trained, calibration, per_device_batch)
  window = max(2 * scorer.batch_size, 4 * decode_workers)
  with decode.Pool(decode_workers) as pool:
    items = identify(items, pool, window=window)
    plan = plan_run(items, committed)
    mine = share(plan.todo, process, processes)
    writer = chunks.ChunkWriter(chunk_dir, schemas, identity, run=committed.next_run,
                                process=process, chunk_size=chunk_size)
    decoder = functools.partial(decode.decode_file, options=options, allowed=allowed)
    scored_here = _score_all(decode.decode_stream(mine, pool, decoder, window=window),
                             scorer, writer, thumbnails, first_of=dict(plan.scored_uids),
                             total=len(mine), progress=progress and process == 0)
  seconds = time.perf_counter() - start
  totals = sharding.gather_from_processes(
      {"scored": np.asarray([scored_here]), "seconds": np.asarray([seconds])})
  sharding.barrier("sgc-score: all chunks committed")
  summary = None
  if process == 0:
    summary = _merge(items, out_dir, schemas, identity, calibration, plan,
                     breast_calibration=breast_calibration, thumbnails=thumbnails,
                     write_csv=write_csv, scored_this_run=int(totals["scored"].sum()),
                     seconds=float(totals["seconds"].max()),
                     devices_per_process=trained.mesh.size)
  sharding.barrier("sgc-score: tables written")
  if summary is None:
    with open(os.path.join(out_dir, SUMMARY_FILE), encoding="utf-8") as f:
      summary = json.load(f)
  return summary


def _score_all(stream, scorer: score.Scorer, writer: chunks.ChunkWriter,
               thumbnails: report.Thumbnails, *, first_of: dict[str, str], total: int,
               progress: bool) -> int:
  """Scores and commits every decoded item of `stream`; returns how many were scored.

  Each image's thumbnail is written before its row is committed, so every
  committed row has one (a rescored file's replaces the old).

  `first_of` maps a SOPInstanceUID to the key of the input scored for it (kept
  rows, then this run's): a later input with that UID is reported as its duplicate.
  """
  batch: list[decode.Decoded] = []
  scored = 0
  with tqdm.tqdm(total=total, desc="score", unit="img", dynamic_ncols=True,
                 disable=not progress, mininterval=2.0) as bar:
    for decoded in stream:
      if decoded.error is None:
        decoded = scorer.check_image(decoded)
      uid = decoded.item.sop_instance_uid
      if decoded.error is None and uid:
        if uid in first_of:
          decoded.error = (DUPLICATE, (
              f"{decoded.item.path}: the same SOPInstanceUID {uid} as the earlier input "
              f"{first_of[uid]}, scored there"))
        else:
          first_of[uid] = decoded.item.key
      if decoded.error is not None:
        writer.add(errors=[score.error_row(decoded, decoded.error)])
        bar.update(1)
        continue
      thumbnails.write(decoded.item.key, decoded.image)
      batch.append(decoded)
      if len(batch) == scorer.batch_size:
        writer.add(*scorer.score(batch))
        scored += len(batch)
        bar.update(len(batch))
        batch = []
    if batch:
      writer.add(*scorer.score(batch))
      scored += len(batch)
      bar.update(len(batch))
    writer.commit()
  return scored


def _merge(items, out_dir: str, schemas, identity: dict, calibration, plan: Plan, *,
           breast_calibration: tuple, thumbnails: report.Thumbnails, write_csv: bool,
           scored_this_run: int, seconds: float, devices_per_process: int) -> dict:
  """Writes the final tables in input order, the breast and exam tables and the report.

  Checks each input is in exactly one of the image tables.
  """
  chunk_dir = os.path.join(out_dir, CHUNKS_DIR)
  scores, errors = chunks.read_committed(chunk_dir, schemas, identity).latest()
  order = {item.key: i for i, item in enumerate(items)}
  found = set(scores.column("key").to_pylist()) | set(errors.column("key").to_pylist())
  missing = [item.key for item in items if item.key not in found]
  if missing:
    raise chunks.ScoringError(f"{len(missing)} inputs have no row (e.g. {missing[0]}): a "
                              "process stopped early; rerun the same command to finish")
  final = {}
  for name, table in ((chunks.SCORES_FILE, scores), (chunks.ERRORS_FILE, errors)):
    # Rows of inputs no longer listed (an earlier run's) are left out.
    table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(list(order))))
    index = pa.array([order[k] for k in table.column("key").to_pylist()], pa.int64())
    final[name] = table.take(pc.sort_indices(index))
  scores, errors = final[chunks.SCORES_FILE], final[chunks.ERRORS_FILE]
  fused_calibration, fused_from = breast_calibration
  breasts = tables.breast_table(scores, identity["classes"], fused_calibration)
  final[tables.BREASTS_FILE] = breasts
  final[tables.EXAMS_FILE] = tables.exam_table(breasts, identity["classes"])
  for name, table in final.items():
    chunks.write_table(chunks.with_identity(table, identity), os.path.join(out_dir, name))
    if write_csv:
      chunks.write_table(tables.flat(table),
                         os.path.join(out_dir, os.path.splitext(name)[0] + ".csv"), "csv")
  summary = {
      "inputs": len(items),
      "scored": scores.num_rows,
      "failed": errors.num_rows,
      "failed_by_reason": dict(sorted(collections.Counter(
          errors.column("reason").to_pylist()).items())),
      "ood": int(sum(1 for v in scores.column("ood").to_pylist() if v)),
      "ood_threshold_bits_per_dim": (None if calibration is None
                                     else calibration.ood_threshold_bits_per_dim),
      "calibrated": calibration is not None,
      "breasts": breasts.num_rows,
      "breasts_with_several_views": int(sum(v > 1 for v in breasts.column("views").to_pylist())),
      "breasts_by_fusion": dict(sorted(collections.Counter(
          breasts.column("fusion").to_pylist()).items())),
      "exams": final[tables.EXAMS_FILE].num_rows,
      "breast_temperature": float(fused_calibration.temperature),
      "breast_calibration": fused_from,
      "previously_committed": plan.kept,
      "changed_since_committed": plan.changed,
      "scored_this_run": scored_this_run,
      "seconds": round(seconds, 3),
      "images_per_s": round(scored_this_run / max(seconds, 1e-9), 3),
      "model_step": identity["model_step"],
      "model_hash": identity["model_hash"],
      "config_hash": identity["config_hash"],
      "estimator": identity["estimator"],
      "devices_per_process": devices_per_process,
      "processes": jax.process_count(),
      "identity": identity,
  }
  path = os.path.join(out_dir, SUMMARY_FILE)
  with open(os.path.join(out_dir, chunks.TMP_PREFIX + SUMMARY_FILE), "w",
            encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(os.path.join(out_dir, chunks.TMP_PREFIX + SUMMARY_FILE), path)
  report.write_report(out_dir, summary, scores, errors, breasts, identity["classes"],
                      thumbnails)
  return summary


def format_summary(summary: dict) -> str:
  """The summary as a short two-column table."""
  rows = [("inputs", summary["inputs"]), ("scored", summary["scored"]),
          ("failed", summary["failed"])]
  rows += [(f"  {reason}", count) for reason, count in summary["failed_by_reason"].items()]
  threshold = summary["ood_threshold_bits_per_dim"]
  rows += [("out of distribution", summary["ood"] if threshold is not None
            else "n/a (no calibration: run sgc-evaluate)"),
           ("breasts", f"{summary['breasts']} ({summary['breasts_with_several_views']} of "
                       "several views)"),
           ("exams", summary["exams"]),
           ("breast temperature", f"{summary['breast_temperature']:.4g} "
                                  f"({summary['breast_calibration']})"),
           ("scored this run", summary["scored_this_run"]),
           ("changed since committed", summary["changed_since_committed"]),
           ("images/s", summary["images_per_s"]), ("seconds", summary["seconds"]),
           ("model step", summary["model_step"]), ("model hash", summary["model_hash"]),
           ("config hash", summary["config_hash"])]
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def load_model(workdir: str, config=None):
  """`sgc_jax.load`: the run's model; a `config` may differ from the trained run's only in `eval`.

  The loader refuses any other difference, naming the field: the data block
  picks the records' builder config, and with it the DICOM preprocessing, so
  scoring with another crop, bit depth or laterality rule than the model was
  trained on would silently score different images.
  """
  return api.load(workdir, config)
