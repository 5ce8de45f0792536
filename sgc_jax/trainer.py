"""Data-parallel training of class-conditional score networks, with resume.

`train(config, workdir)` runs the loop: `jax.jit` with NamedShardings over a
1-D mesh of every device (batch split on `data`, parameters replicated), orbax
checkpoints with the data iterator position, TensorBoard + JSON-lines
metrics, a progress bar, and a stop with the step named on a non-finite loss.
`train_and_evaluate` adds the classification of the evaluation split.
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from sgc_jax import (baseline, checkpointing, evaluation, losses, models, precise_bn, run_dir,
                     sharding)
from sgc_jax import sde as sde_lib
from sgc_jax.config_validation import validate_config
from sgc_jax.data import reader
from sgc_jax.evaluators import sample_quality
from sgc_jax.inputs import augment, image_shape, model_inputs
from sgc_jax.models import class_gaussian
from sgc_jax.train_state import (TrainState, abstract_train_state, create_train_state,
                                 inference_variables, make_optimizer,
                                 restore_inference_variables, state_from_variables)


class NonFiniteLossError(FloatingPointError):
  """Training hit a NaN/Inf loss; the last good checkpoint is kept."""


def ema_decay_at(step, decay: float, *, warmup: bool):
  """The EMA's decay at `step`: `decay`, or min(decay, (1 + step) / (10 + step)) with warm-up.

  Without a warm-up a decay of 0.999 still gives the initial weights a weight
  of 0.999**n after n steps (13 % after 2,000): short runs then score with
  weights half made of noise. The warm-up (as in TensorFlow's
  ExponentialMovingAverage with num_updates) averages the early steps over
  roughly the steps so far.
  """
  if not warmup:
    return decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_train_step(config, model, tx, sde, schedule):
  """The pure per-batch update; shardings are added where it is jitted."""
  training = config.training
  null_label = model.num_classes

  def train_step(state: TrainState, batch, base_key):
    key = jax.random.fold_in(base_key, state.step)
    deq_key, augment_key, drop_key, loss_key = jax.random.split(key, 4)
    x = augment(augment_key, model_inputs(deq_key, batch["image"], config), config.data)
    labels = batch["label"].astype(jnp.int32)
    if training.label_dropout:
      drop = jax.random.bernoulli(drop_key, training.label_dropout, labels.shape)
      labels = jnp.where(drop, null_label, labels)

    def loss_fn(params):
      variables = {"params": params, **state.model_state}
      return losses.dsm_loss(
          model.apply, variables, x, labels, loss_key, sde, eps=training.eps,
          reduce_mean=training.reduce_mean, likelihood_weighting=training.likelihood_weighting,
          importance_sampling=training.importance_sampling,
          second_order_weight=training.second_order_weight)

    (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if training.ema_decay:
      decay = ema_decay_at(state.step, training.ema_decay,
                           warmup=training.get("ema_warmup", False))
      ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
    else:
      ema = state.ema_params
    model_state = {**state.model_state, **new_model_state}
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step leaves the state as it was; the host stops on it.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        model_state=keep(model_state, state.model_state),
        opt_state=keep(opt_state, state.opt_state),
        ema_params=keep(ema, state.ema_params),
        nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step,
                                 state.nonfinite_step))
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step)}
    return new_state, metrics

  return train_step


def jit_train_step(train_step, mesh):
  """Jits the step with parameters replicated and the batch split over `data`."""
  replicated = sharding.replicated(mesh)
  batch_sharded = sharding.batch_sharded(mesh)
  return jax.jit(train_step, in_shardings=(replicated, batch_sharded, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


class MetricsWriter:
  """TensorBoard event files plus a JSON-lines file, written by process 0 only."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    os.makedirs(workdir, exist_ok=True)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self._active:
      self._tb.close()
      self._jsonl.close()


