"""Precise BatchNorm: statistics recomputed under given parameters equal the batches' own."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax import models, precise_bn, sharding
from sgc_jax.models.unet import SeedUNet

EPS = 1e-3
# An SDE that leaves the inputs as they are, at one time (T == eps): the
# inputs the statistics are computed from are then known exactly here.
_IDENTITY_SDE = types.SimpleNamespace(T=EPS, perturb=lambda x0, t, z: x0)


@pytest.fixture(scope="module")
def unet():
  model = SeedUNet(num_classes=3, channels=(4, 8), embed_dim=8)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1), 3)
  # Training moves the parameters away from the initialisation's statistics.
  variables = {**variables, "params": jax.tree.map(
      lambda p: p * 1.5 + 0.1, variables["params"])}
  return model, variables


def _batch(seed, n=16):
  key = jax.random.PRNGKey(seed)
  x = 2.0 + 3.0 * jax.random.normal(key, (n, 8, 8, 1))
  y = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, 3)
  return x, y


def test_one_batch_makes_inference_equal_training_mode(unet):
  """Normalising with one batch's precise statistics reproduces the training-mode output."""
  model, variables = unet
  x, y = _batch(0)
  t = jnp.full((len(x),), EPS)
  stats = precise_bn.precise_batch_stats(model.apply, variables, [(x, y)],
                                         jax.random.PRNGKey(1), _IDENTITY_SDE, eps=EPS)
  train_out, _ = model.apply(variables, x, t, y, train=True, mutable=["batch_stats"])
  precise_out = model.apply({**variables, "batch_stats": stats}, x, t, y, train=False)
  stale_out = model.apply(variables, x, t, y, train=False)
  np.testing.assert_allclose(precise_out, train_out, rtol=1e-4, atol=1e-4)
  # The initialisation's statistics (mean 0, variance 1) do not.
  assert np.max(np.abs(stale_out - train_out)) > 100 * np.max(np.abs(precise_out - train_out))


def test_batches_are_averaged_with_equal_weights(unet):
  model, variables = unet
  batches = [_batch(0), _batch(1)]
  key = jax.random.PRNGKey(1)
  both = precise_bn.precise_batch_stats(model.apply, variables, batches, key, _IDENTITY_SDE,
                                        eps=EPS)
  each = [precise_bn.precise_batch_stats(model.apply, variables, [b], key, _IDENTITY_SDE, eps=EPS)
          for b in batches]
  jax.tree.map(lambda s, a, b: np.testing.assert_allclose(s, (a + b) / 2, rtol=1e-5, atol=1e-6),
               both, *each)


def test_no_batches_is_an_error(unet):
  model, variables = unet
  with pytest.raises(ValueError, match="batches"):
    precise_bn.precise_batch_stats(model.apply, variables, [], jax.random.PRNGKey(0),
                                   _IDENTITY_SDE, eps=EPS)


@pytest.mark.slow
def test_trainer_checkpoints_the_ema_parameters_own_statistics(tmp_path, digits_data_dir,
                                                               monkeypatch):
  """With an EMA, a checkpoint's BatchNorm statistics are recomputed under the EMA parameters.

  The recomputation replaces the running statistics only (the parameters and
  their EMA are those it was given), and the EMA network in inference mode
  then reproduces its training-mode output on a batch far better than with
  the running statistics training left.
  """
  import sgc_jax  # pylint: disable=import-outside-toplevel
  from sgc_jax import trainer  # pylint: disable=import-outside-toplevel
  from sgc_jax.inputs import model_inputs  # pylint: disable=import-outside-toplevel
  from tiny import tiny_config  # pylint: disable=import-outside-toplevel
  given, returned = [], []
  real = trainer._with_precise_batch_stats  # pylint: disable=protected-access

  def recorded(state, *args):
    given.append(state)
    returned.append(real(state, *args))
    return returned[-1]

  monkeypatch.setattr(trainer, "_with_precise_batch_stats", recorded)
  config = tiny_config(digits_data_dir, model="unet", steps=10)
  config.model.class_gaussian = "none"
  config.training.ema_decay = 0.5
  config.training.precise_bn_batches = 4
  # One device: the recomputation's sharding is not what this test asserts, and a 1-device
  # U-Net step compiles faster on 2 cores than 4 forced devices' (tests/test_recipe.py).
  trainer.train(config, str(tmp_path), mesh=sharding.make_mesh(jax.devices()[:1]))
  assert len(given) == 1 and int(given[0].step) == 10   # at the run's one checkpoint
  for field in ("params", "ema_params", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(returned[0], field),
                 getattr(given[0], field))
  precise = sgc_jax.load(str(tmp_path))
  # The checkpoint holds the recomputed statistics, not the running ones.
  jax.tree.map(np.testing.assert_array_equal, precise.variables[precise_bn.COLLECTION],
               jax.device_get(returned[0].model_state[precise_bn.COLLECTION]))
  stale = {**precise.variables, precise_bn.COLLECTION: jax.device_get(
      given[0].model_state[precise_bn.COLLECTION])}
  source = precise.builder.as_data_source(split="train")
  images = np.stack([source[i]["image"] for i in range(64)])
  labels = jnp.asarray([source[i]["label"] for i in range(64)], jnp.int32)
  x = model_inputs(jax.random.PRNGKey(0), images, precise.config)
  t = jnp.full((64,), 0.3)
  train_out, _ = precise.model.apply(precise.variables, x, t, labels, train=True,
                                     mutable=[precise_bn.COLLECTION])
  error = {name: float(np.mean(np.square(precise.model.apply(v, x, t, labels) - train_out)))
           for name, v in (("precise", precise.variables), ("stale", stale))}
  assert error["precise"] < 0.5 * error["stale"], error
