"""Multi-process jobs: two CPU processes train, evaluate and score as one process does."""
import functools
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

import sgc_jax
from sgc_jax import checkpointing, evaluation, scoring, sharding, train_state, trainer
from sgc_jax.data import reader, records
from test_evaluation import read_predictions
from tiny import tiny_bound_config, tiny_config, tiny_split_config

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

# One two-process job, launched once for the module, doing what a pod's job does in the order
# that proves each part joins the job itself: it first evaluates a split of a model that one
# process trained (nothing before evaluation has joined the job), then builds fresh records
# (process 0 while 1 waits), trains, and scores part of a split as an archive.
_JOB_WORKER = """
import json, os, shutil, sys
sys.path[:0] = [{tests!r}, {root!r}]
import numpy as np, jax
from tiny import tiny_bound_config, tiny_config, tiny_split_config
from sgc_jax import evaluation, scoring, train_state, trainer
from sgc_jax.data import reader
from sgc_jax.evaluators import class_likelihood
# What this process does itself in the evaluation: the images of each split it scores, and
# whether it writes the outputs.
scored, wrote = [], []
real_eval_batches, real_write_outputs = reader.eval_batches, class_likelihood.write_outputs

def counted_batches(*args, **kwargs):
  scored.append(0)
  for batch, n_valid in real_eval_batches(*args, **kwargs):
    scored[-1] += n_valid
    yield batch, n_valid

def recorded_write(*args, **kwargs):
  wrote.append(1)
  return real_write_outputs(*args, **kwargs)

reader.eval_batches, class_likelihood.write_outputs = counted_batches, recorded_write
report = evaluation.evaluate(tiny_split_config({shared_data_dir!r}), {evaluated_run!r})["ode"]
reader.eval_batches, class_likelihood.write_outputs = real_eval_batches, real_write_outputs
if jax.process_index() == 0:   # kept from the one-process evaluation the test runs next
  shutil.copytree({evaluated_run!r} + "/eval_test", {evaluated!r})

config = tiny_config({data_dir!r}, steps=10)
state, _ = trainer.train(config, {workdir!r})
params = train_state.inference_variables(state)["params"]
total = sum(float(np.abs(np.asarray(leaf.addressable_data(0))).sum())
            for leaf in jax.tree.leaves(params))
if jax.process_index() == 0:   # the raw (not EMA) parameters, for the 1-process comparison
  np.savez({workdir!r} + "/raw_params.npz",
           *[np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(state.params)])

summary = scoring.score_archive(scoring.load_model({workdir!r}, tiny_bound_config(config)),
                                ["tfds:digits:test[:11]"], {scored_out!r}, per_device_batch=1,
                                decode_workers=1, chunk_size=3, progress=False)
print("REPORT " + json.dumps({{
    "step": int(state.step.addressable_data(0)), "total": total,
    "devices": jax.device_count(), "processes": jax.process_count(),
    "metrics": {{k: report[k] for k in ("accuracy", "images", "temperature")}},
    "scored": scored, "wrote": len(wrote), "summary": summary}}))
"""


def _run_workers(script: str) -> list[dict]:
  """Runs `script` as processes 0 and 1 of one job (2 CPU devices each); their reports."""
  port = _free_port()
  workers = []
  for process_id in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id),
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    workers.append(subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  reports = []
  for worker in workers:
    stdout, stderr = worker.communicate(timeout=600)
    assert worker.returncode == 0, stderr[-3000:]
    reports.append(json.loads(stdout.split("REPORT ")[-1]))
  return reports


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory, digits_data_dir, trained_tiny_digits):
  """(paths, reports of processes 0 and 1) of the module's one two-process job."""
  root = tmp_path_factory.mktemp("job")
  # "tfds": a fresh data dir (not conftest's), so that process 0 builds the records while 1
  # waits; "evaluated_run": a copy of conftest's model (one process trained it on conftest's
  # records), for the job to evaluate; "evaluated": the job's evaluation outputs.
  paths = {name: str(root / name) for name in ("tfds", "run", "evaluated_run", "evaluated",
                                               "scored")}
  config = tiny_split_config(digits_data_dir)
  assert config.training.num_steps == trained_tiny_digits[0].training.num_steps
  shutil.copytree(trained_tiny_digits[1], paths["evaluated_run"],
                  ignore=shutil.ignore_patterns("eval_*"))
  single = evaluation.evaluate(config, paths["evaluated_run"])["ode"]
  shutil.move(os.path.join(paths["evaluated_run"], "eval_test"), str(root / "evaluated_alone"))
  script = _JOB_WORKER.format(tests=TESTS, root=ROOT, shared_data_dir=digits_data_dir,
                              evaluated_run=paths["evaluated_run"], evaluated=paths["evaluated"],
                              data_dir=paths["tfds"], workdir=paths["run"],
                              scored_out=paths["scored"])
  reports = _run_workers(script)
  assert [r["processes"] for r in reports] == [2, 2]
  return {**paths, "evaluated_alone": str(root / "evaluated_alone"), "single": single}, reports


