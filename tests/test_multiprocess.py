"""Multi-process evaluation: two CPU processes score a split as one process does."""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from sgc_jax import checkpointing, evaluation, sharding, train_state, trainer
from tiny import tiny_config

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

_WORKER = """
import json, sys
sys.path[:0] = [{tests!r}, {root!r}]
from tiny import tiny_config
from sgc_jax import evaluation
config = tiny_config({data_dir!r})
config.eval.max_examples = {max_examples}
report = evaluation.evaluate(config, {workdir!r})
print("REPORT " + json.dumps({{"accuracy": report["accuracy"], "images": report["images"],
                              "temperature": report["temperature"]}}))
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


def _predictions(path):
  with open(path, encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  ids = [int(r["id"]) for r in rows]
  ll = np.array([[float(r[f"log_likelihood_{c}"]) for c in range(10)] for r in rows])
  return ids, ll


def test_two_processes_score_a_split_like_one(tmp_path):
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
  config = tiny_config(data_dir, steps=10)
  config.eval.max_examples = 11           # an odd count: the processes get 6 and 5
  trainer.train(config, workdir)
  single = evaluation.evaluate(config, workdir)
  out = os.path.join(workdir, "eval_test")
  ids_one, ll_one = _predictions(os.path.join(out, "predictions.csv"))
  shutil.rmtree(out)

  reports = _run_workers(_WORKER.format(tests=TESTS, root=ROOT, data_dir=data_dir,
                                        workdir=workdir, max_examples=11))

  # Every process returns the whole split's metrics; process 0 alone writes files.
  assert reports[0] == reports[1]
  assert reports[0]["images"] == single["images"] == 11
  np.testing.assert_allclose(reports[0]["temperature"], single["temperature"], rtol=1e-4)
  ids_two, ll_two = _predictions(os.path.join(out, "predictions.csv"))
  assert ids_two == ids_one                # gathered back into record order
  np.testing.assert_allclose(ll_two, ll_one, rtol=1e-5, atol=1e-3)


def test_two_processes_train_one_replicated_model(tmp_path):
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
  reports = _run_workers(_TRAIN_WORKER.format(tests=TESTS, root=ROOT, data_dir=data_dir,
                                              workdir=workdir))
  assert reports[0] == reports[1]           # one model, replicated on all 4 devices
  assert reports[0]["step"] == 10 and reports[0]["devices"] == 4
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"),
                                            encoding="utf-8")]
  assert [r["step"] for r in rows] == [5, 10]  # written once, by process 0
  assert checkpointing.make_manager(workdir).latest_step() == 10
  restored = train_state.restore_inference_variables(tiny_config(data_dir), workdir)
  total = sum(float(np.abs(np.asarray(leaf)).sum()) for leaf in jax.tree.leaves(restored["params"]))
  np.testing.assert_allclose(total, reports[0]["total"], rtol=1e-6)
  assert "class_gaussian" in restored


def test_hand_launched_jobs_must_name_their_process(monkeypatch):
  monkeypatch.setattr(sharding.jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  with pytest.raises(ValueError, match="JAX_PROCESS_ID: must be set"):
    sharding.maybe_initialize_distributed()
