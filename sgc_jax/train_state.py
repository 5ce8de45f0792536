"""What a training run's checkpoint holds, and how to rebuild and restore it.

`TrainState` (parameters, non-trained model collections, optimizer, EMA),
the optimizer and schedule that shape it, and `restore_inference_variables`,
which the loader (`sgc_jax.load`) uses to score a checkpoint of a workdir.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from sgc_jax import checkpointing, models, sharding


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the data iterator position."""
  step: jax.Array
  params: Any
  model_state: Any          # non-trained collections: batch_stats, constants, class_gaussian
  opt_state: Any
  ema_params: Any
  nonfinite_step: jax.Array  # -1, or the first step whose loss was not finite


def learning_rate_schedule(training, steps_per_epoch: int) -> optax.Schedule:
  """The configured schedule; "step" is the seed's x0.2 every 20 epochs."""
  lr = training.learning_rate
  if training.lr_schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif training.lr_schedule == "step":
    schedule = optax.exponential_decay(
        lr, transition_steps=max(1, training.lr_decay_every_epochs * steps_per_epoch),
        decay_rate=training.lr_decay_factor, staircase=True)
  else:  # "cosine", checked by validate_config
    schedule = optax.cosine_decay_schedule(lr, max(1, training.num_steps - training.warmup_steps))
  if training.warmup_steps:
    warmup = optax.linear_schedule(0.0, lr, training.warmup_steps)
    schedule = optax.join_schedules([warmup, schedule], [training.warmup_steps])
  return schedule


def _matrices(params):
  """True for the weight matrices, kernels and embeddings; False for biases and norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(training, steps_per_epoch: int):
  """Adam with the configured schedule, global-norm clipping and decoupled weight decay.

  Weight decay (AdamW, on weight matrices only) is off at 0, and then the optimizer
  is plain Adam, whose state runs trained before the option restore into.
  Returns (tx, schedule).
  """
  schedule = learning_rate_schedule(training, steps_per_epoch)
  chain = [optax.clip_by_global_norm(training.grad_clip_norm)] if training.grad_clip_norm else []
  weight_decay = training.get("weight_decay", 0.0)
  adam = (optax.adamw(schedule, weight_decay=weight_decay, mask=_matrices) if weight_decay
          else optax.adam(schedule))
  return optax.chain(*chain, adam), schedule


def create_train_state(config, model, tx, key, shape) -> TrainState:
  """A fresh state for `model` on images of `shape` (H, W, C)."""
  return state_from_variables(
      config, tx, models.init_variables(model, key, shape, config.data.num_classes))


def state_from_variables(config, tx, variables: dict) -> TrainState:
  """A step-0 state holding `variables` (initialised or imported), with a fresh optimizer."""
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
      opt_state=tx.init(params),
      # A copy, so the EMA never shares (and double-donates) the parameters' buffers.
      ema_params=jax.tree.map(jnp.copy, params) if config.training.ema_decay else {},
      nonfinite_step=jnp.full((), -1, jnp.int32))


def abstract_train_state(create, key, mesh):
  """Shapes, dtypes and (replicated) shardings of the train state, for restoring."""
  abstract = jax.eval_shape(create, key)
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding.replicated(mesh)),
      abstract)


def inference_variables(state: TrainState) -> dict:
  """Variables for scoring: EMA parameters when trained with an EMA, running BatchNorm stats."""
  params = state.ema_params if jax.tree.leaves(state.ema_params) else state.params
  return {"params": params, **state.model_state}


def latest_checkpoint(manager) -> int:
  """The latest checkpointed step; raises naming the directory when there is none."""
  step = checkpointing.latest_step(manager)
  if step is None:
    raise FileNotFoundError(f"--workdir: no checkpoint under {manager.directory}; "
                            "train first with sgc-train")
  return int(step)


def restore_inference_variables(manager, model, shape, num_classes: int, *, mesh,
                                step: int | None = None) -> tuple[dict, int]:
  """(inference variables, step) of `model` from the checkpoint at `step` (default: latest).

  Args:
    manager: the run's open checkpoint manager (`checkpointing.make_manager`).
    model: the flax module the checkpoint was trained as.
    shape: (H, W, C) of its inputs.
    num_classes: the classes it was built for.
    mesh: the devices to place the (replicated) variables on.
    step: which checkpoint.

  The checkpoint is restored into its own saved tree, so no optimizer is
  rebuilt to shape it; `model` says which variables must be there, and a
  checkpoint of another network is refused naming what differs.
  """
  step = latest_checkpoint(manager) if step is None else step
  saved = checkpointing.restore_saved(manager, step, sharding.replicated(mesh))
  # A tree saved without an EMA or non-trained collections holds them as empty nodes, or not at all.
  state = TrainState(**{name: saved.get(name, {}) for name in TrainState.__dataclass_fields__})
  variables = inference_variables(state)
  wanted = jax.eval_shape(lambda key: models.init_variables(model, key, shape, num_classes),
                          jax.random.PRNGKey(0))
  checkpointing.check_same_structure(f"{manager.directory}/{step}", variables, wanted)
  return variables, int(step)