def test_two_processes_train_one_replicated_model(job, tmp_path, monkeypatch):
  paths, reports = job
  data_dir, workdir = paths["tfds"], paths["run"]
  keys = ("step", "total", "devices")
  assert [{k: r[k] for k in keys} for r in reports] == [{k: reports[0][k] for k in keys}] * 2
  assert reports[0]["step"] == 10 and reports[0]["devices"] == 4   # one model on 4 devices
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"),
                                            encoding="utf-8")]
  assert [r["step"] for r in rows] == [5, 10]  # written once, by process 0
  assert checkpointing.make_manager(workdir).latest_step() == 10
  restored = sgc_jax.load(workdir).variables
  total = sum(float(np.abs(np.asarray(leaf)).sum()) for leaf in jax.tree.leaves(restored["params"]))
  np.testing.assert_allclose(total, reports[0]["total"], rtol=1e-6)
  assert "class_gaussian" in restored

  # The job equals one process on the same 4 devices fed the same global
  # batches: process 0's records then process 1's (each its own shard).
  real_train_dataset = reader.train_dataset
  monkeypatch.setattr(reader, "train_dataset", functools.partial(_two_shards, real_train_dataset))
  state, _ = trainer.train(tiny_config(data_dir, steps=10), str(tmp_path / "one_process"))
  # The EMA parameters move 1/1000 of the way per step: compare the raw ones too.
  raw = np.load(os.path.join(workdir, "raw_params.npz"))
  raw = [raw[f"arr_{i}"] for i in range(len(raw.files))]
  assert len(raw) == len(jax.tree.leaves(state.params))
  for a, b in zip(raw, jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(train_state.inference_variables(state))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_two_processes_score_a_split_like_one(job):
  paths, reports = job
  single = paths["single"]
  # One job of two processes: each scores its own share of every split it
  # passes over (records 0, 2, .. and 1, 3, ..), and process 0 alone writes.
  assert len(reports[0]["scored"]) == len(reports[1]["scored"]) >= 2   # test and validation
  assert set(reports[0]["scored"]) == {6} and set(reports[1]["scored"]) == {5}
  assert [r["wrote"] for r in reports] == [1, 0]
  # Every process returns the whole split's metrics, those of one process.
  assert reports[0]["metrics"] == reports[1]["metrics"]
  assert reports[0]["metrics"]["images"] == single["images"] == 11
  np.testing.assert_allclose(reports[0]["metrics"]["temperature"], single["temperature"],
                             rtol=1e-4)
  ids_one, _, ll_one = read_predictions(os.path.join(paths["evaluated_alone"], "predictions.csv"))
  ids_two, _, ll_two = read_predictions(os.path.join(paths["evaluated"], "predictions.csv"))
  assert ids_two == ids_one                # gathered back into record order
  np.testing.assert_allclose(ll_two, ll_one, rtol=1e-5, atol=1e-3)


def test_trained_by_two_processes_scored_by_one_and_by_two(job, tmp_path):
  paths, reports = job
  summary = reports[0]["summary"]
  assert reports[1]["summary"] == summary and summary["scored"] == 11
  loaded = scoring.load_model(paths["run"],
                              tiny_bound_config(tiny_config(paths["tfds"], steps=10)))
  one = scoring.score_archive(loaded, ["tfds:digits:test[:11]"], str(tmp_path / "one"),
                              per_device_batch=1, decode_workers=0, progress=False)
  assert one["model_step"] == summary["model_step"] == 10
  scores_two = pq.read_table(os.path.join(paths["scored"], "scores.parquet")).to_pylist()
  scores_one = pq.read_table(os.path.join(tmp_path / "one", "scores.parquet")).to_pylist()
  assert [r["key"] for r in scores_one] == [r["key"] for r in scores_two]
  # The digits records' ids key the images, as in sgc-evaluate.
  source = records.data_source(loaded.builder, "test")
  assert [r["image_key"] for r in scores_one] == [int(source[i]["id"]) for i in range(11)]
  for a, b in zip(scores_one, scores_two):
    for name in range(10):
      assert abs(a[f"log_likelihood_{name}"] - b[f"log_likelihood_{name}"]) <= 2e-4


class _TwoShards:
  """Global batches of a 2-process job, read in one process: shard 0's rows, then shard 1's."""

  def __init__(self, shards):
    self._shards = shards

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(shard) for shard in self._shards]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self):
    return {"shards": [shard.get_state() for shard in self._shards]}

  def set_state(self, state):
    for shard, s in zip(self._shards, state["shards"]):
      shard.set_state(s)


def _two_shards(train_dataset, source, *, batch_size, seed, shard_index, shard_count):
  assert (shard_index, shard_count) == (0, 1)
  return _TwoShards([iter(train_dataset(source, batch_size=batch_size // 2, seed=seed,
                                        shard_index=i, shard_count=2)) for i in range(2)])


def test_hand_launched_jobs_must_name_their_process(monkeypatch):
  monkeypatch.setattr(sharding.jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  with pytest.raises(ValueError, match="JAX_PROCESS_ID: must be set"):
    sharding.maybe_initialize_distributed()
