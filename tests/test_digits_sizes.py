"""The digits builder's sizes: the 8x8 records as released, the same images upsampled to 16x16."""
import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from configs import digits as digits_config
from configs import digits_unet
from sgc_jax import inputs, models
from sgc_jax.config_validation import validate_config
from sgc_jax.data import records
from sgc_jax.data.builders import digits


def _read(builder, split):
  source = records.data_source(builder, split)
  rows = sorted((source[i] for i in range(len(source))), key=lambda r: int(r["id"]))
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in ("image", "label", "id")}


@pytest.fixture(scope="module")
def built(digits_data_dir):
  data_dir = digits_data_dir     # conftest builds both sizes once; prepare() finds them
  builders = {name: records.prepare(digits.Digits, data_dir, config=name)
              for name in (None, "16x16")}
  read = {name: {split: _read(b, split) for split in ("train", "test")}
          for name, b in builders.items()}
  return {**read, "builders": builders}


def test_default_config_keeps_the_released_8x8_records(built):
  released = load_digits()
  for split, n in (("train", 1437), ("test", 360)):
    got = built[None][split]
    assert got["image"].shape == (n, 8, 8, 1) and got["image"].dtype == np.uint8
    # The records as they were before the sizes existed: 0..16 rescaled to 8 bits.
    expected = np.round(released.images[got["id"]] * (255.0 / 16.0)).astype(np.uint8)
    np.testing.assert_array_equal(got["image"][..., 0], expected)
    np.testing.assert_array_equal(got["label"], released.target[got["id"]])


def test_16x16_holds_the_same_images_ids_and_labels_upsampled(built):
  released = load_digits()
  for split in ("train", "test"):
    small, big = built[None][split], built["16x16"][split]
    assert big["image"].shape == (len(small["id"]), 16, 16, 1)
    np.testing.assert_array_equal(big["id"], small["id"])
    np.testing.assert_array_equal(big["label"], small["label"])
    # Against an independent bilinear resize (JAX's): equal up to the rounding.
    resized = jax.vmap(lambda im: jax.image.resize(im, (16, 16), "bilinear"))(
        jnp.asarray(released.images[big["id"]]))
    expected = np.asarray(resized, np.float64) * (255.0 / 16.0)
    assert np.abs(big["image"][..., 0] - expected).max() <= 0.5 + 1e-3
  # Upsampling keeps the ink: the mean grey level of each image is nearly unchanged.
  test = built["16x16"]["test"]
  np.testing.assert_allclose(test["image"].mean(axis=(1, 2, 3)),
                             built[None]["test"]["image"].mean(axis=(1, 2, 3)), atol=3.0)


def test_digits_unet_config_fits_the_16x16_records(built):
  config = validate_config(digits_unet.get_config(), built["builders"]["16x16"])
  shape = inputs.image_shape(config, built["builders"]["16x16"])
  assert shape == (16, 16, 1) and config.data.num_classes == 10
  model = models.get_model(config.model, config.data.num_classes)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), shape, 10))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, *shape)), jnp.ones(2),
                                             jnp.zeros(2, jnp.int32)), variables)
  assert out.shape == (2, *shape)
  # Both recipes keep the seed's loss: uniform t, summed eps loss.
  seed = digits_unet.get_config("seed")
  for training in (config.training, seed.training):
    assert not training.likelihood_weighting and not training.importance_sampling
    assert not training.reduce_mean
  assert seed.training.lr_schedule == "step" and seed.training.ema_decay == 0.0


@pytest.mark.parametrize("get_config,variant", [(digits_unet.get_config,
                                                 "ema_cosine_28k_range11_refit_4probes"),
                                                (digits_config.get_config, "mlp_12k_wd02_deep")])
def test_shipped_default_recipe_is_the_measured_variant(get_config, variant, recipe_levers):
  """configs/digits_unet.py's and configs/digits.py's defaults are the recipe_levers rows the
  README quotes for them."""
  measured = recipe_levers.variant_config(variant).to_dict()
  shipped = get_config().to_dict()
  for block in ("data", "model", "training", "sde", "eval"):
    assert shipped[block] == measured[block], block


def test_every_recipe_levers_row_is_its_variant_as_defined_now(recipe_levers):
  """A variant whose definition changed after it ran (a new default in its base config, say)
  would leave a row standing for a model the tool no longer trains; the tool refuses to skip
  it, and this test names it."""
  with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "results",
                         "recipe_levers.json"), encoding="utf-8") as f:
    rows = json.load(f)
  changed = {name: recipe_levers.changed_settings(name, row) for name, row in rows.items()}
  assert {name: fields for name, fields in changed.items() if fields} == {}
  row = copy.deepcopy(rows["mlp_6k_wd"])
  row["training"]["weight_decay"], row["model"]["mlp"]["hidden"] = 0.3, 512
  assert recipe_levers.changed_settings("mlp_6k_wd", row) == ["training.weight_decay",
                                                              "model.mlp.hidden"]


def test_bilinear_matrix_rows_are_interpolation_weights():
  np.testing.assert_array_equal(digits.bilinear_matrix(8, 8), np.eye(8))
  up = digits.bilinear_matrix(8, 16)
  np.testing.assert_allclose(up.sum(axis=1), 1.0)
  # A linear ramp stays linear inside (half-pixel centres), clamped at the edges.
  ramp = up @ np.arange(8.0)
  np.testing.assert_allclose(ramp[1:-1], (np.arange(1, 15) + 0.5) / 2 - 0.5)
  assert ramp[0] == 0.0 and ramp[-1] == 7.0


def test_unknown_size_is_named():
  with pytest.raises(ValueError, match="digits has no config '12x12'"):
    records.builder_config(digits.Digits, "12x12")
