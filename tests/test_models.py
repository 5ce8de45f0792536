"""Tests for the score networks in sgc_jax.models.

XLA on CPU compiles random-number generation slowly (seconds per init), so
most tests fill tiny models' variables on the host from `jax.eval_shape`
shapes (`_host_variables`) and shape/count checks use `jax.eval_shape` alone;
`init_variables` itself is exercised on the cheapest model. Compiled
functions are shared through the cached `_tiny`.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sgc_jax import models
from sgc_jax.models import layers
from sgc_jax.models.ddpmpp import DDPMpp
from sgc_jax.models.mlp import MLPScore
from sgc_jax.models.unet import SeedUNet

NUM_CLASSES = 3
IMAGE = (8, 8, 1)
BATCH = 4

TINY = {
    # 8 channels at the first level: its 4 groups hold 2 channels each. With
    # 1 channel per group (every level of width <= 32 but the first) GroupNorm
    # removes the per-channel time/label shift entirely, as in the reference.
    "unet": dict(channels=(8, 16, 32)),
    # Dropout is on so one compiled model also serves the dropout test;
    # with train=False it has no effect.
    "ddpmpp": dict(ch=8, ch_mult=(1, 2), num_res_blocks=1,
                   attn_resolutions=(4,), dropout=0.5),
    "mlp": dict(hidden=32, depth=2),
}


def _config(name, dtype="float32", **fields):
  return ml_collections.ConfigDict(
      {"name": name, "dtype": dtype, name: {**TINY[name], **fields}})


def _inputs(batch=BATCH, image=IMAGE, seed=1):
  # numpy, not jax.random: every new shape would compile a threefry kernel.
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(batch, *image)),
                  jnp.float32)
  t = jnp.linspace(0.1, 1.0, batch)
  y = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
  return x, t, y


def _abstract_variables(model, image=IMAGE):
  x, t, y = _inputs(1, image)
  return jax.eval_shape(lambda k: model.init(k, x, t, y), jax.random.key(0))


def _host_variables(model, seed=0):
  """Random, non-degenerate variables drawn with numpy (no compiled init).

  Kernels ~ N(0, 1/fan_in), embeddings and biases random, norm scales 1,
  BatchNorm statistics (0, 1). Unlike the real init this leaves no residual
  branch at ~0, so labels and times visibly change DDPMpp's output.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name == "mean":
      return jnp.zeros(leaf.shape, leaf.dtype)
    if name == "W":  # the fixed Fourier frequencies
      std = 30.0
    elif name == "kernel":
      std = 1.0 / math.sqrt(math.prod(leaf.shape[:-1]))
    elif name == "embedding":
      std = 1.0
    else:
      std = 0.1
    return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model))


class Tiny(NamedTuple):
  model: nn.Module
  model_bf16: nn.Module
  variables: dict
  apply: Callable  # jitted; call as apply(model, variables, x, t, y, ...)


@functools.cache
def _tiny(name):
  """A tiny model of each kind, with host variables and a shared jitted apply.

  Cached so that every test reuses the same compiled executables (the model
  is a static argument, the variables only need matching shapes).
  """
  model = models.get_model(_config(name), NUM_CLASSES)
  model_bf16 = models.get_model(_config(name, "bfloat16"), NUM_CLASSES)
  apply = jax.jit(lambda m, *a, **k: m.apply(*a, **k),
                  static_argnums=0, static_argnames=("train", "mutable"))
  return Tiny(model, model_bf16, _host_variables(model), apply)


# --- shapes, counts, structure (eval_shape only) ---------------------------


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_shape_and_dtype(name):
  # Non-square, 3 channels: the 8x8x1 case is exercised numerically below.
  image = (8, 16, 3)
  model = models.get_model(_config(name), NUM_CLASSES)
  variables = _abstract_variables(model, image)
  x, t, y = _inputs(2, image)
  out = jax.eval_shape(lambda v: model.apply(v, x, t, y), variables)
  assert out.shape == (2, *image)
  assert out.dtype == jnp.float32


def test_seed_unet_parameter_count_matches_reference():
  # The released PyTorch model has 8,210,787 parameters at 384x384x3 with
  # 2 classes, counting the 128 fixed Fourier weights (a requires_grad=False
  # nn.Parameter). BatchNorm running statistics are buffers, not parameters.
  model = SeedUNet(num_classes=2)
  variables = jax.eval_shape(
      lambda k: models.init_variables(model, k, (384, 384, 3), 2),
      jax.random.key(0))
  assert set(variables) == {"params", "batch_stats", "constants"}
  assert models.count_params(variables["constants"]) == 128
  assert models.count_params(variables["params"]) == 8_210_659
  assert (models.count_params(variables["params"])
          + models.count_params(variables["constants"])) == 8_210_787


@pytest.mark.parametrize("name,cls,null", [("unet", SeedUNet, False),
                                           ("ddpmpp", DDPMpp, True),
                                           ("mlp", MLPScore, True)])