def train(config, workdir: str, *, mesh=None) -> tuple[TrainState, Any]:
  """Trains (or resumes training) to `config.training.num_steps`; returns (state, model).

  Resumes from the latest checkpoint in `workdir` if there is one, restoring
  the data iterator position too, so the result equals an uninterrupted run.
  """
  sharding.maybe_initialize_distributed()
  mesh = mesh or sharding.make_mesh()
  builder = reader.load_builder(config.data)
  config = validate_config(config, builder)
  if jax.process_index() == 0:
    # What `sgc_jax.load` and `sgc-score` read back to rebuild the model, without the records.
    run_dir.write_config(config, workdir)
    run_dir.write_model_spec(run_dir.ModelSpec.from_builder(builder, config.data), workdir)
  training = config.training
  train_source, _ = reader.training_sources(builder, config.data, seed=config.seed)
  local_batch = sharding.local_batch_size(training.batch_size, mesh)
  dataset = reader.train_dataset(train_source, batch_size=local_batch, seed=config.seed,
                                 shard_index=jax.process_index(),
                                 shard_count=jax.process_count())
  steps_per_epoch = max(1, len(train_source) // training.batch_size)

  sde = sde_lib.from_config(config.sde)
  model = models.get_model(config.model, config.data.num_classes, sde)
  tx, schedule = make_optimizer(training, steps_per_epoch)
  shape = image_shape(config, builder)
  init_key, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
  create = jax.jit(functools.partial(create_train_state, config, model, tx, shape=shape),
                   out_shardings=sharding.replicated(mesh))
  manager = checkpointing.make_manager(workdir, max_to_keep=training.keep_checkpoints)
  data_iter = iter(dataset)
  if checkpointing.latest_step(manager) is not None:
    state, data_state = checkpointing.restore(manager, abstract_train_state(create, init_key, mesh))
    if data_state is not None:
      data_iter.set_state(data_state)
    tqdm.tqdm.write(f"resumed from step {int(state.step)} in {workdir}")
  elif training.init_from:
    state = _fine_tune_start(config, model, tx, shape, mesh)
  else:
    state = create(init_key)
    if class_gaussian.has_class_gaussian(state.model_state):
      state = _with_class_gaussians(state, config, train_source, mesh)
  start_step = int(state.step)
  step_fn = jit_train_step(make_train_step(config, model, tx, sde, schedule), mesh)
  step_key = jax.device_put(step_key, sharding.replicated(mesh))

  writer = MetricsWriter(workdir)
  progress = tqdm.tqdm(total=training.num_steps, initial=start_step, desc="train",
                       disable=jax.process_index() != 0, dynamic_ncols=True,
                       mininterval=5.0)
  last_log_time, last_log_step = time.perf_counter(), start_step
  metrics = None
  try:
    for step in range(start_step, training.num_steps):
      batch = sharding.to_global(next(data_iter), mesh)
      state, metrics = step_fn(state, batch, step_key)
      done = step + 1
      progress.update(1)
      if done % training.log_every == 0 or done == training.num_steps:
        _check_finite(state, manager)
        now = time.perf_counter()
        steps_per_s = (done - last_log_step) / max(now - last_log_time, 1e-9)
        last_log_time, last_log_step = now, done
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars.update(steps_per_s=steps_per_s, images_per_s=steps_per_s * training.batch_size)
        writer.write(done, scalars)
        progress.set_postfix(loss=f"{scalars['loss']:.4g}")
      if done % training.checkpoint_every == 0 or done == training.num_steps:
        _check_finite(state, manager)
        state = _with_precise_batch_stats(state, config, model, sde, train_source, done, mesh)
        checkpointing.save(manager, done, state, data_iter.get_state())
  finally:
    progress.close()
    writer.close()
    manager.wait_until_finished()
  return state, model


def _fine_tune_start(config, model, tx, shape, mesh) -> TrainState:
  """A step-0 state holding `training.init_from`'s latest inference variables.

  Its EMA parameters (where it kept one) become both the parameters and the EMA
  start; the optimizer and the schedule start afresh. The other run must be the
  same network: a checkpoint of another one is refused naming what differs.
  """
  source = config.training.init_from
  manager = checkpointing.make_manager(source)
  if checkpointing.latest_step(manager) is None:
    raise FileNotFoundError(f"training.init_from: no checkpoint under {source!r}")
  variables, _ = restore_inference_variables(manager, model, shape, config.data.num_classes,
                                             mesh=mesh)
  return jax.device_put(state_from_variables(config, tx, variables), sharding.replicated(mesh))


def _with_class_gaussians(state: TrainState, config, train_source, mesh) -> TrainState:
  """Fits the model's class Gaussians to one pass over the training split.

  Every process reads the whole split (a single cheap pass of sums), so all
  hold identical statistics without a collective. Inputs are dequantized with
  a fixed key, so a restart fits the same Gaussians.
  """
  key = jax.random.PRNGKey(config.seed)

  def batches():
    for i, (batch, n_valid) in enumerate(reader.eval_batches(
        train_source, batch_size=config.eval.batch_size)):
      x = model_inputs(jax.random.fold_in(key, i), batch["image"][:n_valid], config)
      yield np.asarray(x), batch["label"][:n_valid]

  stats = class_gaussian.fit_class_gaussians(
      batches(), config.data.num_classes, covariance=config.model.class_gaussian,
      shrinkage=config.model.class_gaussian_shrinkage)
  stats = jax.device_put(stats, sharding.replicated(mesh))
  return state.replace(model_state={**state.model_state, class_gaussian.COLLECTION: stats})


def _with_precise_batch_stats(state: TrainState, config, model, sde, train_source, step: int,
                              mesh) -> TrainState:
  """`state` with BatchNorm statistics recomputed under its EMA parameters (`precise_bn`).

  The running statistics serve only inference, and inference uses the EMA, so
  they are replaced, not kept beside; training mode normalises with batch
  statistics and never reads them. The images and noise are keyed by `step`,
  and every process reads the same images from the whole split, so all
  processes (and a resumed run) compute the same statistics.
  """
  training = config.training
  if (not training.ema_decay or not training.get("precise_bn_batches", 0)
      or precise_bn.COLLECTION not in state.model_state):
    return state
  data_key, noise_key = jax.random.split(
      jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), step))
  batches = precise_bn.sample_batches(train_source, config, data_key,
                                      training.precise_bn_batches, training.batch_size)
  variables = {"params": state.ema_params, **state.model_state}
  stats = precise_bn.precise_batch_stats(model.apply, variables, batches, noise_key, sde,
                                         eps=training.eps)
  stats = jax.device_put(stats, sharding.replicated(mesh))
  return state.replace(model_state={**state.model_state, precise_bn.COLLECTION: stats})


def _check_finite(state: TrainState, manager) -> None:
  bad = int(state.nonfinite_step)
  if bad >= 0:
    manager.wait_until_finished()
    raise NonFiniteLossError(
        f"non-finite loss at step {bad}; the last good checkpoint "
        f"(step {manager.latest_step()}) is kept in {manager.directory}")


def train_and_evaluate(config, workdir: str) -> dict[str, dict]:
  """Trains to the configured step count, then classifies the evaluation split.

  When the evaluation scores sample quality, the baseline CNN that judges the
  samples is trained first (unless the workdir holds one): evaluators are
  given it, they never train it. Returns `evaluation.evaluate`'s reports
  (also written to `workdir/eval_<split>/metrics.json`).
  """
  state, model = train(config, workdir)
  if sample_quality.needs_baseline(config):
    builder = reader.load_builder(config.data)
    validated = validate_config(config, builder)
    if baseline.load_logits_fn(validated, workdir, image_shape(validated, builder)) is None:
      baseline.train_and_evaluate(config, workdir)
      # Process 0 saves the CNN; every process reads it back.
      sharding.barrier("baseline saved")
  return evaluation.evaluate(config, workdir, variables=inference_variables(state), model=model)
