"""Tests for sgc_jax.seed_import: the seed's PyTorch weights give the seed's function.

The reference network is `seed_torch.SeedUNetTorch`, a PyTorch mirror of the
seed's `UNetScoreModel_conditional` with the same state_dict; its weights and
BatchNorm running statistics are random, and both sides run in inference mode.

Equality is checked in float64 on both sides, where it is a property of the
two implementations alone: in float32 either side's rounding is amplified by
the network (GroupNorms over near-constant groups divide rounding noise by
sqrt(eps)); on these random weights PyTorch's own float32 output differs from
its float64 output by 1e-3 to 1e-1 relative, the port's float32 output by
~1e-5 (also tested). Skipped without PyTorch (`pip install 'sgc_jax[torch]'`,
a CPU build).
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; the seed-equality tests need it "
    "(pip install 'sgc_jax[torch]', a CPU build is enough)")

import seed_torch  # noqa: E402  (needs torch)
from configs import cbis_ddsm  # noqa: E402
import sgc_jax  # noqa: E402
from sgc_jax import models, seed_import  # noqa: E402
from sgc_jax import sde as sde_lib  # noqa: E402

SDE = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0)
SEED_CHANNELS = (32, 64, 128, 256, 512)


def torch_marginal_std(t):
  """The seed's VP sigma(t) (beta 0.1..20), in torch."""
  log_mean = -0.25 * t ** 2 * (20.0 - 0.1) - 0.5 * t * 0.1
  return torch.sqrt(1.0 - torch.exp(2.0 * log_mean))


def torch_score(net, x, t, y):
  """The reference score, computed in the network's dtype, as float64 NHWC."""
  dtype = next(net.parameters()).dtype
  with torch.no_grad():
    out = net(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2)).to(dtype),
              torch.from_numpy(np.asarray(t)).to(dtype),
              torch.from_numpy(np.asarray(y, np.int64)))
  return out.double().numpy().transpose(0, 2, 3, 1)