def test_registry_and_null_label_rows(name, cls, null):
  model = models.get_model(_config(name), NUM_CLASSES)
  assert models.MODELS[name] is cls and isinstance(model, cls)
  assert models.has_null_label(model) is null
  table = _abstract_variables(model)["params"]["label_emb"]["embedding"]
  assert table.shape[0] == NUM_CLASSES + int(null)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bf16_model_keeps_float32_params(name):
  model = models.get_model(_config(name, "bfloat16"), NUM_CLASSES)
  assert model.dtype == jnp.bfloat16
  leaves = jax.tree.leaves(_abstract_variables(model))
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_num_groups_adapts_to_small_widths():
  assert layers.num_groups(32, 4) == 4
  assert layers.num_groups(512, 32) == 32
  assert layers.num_groups(16, 32) == 16
  assert layers.num_groups(6, 4) == 3
  assert layers.num_groups(3, 32) == 3
  assert layers.num_groups(2, 0) == 1


@pytest.mark.parametrize("name,field", [("unet", "channels"),
                                        ("ddpmpp", "ch_mult")])
def test_indivisible_input_size_names_the_field(name, field):
  model = models.get_model(_config(name), NUM_CLASSES)
  with pytest.raises(ValueError, match=field):
    _abstract_variables(model, (9, 8, 1))


# --- get_model / init_variables errors -------------------------------------


