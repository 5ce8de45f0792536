"""`sgc-score --workdir W --config.eval.FIELD=VALUE`: eval overrides without a config file."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from sgc_jax import run_dir
from sgc_jax.cli import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(argv, monkeypatch):
  """The `--config` an absl parse of `argv` gives, with the CLIs' own flag definitions."""
  argv = common.config_from_workdir(argv)
  monkeypatch.setattr(sys, "argv", argv)     # ml_collections reads overrides from sys.argv
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  values(argv)
  return values.config


def test_eval_overrides_apply_to_the_workdirs_config_without_a_config_file(tmp_path,
                                                                            monkeypatch):
  workdir = str(tmp_path / "run")
  from configs import digits  # pylint: disable=import-outside-toplevel
  saved = digits.get_config()
  saved.eval.estimator, saved.eval.num_time_samples = "ode", 64
  run_dir.write_config(saved, workdir)
  for argv in (["sgc-score", f"--workdir={workdir}", "--config.eval.estimator=denoising",
                "--config.eval.num_time_samples=8"],
               ["sgc-score", "--workdir", workdir, "--config.eval.estimator=denoising",
                "--config.eval.num_time_samples=8"]):
    config = _parse(argv, monkeypatch)
    assert config.eval.estimator == "denoising" and config.eval.num_time_samples == 8
    # Everything else is the run's config as saved.
    config.eval.estimator, config.eval.num_time_samples = "ode", 64
    assert run_dir.config_hash(config) == run_dir.config_hash(run_dir.read_config(workdir))
  # A config file named explicitly, or no override at all, is left as given.
  argv = ["sgc-score", f"--workdir={workdir}", "--config=configs/digits.py"]
  assert common.config_from_workdir(argv) == argv
  argv = ["sgc-score", f"--workdir={workdir}"]
  assert common.config_from_workdir(argv) == argv
  # The override is still type-checked against the saved field.
  with pytest.raises(flags.IllegalFlagValueError):
    _parse(["sgc-score", f"--workdir={workdir}", "--config.eval.num_time_samples=many"],
           monkeypatch)


@pytest.mark.slow
def test_sgc_score_cli_takes_eval_overrides_without_a_config_file(trained_tiny_digits, tmp_path):
  _, workdir, _, _ = trained_tiny_digits
  out = str(tmp_path / "out")
  result = subprocess.run(
      [sys.executable, "-m", "sgc_jax.cli.score", f"--workdir={workdir}",
       "--input=tfds:digits:test[:3]", f"--output={out}", "--decode_workers=0",
       "--config.eval.estimator=denoising", "--config.eval.num_time_samples=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["scored"] == 3 and summary["estimator"] == "denoising"
  assert summary["identity"]["eval"]["num_time_samples"] == 3


@pytest.mark.slow
def test_sgc_evaluate_cli_takes_eval_overrides_without_a_config_file(trained_tiny_digits,
                                                                     tmp_path):
  _, source, _, _ = trained_tiny_digits
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)        # the session's run stays as trained
  result = subprocess.run(
      [sys.executable, "-m", "sgc_jax.cli.evaluate", f"--workdir={workdir}",
       "--config.eval.estimator=denoising", "--config.eval.num_time_samples=3",
       "--config.eval.max_examples=3", "--config.eval.calibrate=False",
       "--config.eval.num_samples=0", "--config.eval.evaluators=('class_likelihood',)"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "eval_test_denoising", "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  # Each override took effect: the estimator, its 3 time samples, 3 images, no temperature fit.
  assert metrics["estimator"] == "denoising" and metrics["mean_nfe"] == 3
  assert metrics["images"] == 3 and metrics["temperature"] == 1.0
