"""The training optimizer: Adam, and AdamW's decoupled weight decay on weight matrices only."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sgc_jax import train_state


def _training(**overrides):
  training = ml_collections.ConfigDict({
      "learning_rate": 1e-2, "lr_schedule": "constant", "warmup_steps": 0, "num_steps": 10,
      "grad_clip_norm": 0.0, "weight_decay": 0.0})
  training.update(overrides)
  return training


_PARAMS = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
           "label_emb": {"embedding": jnp.full((5, 4), 2.0)}}


def test_no_weight_decay_is_plain_adam():
  # Same state structure as optax.adam, so runs trained before the option still restore.
  tx, _ = train_state.make_optimizer(_training(), steps_per_epoch=1)
  plain = optax.chain(optax.adam(optax.constant_schedule(1e-2)))
  assert jax.tree.structure(tx.init(_PARAMS)) == jax.tree.structure(plain.init(_PARAMS))


@pytest.mark.parametrize("weight_decay", [0.1, 0.5])
def test_weight_decay_shrinks_matrices_only(weight_decay):
  tx, _ = train_state.make_optimizer(_training(weight_decay=weight_decay), steps_per_epoch=1)
  params, state = _PARAMS, tx.init(_PARAMS)
  zero = jax.tree.map(jnp.zeros_like, params)
  for _ in range(3):
    updates, state = tx.update(zero, state, params)
    params = optax.apply_updates(params, updates)
  # With no gradient Adam's own step is 0; decay is p <- p (1 - lr wd) per step.
  shrink = (1 - 1e-2 * weight_decay) ** 3
  np.testing.assert_allclose(params["dense"]["kernel"], shrink, rtol=1e-6)
  np.testing.assert_allclose(params["label_emb"]["embedding"], 2 * shrink, rtol=1e-6)
  np.testing.assert_array_equal(params["dense"]["bias"], 1.0)


def test_negative_weight_decay_names_the_field():
  from configs import digits  # pylint: disable=import-outside-toplevel
  from sgc_jax import config_validation  # pylint: disable=import-outside-toplevel
  config = digits.get_config()
  config.training.weight_decay = -1e-3
  with pytest.raises(ValueError, match="training.weight_decay"):
    config_validation.validate_config(config)