@pytest.mark.parametrize("config,field", [
    ({"name": "x"}, "model.name"),
    ({"name": "unet", "dtype": "float16"}, "model.dtype"),
    ({"name": "unet", "unet": {"foo": 1}}, "model.unet.foo"),
    ({"name": "unet", "unet": {"channels": "abc"}}, "model.unet.channels"),
    ({"name": "unet", "unet": {"channels": ()}}, "model.unet.channels"),
    ({"name": "unet", "unet": {"embed_dim": 7}}, "model.unet.embed_dim"),
    ({"name": "ddpmpp", "ddpmpp": {"dropout": 1.5}}, "model.ddpmpp.dropout"),
    ({"name": "ddpmpp", "ddpmpp": {"num_res_blocks": 2.0}},
     "model.ddpmpp.num_res_blocks"),
    ({"name": "mlp", "mlp": {"hidden": 0}}, "model.mlp.hidden"),
])
def test_get_model_errors_name_the_field(config, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    models.get_model(ml_collections.ConfigDict(config), NUM_CLASSES)


def test_get_model_builds_from_config():
  config = ml_collections.ConfigDict(
      {"name": "ddpmpp", "dtype": "bfloat16",
       "ddpmpp": {"ch": 16, "ch_mult": [1, 2], "dropout": 0}})
  model = models.get_model(config, NUM_CLASSES)
  assert isinstance(model, DDPMpp)
  assert model.ch_mult == (1, 2) and model.dtype == jnp.bfloat16
  assert model.dropout == 0.0 and model.num_res_blocks == 2  # a default
  assert isinstance(models.get_model(
      ml_collections.ConfigDict({"name": "unet"}), 2), SeedUNet)


def test_init_variables_checks_num_classes():
  model = models.get_model(_config("mlp"), NUM_CLASSES)
  with pytest.raises(ValueError, match="num_classes"):
    models.init_variables(model, jax.random.key(0), IMAGE, NUM_CLASSES + 1)


# --- numerics on tiny models -----------------------------------------------


def test_init_variables_and_score_fn():
  tiny = _tiny("mlp")
  variables = models.init_variables(tiny.model, jax.random.key(0), IMAGE,
                                    NUM_CLASSES)
  assert set(variables) == {"params"}
  x, t, y = _inputs()
  out = tiny.apply(tiny.model, variables, x, t, y)
  assert np.all(np.isfinite(out)) and np.std(out) > 0.01
  sigma = lambda t: 0.5 + t  # noqa: E731
  score_fn = jax.jit(models.make_score_fn(tiny.model, variables, sigma))
  np.testing.assert_allclose(score_fn(x, t, y),
                             out / (0.5 + t)[:, None, None, None],
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bf16_close_to_float32(name):
  model, model_bf16, variables, apply = _tiny(name)
  x, t, y = _inputs()
  out32 = apply(model, variables, x, t, y)
  out16 = apply(model_bf16, variables, x, t, y)
  assert out16.dtype == jnp.float32
  assert np.all(np.isfinite(out16))
  rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
  assert rel < 0.1, rel


@pytest.mark.parametrize("name", sorted(TINY))
def test_label_and_time_change_the_output(name):
  model, _, variables, apply = _tiny(name)
  x, t, _ = _inputs()
  # For DDPMpp/MLP label num_classes is the null label.
  labels = range(NUM_CLASSES + (1 if models.has_null_label(model) else 0))
  outs = [apply(model, variables, x, t, jnp.full((BATCH,), c, jnp.int32))
          for c in labels]
  for a, b in zip(outs[:-1], outs[1:]):
    assert not np.allclose(a, b, atol=1e-4)
  y = jnp.zeros((BATCH,), jnp.int32)
  assert not np.allclose(outs[0], apply(model, variables, x, t[::-1], y),
                         atol=1e-4)


def test_unet_batchnorm_train_and_eval():
  model, _, variables, apply = _tiny("unet")
  x, t, y = _inputs()
  # Same first image, different batch-mates.
  x_other = x.at[1:].set(3.0 * _inputs(seed=9)[0][1:] + 1.0)

  out, updates = apply(model, variables, x, t, y, train=True,
                       mutable=("batch_stats",))
  out_other, _ = apply(model, variables, x_other, t, y, train=True,
                       mutable=("batch_stats",))
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert len(old) == len(new) and all(
      not np.allclose(a, b) for a, b in zip(old, new))
  assert not np.allclose(out[0], out_other[0], atol=1e-4)

  eval_out = apply(model, variables, x, t, y)
  eval_other = apply(model, variables, x_other, t, y)
  np.testing.assert_allclose(eval_out[0], eval_other[0], rtol=1e-5,
                             atol=1e-5)


def test_ddpmpp_dropout_only_in_training():
  model, _, variables, apply = _tiny("ddpmpp")
  x, t, y = _inputs()
  # RBG keys: threefry dropout masks take far longer to compile on CPU, and
  # the key implementation is irrelevant to what is tested.
  a = apply(model, variables, x, t, y, train=True,
            rngs={"dropout": jax.random.key(1, impl="rbg")})
  b = apply(model, variables, x, t, y, train=True,
            rngs={"dropout": jax.random.key(2, impl="rbg")})
  assert not np.allclose(a, b, atol=1e-4)
  # Inference needs no rng and is the model without dropout, on the same variables.
  np.testing.assert_allclose(apply(model, variables, x, t, y),
                             apply(model.clone(dropout=0.0), variables, x, t, y),
                             rtol=1e-6, atol=1e-6)


def test_seed_unet_dropout_only_in_training_and_adds_no_variables():
  """model.unet.dropout drops inside training only; the variables (and seed imports) stay."""
  tiny = _tiny("unet")
  model = tiny.model.clone(dropout=0.5)
  assert jax.tree.structure(_abstract_variables(model)) == jax.tree.structure(tiny.variables)
  x, t, y = _inputs()
  a, b = (tiny.apply(model, tiny.variables, x, t, y, train=True, mutable=("batch_stats",),
                     rngs={"dropout": jax.random.key(seed, impl="rbg")})[0] for seed in (1, 2))
  assert not np.allclose(a, b, atol=1e-4)
  np.testing.assert_array_equal(tiny.apply(model, tiny.variables, x, t, y),
                                tiny.apply(tiny.model, tiny.variables, x, t, y))
  with pytest.raises(ValueError, match=r"model\.unet\.dropout: must be in \[0, 1\)"):
    models.get_model(_config("unet", dropout=1.0), NUM_CLASSES)


def test_precise_batch_norm_is_refused_with_seed_unet_dropout():
  from configs import digits_unet  # pylint: disable=import-outside-toplevel
  from sgc_jax.config_validation import validate_config  # pylint: disable=import-outside-toplevel
  config = digits_unet.get_config()
  config.model.unet.dropout, config.training.precise_bn_batches = 0.1, 4
  with pytest.raises(ValueError, match=r"training\.precise_bn_batches: cannot be combined with "
                                       r"model\.unet\.dropout"):
    validate_config(config)
  config.training.precise_bn_batches = 0
  assert validate_config(config).model.unet.dropout == 0.1


def test_seed_unet_group_norm_is_one_function_of_each_image():
  """model.unet.norm = "group": no batch statistics, so training and scoring run the same
  per-image function, where BatchNorm's training output depends on the batch-mates."""
  tiny = _tiny("unet")
  model = models.get_model(_config("unet", norm="group"), NUM_CLASSES)
  variables = _host_variables(model)
  assert "batch_stats" not in variables and "batch_stats" in tiny.variables
  x, t, y = _inputs()
  x_other = x.at[1:].set(3.0 * _inputs(seed=9)[0][1:] + 1.0)
  train, train_other, scored = (tiny.apply(model, variables, inputs, t, y, train=train)
                                for inputs, train in ((x, True), (x_other, True), (x, False)))
  np.testing.assert_allclose(train[0], train_other[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(train, scored)
  assert not np.allclose(scored, tiny.apply(tiny.model, tiny.variables, x, t, y), atol=1e-3)
  with pytest.raises(ValueError, match=r"model\.unet\.norm: expected a string"):
    models.get_model(_config("unet", norm=1), NUM_CLASSES)
  with pytest.raises(ValueError, match="norm: unknown 'layer'"):
    models.get_model(_config("unet", norm="layer"), NUM_CLASSES)


def test_precise_batch_norm_is_refused_without_batch_norm():
  from configs import digits_unet  # pylint: disable=import-outside-toplevel
  from sgc_jax.config_validation import validate_config  # pylint: disable=import-outside-toplevel
  config = digits_unet.get_config()
  config.model.unet.norm, config.training.precise_bn_batches = "group", 4
  with pytest.raises(ValueError, match=r"training\.precise_bn_batches: has no BatchNorm"):
    validate_config(config)
  config.model.unet.norm = "instance"
  with pytest.raises(ValueError, match=r"model\.unet\.norm"):
    validate_config(config)
