"""Sharded training, checkpoint resume, metrics and failure behaviour (4 CPU devices)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgc_jax
from sgc_jax import checkpointing, inputs, losses, models, sharding, train_state, trainer
from sgc_jax import sde as sde_lib
from sgc_jax.config_validation import validate_config
from sgc_jax.data import reader
from tiny import tiny_config


@pytest.fixture(scope="module")
def data_dir(digits_data_dir):
  return digits_data_dir         # conftest: the session's digits records, built once


def test_four_devices_are_visible():
  # conftest forces 4 host devices; count the CPU platform's devices, so that a
  # GPU build of JAX (whose default platform is the GPU) does not fail this.
  assert len(jax.devices("cpu")) == 4
  if jax.default_backend() == "cpu":
    assert jax.device_count() == 4


def _one_step(config, mesh, batch):
  builder = reader.load_builder(config.data)
  config = validate_config(config, builder)
  model = models.get_model(config.model, config.data.num_classes, sde_lib.from_config(config.sde))
  tx, schedule = train_state.make_optimizer(config.training, steps_per_epoch=10)
  state = train_state.create_train_state(config, model, tx, jax.random.PRNGKey(0), shape=(8, 8, 1))
  state = jax.device_put(state, sharding.replicated(mesh))
  step = trainer.jit_train_step(
      trainer.make_train_step(config, model, tx, sde_lib.from_config(config.sde), schedule), mesh)
  batch = sharding.to_global(batch, mesh)
  return step(state, batch, jax.device_put(jax.random.PRNGKey(1), sharding.replicated(mesh)))


def test_sharded_step_equals_single_device_step(data_dir):
  # The seed U-Net has BatchNorm: its statistics must be global-batch statistics.
  config = tiny_config(data_dir, model="unet")
  config.model.class_gaussian = "none"   # the network alone: its BatchNorm is the point
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
           "label": rng.integers(0, 10, (8,)).astype(np.int64)}
  one, m1 = _one_step(config, sharding.make_mesh(jax.devices()[:1]), batch)
  four, m4 = _one_step(config, sharding.make_mesh(jax.devices()), batch)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
  # BatchNorm running statistics come from the global batch on every device.
  for a, b in zip(jax.tree.leaves(one.model_state), jax.tree.leaves(four.model_state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # Adam's first step moves each parameter by about +-lr, dividing the gradient by
  # its own magnitude: parameters whose gradient is ~0 (BatchNorm shifts followed
  # by GroupNorm) turn summation-order noise into fractions of lr. A wrong
  # gradient sign would be 2 lr off; the typical parameter must agree far tighter.
  lr = config.training.learning_rate
  diffs = [np.abs(np.asarray(a) - np.asarray(b)).ravel()
           for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params))]
  assert max(d.max() for d in diffs) < lr
  assert np.median(np.concatenate(diffs)) < 1e-2 * lr
  assert jax.tree.leaves(four.params)[0].sharding.is_fully_replicated


def test_training_on_four_devices_writes_metrics_and_loss_decreases(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=300)
  # The network alone, so that the loss has far to fall (the class Gaussians
  # already explain most of it from step 0).
  config.model.class_gaussian = "none"
  config.model.mlp.hidden = 64
  config.training.batch_size = 64
  config.training.likelihood_weighting = False
  config.training.importance_sampling = False
  config.training.log_every = 30
  config.training.checkpoint_every = 300
  state, _ = trainer.train(config, str(tmp_path))
  assert int(state.step) == 300
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
  assert [r["step"] for r in rows] == list(range(30, 301, 30))
  assert {"loss", "grad_norm", "learning_rate", "steps_per_s", "images_per_s"} <= set(rows[0])
  first, last = np.mean([r["loss"] for r in rows[:2]]), np.mean([r["loss"] for r in rows[-2:]])
  assert last < 0.8 * first, (first, last)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))


def test_resume_reaches_the_uninterrupted_state(data_dir, tmp_path, monkeypatch):
  straight, _ = trainer.train(tiny_config(data_dir, steps=20), str(tmp_path / "straight"))
  # Interrupt the same run while it fetches the batch of step 13 (checkpoint at 10).
  real_to_global, calls = sharding.to_global, []

  def interrupted(*args, **kwargs):
    calls.append(1)
    if len(calls) == 13:
      raise KeyboardInterrupt
    return real_to_global(*args, **kwargs)

  monkeypatch.setattr(sharding, "to_global", interrupted)
  with pytest.raises(KeyboardInterrupt):
    trainer.train(tiny_config(data_dir, steps=20), str(tmp_path / "resumed"))
  monkeypatch.setattr(sharding, "to_global", real_to_global)
  assert checkpointing.make_manager(str(tmp_path / "resumed")).latest_step() == 10
  steps_run = []

  def counted(*args, **kwargs):
    steps_run.append(1)
    return real_to_global(*args, **kwargs)

  monkeypatch.setattr(sharding, "to_global", counted)
  resumed, _ = trainer.train(tiny_config(data_dir, steps=20), str(tmp_path / "resumed"))
  assert int(resumed.step) == 20
  # A run restarted from step 0 would also end in this state (training is
  # deterministic): the resumed run must start at the checkpoint's step.
  assert len(steps_run) == 10
  rows = {name: [json.loads(l) for l in open(tmp_path / name / "metrics.jsonl", encoding="utf-8")]
          for name in ("straight", "resumed")}
  assert [r["step"] for r in rows["resumed"]] == [5, 10, 15, 20]
  # After the resume, the same batches give the same losses as the straight run.
  np.testing.assert_allclose([r["loss"] for r in rows["resumed"]],
                             [r["loss"] for r in rows["straight"]], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(data_dir, tmp_path, monkeypatch):
  trainer.train(tiny_config(data_dir, steps=10), str(tmp_path))
  real_loss = losses.dsm_loss

  def exploding(*args, **kwargs):
    loss, state = real_loss(*args, **kwargs)
    return loss * jnp.nan, state

  monkeypatch.setattr(losses, "dsm_loss", exploding)
  with pytest.raises(trainer.NonFiniteLossError, match="step 10"):
    trainer.train(tiny_config(data_dir, steps=20), str(tmp_path))
  assert checkpointing.make_manager(str(tmp_path)).latest_step() == 10


@pytest.mark.parametrize("field,value", [
    ("training.lr_schedule", "bogus"), ("training.batch_size", 0), ("sde.name", "cosine"),
    ("eval.estimator", "magic"), ("data.range", (1.0, 0.0)), ("training.label_dropout", 1.5),
    ("model.class_gaussian", "low_rank"), ("model.class_gaussian_shrinkage", -0.1),
    ("eval.resample_probes", True),      # tiny_config: adaptive Tsit5
    ("eval.evaluators", ("class_likelihood", "bogus")),
    ("data.random_shift", (3, 2)), ("data.random_shift", (1.5, 1)),
])
def test_invalid_config_fails_at_start_naming_the_field(data_dir, field, value):
  config = tiny_config(data_dir)
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    validate_config(config)


def test_full_class_gaussians_must_fit_the_image_size(data_dir):
  config = tiny_config(data_dir)
  config.data.num_channels = 65       # 8 x 8 x 65 > 4096 model inputs
  with pytest.raises(ValueError, match=r"model\.class_gaussian: 'full' needs D <= 4096"):
    validate_config(config, reader.load_builder(config.data))


def test_bit_depth_must_fit_the_records(data_dir):
  config = tiny_config(data_dir)
  config.data.bit_depth = 16
  with pytest.raises(ValueError, match=r"data\.bit_depth"):
    validate_config(config, reader.load_builder(config.data))


def test_class_gaussians_are_fitted_to_the_train_split_and_checkpointed(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=2)
  assert config.model.class_gaussian == "full"
  trainer.train(config, str(tmp_path))
  restored = sgc_jax.load(str(tmp_path)).variables["class_gaussian"]
  builder = reader.load_builder(config.data)
  config = validate_config(config, builder)
  train_source, _ = reader.train_validation_sources(builder, config.data.validation_fraction,
                                                    seed=config.seed)
  images = np.stack([train_source[i]["image"] for i in range(len(train_source))])
  labels = reader.labels_of(train_source)
  centres = np.asarray(inputs.model_inputs(None, images, config)).reshape(len(images), -1)
  for c in range(10):
    # Dequantization noise averages out to the bin centres (bins are 2/256 wide).
    np.testing.assert_allclose(restored["mean"][c], centres[labels == c].mean(0), atol=2e-3)
  np.testing.assert_allclose(restored["mean"][10], centres.mean(0), atol=1e-3)
  assert restored["basis"].shape == (11, 64, 64) and bool((restored["variance"] > 0).all())


def test_restoring_a_different_model_names_the_checkpoint_and_the_cause(data_dir, tmp_path):
  config = tiny_config(data_dir, steps=2)
  config.model.class_gaussian = "none"
  trainer.train(config, str(tmp_path))
  config.model.class_gaussian = "full"
  model = models.get_model(config.model, 10, sde_lib.from_config(config.sde))
  with pytest.raises(ValueError, match=r"checkpoints/2: the checkpoint holds a different model.*"
                                       r"model\.class_gaussian"):
    train_state.restore_inference_variables(checkpointing.make_manager(str(tmp_path)), model,
                                            (8, 8, 1), 10, mesh=sharding.make_mesh())


def test_ema_warmup_follows_the_steps_so_far_then_the_configured_decay():
  assert trainer.ema_decay_at(0, 0.999, warmup=False) == 0.999
  np.testing.assert_allclose(
      [float(trainer.ema_decay_at(s, 0.999, warmup=True)) for s in (0, 10, 90, 10_000)],
      [0.1, 11 / 20, 91 / 100, 0.999], rtol=1e-6)
  # The initial weights' share after n steps is the product of the decays: with the
  # warm-up it is ~ 10 / n (0.5 % at 2,000 steps) instead of 0.999**n (13.5 %).
  decays = np.asarray([float(trainer.ema_decay_at(s, 0.999, warmup=True)) for s in range(2000)])
  assert np.prod(decays) < 0.01 < 0.999 ** 2000 / 10


def test_fine_tune_starts_from_the_other_runs_ema_with_the_second_order_loss(data_dir, tmp_path):
  """training.init_from: step 0 holds the source's EMA parameters, with a fresh optimizer."""
  config = tiny_config(data_dir, steps=10)
  config.model.class_gaussian = "none"
  source, _ = trainer.train(config, str(tmp_path / "source"))
  tune = config.copy_and_resolve_references()
  tune.training.init_from = str(tmp_path / "source")
  tune.training.num_steps = 1
  tune.training.learning_rate = 1e-30      # one step that moves nothing measurable
  tune.training.second_order_weight = 1.0
  tuned, _ = trainer.train(tune, str(tmp_path / "tuned"))
  assert int(tuned.step) == 1
  for a, b in zip(jax.tree.leaves(source.ema_params), jax.tree.leaves(tuned.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  # The source's raw parameters differ from its EMA: starting from them would fail above.
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(source.ema_params),
                                                   jax.tree.leaves(source.params)))
  rows = [json.loads(l) for l in open(tmp_path / "tuned" / "metrics.jsonl", encoding="utf-8")]
  assert np.isfinite(rows[-1]["loss"])
  missing = tune.copy_and_resolve_references()
  missing.training.init_from = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="training.init_from"):
    trainer.train(missing, str(tmp_path / "missing"))
