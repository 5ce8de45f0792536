"""Test-wide settings: 4 forced CPU devices (so every sharded path is exercised)."""
import os

# Must be set before JAX initialises its backends. XLA:CPU aborts the process when a device
# thread misses a collective for 40 s, which 4 devices on 2 loaded cores can (seen here on a
# training step): the longer timeouts keep a slow machine slow rather than dead.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4"
                      " --xla_cpu_collective_call_terminate_timeout_seconds=1200"
                      " --xla_cpu_collective_timeout_seconds=1200")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def trained_tiny_digits(tmp_path_factory):
  """(config, workdir, state, model): the tiny digits MLP, trained once for the whole session.

  Tests that write into a workdir copy it first (see test_api.py), so that no
  test depends on which others ran before it.
  """
  from sgc_jax import trainer  # pylint: disable=import-outside-toplevel
  from tiny import tiny_config  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(data_dir, steps=20)
  state, model = trainer.train(config, workdir)
  return config, workdir, state, model
