"""Multi-process jobs: two CPU processes train and score a split as one process does."""
import functools
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import sgc_jax
from sgc_jax import checkpointing, evaluation, sharding, train_state, trainer
from sgc_jax.data import reader
from test_evaluation import read_predictions
from tiny import tiny_config

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

_WORKER = """
import json, sys
sys.path[:0] = [{tests!r}, {root!r}]
import jax
from tiny import tiny_config
from sgc_jax import evaluation
from sgc_jax.data import reader
from sgc_jax.evaluators import class_likelihood
# What this process does itself: the images of each split it scores, and
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
config = tiny_config({data_dir!r}, steps=10)  # the run's config (another model's is refused)
config.eval.max_examples = {max_examples}
config.eval.num_samples = 0
report = evaluation.evaluate(config, {workdir!r})["ode"]
print("REPORT " + json.dumps({{
    "metrics": {{k: report[k] for k in ("accuracy", "images", "temperature")}},
    "processes": jax.process_count(), "scored": scored, "wrote": len(wrote)}}))
"""


_TRAIN_WORKER = """
import json, sys
sys.path[:0] = [{tests!r}, {root!r}]
import numpy as np, jax
from tiny import tiny_config
from sgc_jax import train_state, trainer
state, _ = trainer.train(tiny_config({data_dir!r}, steps=10), {workdir!r})
params = train_state.inference_variables(state)["params"]
total = sum(float(np.abs(np.asarray(leaf.addressable_data(0))).sum())
            for leaf in jax.tree.leaves(params))
if jax.process_index() == 0:   # the raw (not EMA) parameters, for the 1-process comparison
  np.savez({workdir!r} + "/raw_params.npz",
           *[np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(state.params)])
print("REPORT " + json.dumps({{"step": int(state.step.addressable_data(0)), "total": total,
                              "devices": jax.device_count()}}))
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


def test_two_processes_score_a_split_like_one(tmp_path, digits_data_dir):
  data_dir, workdir = digits_data_dir, str(tmp_path / "run")
  config = tiny_config(data_dir, steps=10)
  config.eval.max_examples = 11           # an odd count: the processes get 6 and 5
  config.eval.num_samples = 0             # samples are not what this test is about (slow on CPU)
  trainer.train(config, workdir)
  single = evaluation.evaluate(config, workdir)["ode"]
  out = os.path.join(workdir, "eval_test")
  ids_one, _, ll_one = read_predictions(os.path.join(out, "predictions.csv"))
  shutil.rmtree(out)

  reports = _run_workers(_WORKER.format(tests=TESTS, root=ROOT, data_dir=data_dir,
                                        workdir=workdir, max_examples=11))

  # One job of two processes: each scores its own share of every split it
  # passes over (records 0, 2, .. and 1, 3, ..), and process 0 alone writes.
  assert [r["processes"] for r in reports] == [2, 2]
  assert len(reports[0]["scored"]) == len(reports[1]["scored"]) >= 2   # test and validation
  assert set(reports[0]["scored"]) == {6} and set(reports[1]["scored"]) == {5}
  assert [r["wrote"] for r in reports] == [1, 0]
  # Every process returns the whole split's metrics.
  assert reports[0]["metrics"] == reports[1]["metrics"]
  assert reports[0]["metrics"]["images"] == single["images"] == 11
  np.testing.assert_allclose(reports[0]["metrics"]["temperature"], single["temperature"],
                             rtol=1e-4)
  ids_two, _, ll_two = read_predictions(os.path.join(out, "predictions.csv"))
  assert ids_two == ids_one                # gathered back into record order
  np.testing.assert_allclose(ll_two, ll_one, rtol=1e-5, atol=1e-3)


def test_two_processes_train_one_replicated_model(tmp_path, monkeypatch):
  # A fresh data dir (not conftest's): process 0 builds the records while 1 waits.
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
  reports = _run_workers(_TRAIN_WORKER.format(tests=TESTS, root=ROOT, data_dir=data_dir,
                                              workdir=workdir))
  assert reports[0] == reports[1]           # one model, replicated on all 4 devices
  assert reports[0]["step"] == 10 and reports[0]["devices"] == 4
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