def relative_error(actual, expected):
  """max |actual - expected| / max |expected|."""
  return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def seed_state_dict(net):
  return {k: v.float().numpy() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
  """The seed's network (3 channels, 2 classes) with random weights, saved as nn.DataParallel does.

  Returns the PyTorch network in float64, the file, and the imported port's
  jitted score functions in float64 and (as used) float32.
  """
  torch.manual_seed(0)
  net = seed_torch.randomize_(seed_torch.SeedUNetTorch(torch_marginal_std)).eval()
  path = str(tmp_path_factory.mktemp("seed") / "model.pth")
  torch.save({seed_import.DATA_PARALLEL_PREFIX + k: v for k, v in net.state_dict().items()}, path)
  variables = seed_import.to_flax_variables(seed_import.load_state_dict(path),
                                            models.SeedUNet(num_classes=2), 3)
  score32 = jax.jit(models.make_score_fn(models.SeedUNet(num_classes=2), variables,
                                         SDE.marginal_std))
  with jax.enable_x64(True):
    variables64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
  score64 = jax.jit(models.make_score_fn(models.SeedUNet(num_classes=2, dtype=jnp.float64),
                                         variables64, SDE.marginal_std))
  return net.double(), path, score64, score32


def _scores(score_fn, x, t, y, x64):
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    return np.asarray(score_fn(jnp.asarray(x, dtype), jnp.asarray(t, dtype), jnp.asarray(y)))


def _inputs(size, t, y, seed=0):
  x = np.random.default_rng(seed).uniform(0.0, 1.0, (len(t), size, size, 3))
  return x, np.asarray(t), np.asarray(y, np.int32)


def test_architecture_read_from_the_tensors(seed):
  path = seed[1]
  arch = seed_import.architecture(seed_import.strip_prefix(seed_import.load_state_dict(path)))
  assert arch == {"channels": SEED_CHANNELS, "num_channels": 3, "num_classes": 2,
                  "embed_dim": 256}


def test_score_equals_the_seed_network_at_64(seed):
  net, _, score64, score32 = seed
  # Several t (small t divides by a small sigma) for both labels.
  x, t, y = _inputs(64, [1e-3, 0.1, 0.5, 1.0] * 2, [0] * 4 + [1] * 4)
  expected = torch_score(net, x, t, y)
  ours = _scores(score64, x, t, y, x64=True)
  assert relative_error(ours, expected) < 1e-6      # the README's stated tolerance
  # The labels matter (else equality would not test the label path).
  assert relative_error(ours[4:], ours[:4]) > 1e-3
  # float32, as scored: rounding only.
  assert relative_error(_scores(score32, x, t, y, x64=False), expected) < 3e-4


def test_score_equals_the_seed_network_at_384(seed):
  net, _, score64, _ = seed
  # One image: float64 convolutions at 384x384 are slow on both sides.
  x, t, y = _inputs(384, [0.05], [1], seed=1)
  assert relative_error(_scores(score64, x, t, y, x64=True), torch_score(net, x, t, y)) < 1e-5


@pytest.mark.parametrize("edit,named", [
    (lambda sd: sd.pop("down3.maxpool_conv.1.double_conv.4.running_var"),
     "down3.maxpool_conv.1.double_conv.4.running_var"),
    (lambda sd: sd.__setitem__("gnorm6.weight", np.ones(3, np.float32)), "gnorm6.weight"),
    (lambda sd: sd.__setitem__("up2.up.bias", np.zeros(7, np.float32)), "up2.up.bias"),
])
def test_mismatched_state_dict_names_the_key(seed, edit, named):
  state_dict = seed_state_dict(seed[0])
  edit(state_dict)
  with pytest.raises(ValueError, match=named.replace(".", r"\.")):
    seed_import.to_flax_variables(state_dict, models.SeedUNet(num_classes=2), 3)


def test_config_that_builds_another_network_is_refused(seed, tmp_path):
  net = seed[0]
  config = cbis_ddsm.get_config("seed")
  config.model.unet.channels = (16, 32, 64, 128, 256)
  with pytest.raises(ValueError, match=r"model\.unet\.channels.*32,64,128,256,512"):
    seed_import.import_seed(seed_state_dict(net), config, str(tmp_path))
  # GroupNorm in the DoubleConvs where the seed's network has BatchNorm.
  config = cbis_ddsm.get_config("seed")
  config.model.unet.norm = "group"
  with pytest.raises(ValueError, match=r"model\.unet\.norm: the config has 'group'.*"
                                       r"--config\.model\.unet\.norm=batch"):
    seed_import.import_seed(seed_state_dict(net), config, str(tmp_path))
  config = cbis_ddsm.get_config("seed")
  config.data.num_channels = 1
  with pytest.raises(ValueError, match=r"data\.num_channels"):
    seed_import.import_seed(seed_state_dict(net), config, str(tmp_path))


def test_not_a_state_dict_is_refused(tmp_path):
  path = str(tmp_path / "other.pth")
  torch.save([1, 2, 3], path)
  with pytest.raises(ValueError, match="other.pth holds no state_dict"):
    seed_import.load_state_dict(path)


def test_imported_checkpoint_restores_as_if_trained_here(tmp_path, digits_data_dir):
  # End to end through the console script, on the digits records: a tiny seed
  # network (1 channel, 10 classes) written by sgc-import-seed and read back by
  # the evaluation's restore gives the PyTorch network's scores.
  torch.manual_seed(1)
  net = seed_torch.randomize_(seed_torch.SeedUNetTorch(
      torch_marginal_std, n_channels=1, n_classes=10, channels=(8, 16)),
      seed=1).eval()
  checkpoint, workdir = str(tmp_path / "seed.pth"), str(tmp_path / "run")
  torch.save(net.state_dict(), checkpoint)
  data_dir = digits_data_dir
  digits_config = os.path.join(os.path.dirname(__file__), "..", "configs", "digits.py")
  overrides = [f"--config.{k}={v}" for k, v in [
      ("data.data_dir", data_dir), ("model.name", "unet"),
      ("model.unet.channels", "8,16"),
      ("model.class_gaussian", "none"), ("training.ema_decay", 0.0)]]
  done = subprocess.run([sys.executable, "-m", "sgc_jax.cli.import_seed", "--checkpoint",
                         checkpoint, "--config", digits_config, "--workdir", workdir, *overrides],
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  trained = sgc_jax.load(workdir)  # the config.json written by the import
  assert trained.step == 0 and trained.config.data.num_classes == 10
  x = np.random.default_rng(2).uniform(0, 1, (10, 8, 8, 1)).astype(np.float32)
  t = np.linspace(0.01, 1.0, 10).astype(np.float32)
  y = np.arange(10, dtype=np.int32)
  ours = np.asarray(trained.score_fn(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))
  assert relative_error(ours, torch_score(net.double(), x, t, y)) < 1e-5
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    seed_import.import_seed(seed_state_dict(net), trained.config, workdir)
