"""The discriminative baseline: a small CNN on the same split, pipeline and metrics.

Every report shows the generative classifier beside this, as the paper does.
It reads the same records through the same reader, uses the same model inputs
(dequantization, channels, flips), the same mesh, and the same temperature
calibration on the same validation images.
"""
from __future__ import annotations

import functools
import json
import os
import time

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from sgc_jax import classifier, inputs, metrics, sharding
from sgc_jax.config_validation import validate_config
from sgc_jax.data import reader, records


class SmallCNN(nn.Module):
  """Two conv stages (conv-GroupNorm-ReLU x2, then 2x2 average pool), global pool, dense."""
  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, x):
    for stage, features in enumerate((self.width, 2 * self.width)):
      for _ in range(2):
        x = nn.Conv(features, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(8, features))(x))
      if min(x.shape[1:3]) >= 2 and stage == 0:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def _logits(model, params, config, source, mesh, batch_size):
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  out, labels = [], []
  for batch, n_valid in reader.eval_batches(source, batch_size=batch_size):
    x = inputs.model_inputs(None, jnp.asarray(batch["image"]), config)
    x = jax.device_put(x, sharding.batch_sharded(mesh))
    out.append(np.asarray(apply(params, x))[:n_valid])
    labels.append(batch["label"][:n_valid])
  return np.concatenate(out), np.concatenate(labels)


def class_weights(labels, num_classes: int, *, balanced: bool) -> np.ndarray:
  """Per-class loss weights [C]: ones, or num_images / (num_classes * count) when `balanced`.

  Balanced weights make every class weigh as much in the loss as the others,
  whatever its count, and average 1 over the training images.
  """
  if not balanced:
    return np.ones(num_classes, np.float32)
  counts = np.bincount(np.asarray(labels), minlength=num_classes)
  return (len(labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)


def train_and_evaluate(config, workdir: str, *, mesh=None) -> dict:
  """Trains the baseline CNN and reports its metrics on `config.eval.split`.

  Writes `workdir/baseline/metrics.json`; returns the metrics dict.
  """
  mesh = mesh or sharding.make_mesh()
  builder = reader.load_builder(config.data)
  config = validate_config(config, builder)
  bl = config.baseline
  num_classes = config.data.num_classes
  train_source, val_source = reader.training_sources(builder, config.data, seed=config.seed)
  batch_size = -(-bl.batch_size // mesh.size) * mesh.size
  dataset = reader.train_dataset(train_source, batch_size=sharding.local_batch_size(batch_size, mesh),
                                 seed=config.seed, shard_index=jax.process_index(),
                                 shard_count=jax.process_count())
  weights = jnp.asarray(class_weights(reader.labels_of(train_source), num_classes,
                                      balanced=bl.get("class_balanced", False)))
  model = SmallCNN(num_classes=num_classes, width=bl.width)
  shape = inputs.image_shape(config, builder)
  params = model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, *shape)))["params"]
  tx = optax.adamw(optax.cosine_decay_schedule(bl.learning_rate, bl.num_steps), weight_decay=1e-4)
  replicated = sharding.replicated(mesh)
  params = jax.device_put(params, replicated)
  opt_state = jax.device_put(tx.init(params), replicated)

  @functools.partial(jax.jit, in_shardings=(replicated, replicated, sharding.batch_sharded(mesh),
                                            replicated),
                     out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))
  def step(params, opt_state, batch, key):
    x = inputs.model_inputs(key, batch["image"], config)
    x = inputs.augment(jax.random.fold_in(key, 1), x, config.data)

    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
      return jnp.mean(weights[batch["label"]] * losses)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.random.PRNGKey(config.seed + 3)
  data_iter = iter(dataset)
  start = time.perf_counter()
  for i in tqdm.trange(bl.num_steps, desc="baseline", mininterval=5.0,
                       disable=jax.process_index() != 0):
    batch = sharding.to_global(next(data_iter), mesh)
    params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, i))
  train_seconds = time.perf_counter() - start

  eval_batch = -(-config.eval.batch_size // mesh.size) * mesh.size
  logits, labels = _logits(model, params, config, records.data_source(builder, config.eval.split),
                           mesh, eval_batch)
  uniform = classifier.log_prior("uniform", num_classes)
  calibration = classifier.Calibration(temperature=1.0, log_prior=uniform)
  if config.eval.calibrate and val_source is not None:
    val_logits, val_labels = _logits(model, params, config, val_source, mesh, eval_batch)
    calibration = classifier.calibrate(val_logits, val_labels, uniform)
  raw_logpost = classifier.log_posteriors(logits, uniform)
  logpost = calibration.apply(logits)
  report = metrics.classification_metrics(labels, np.exp(logpost), num_classes, log_probs=logpost)
  report.update(
      ece_uncalibrated=metrics.expected_calibration_error(np.exp(raw_logpost), labels),
      temperature=float(calibration.temperature), final_loss=float(loss),
      train_seconds=train_seconds, images=int(len(labels)))
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "baseline"), exist_ok=True)
    with open(os.path.join(workdir, "baseline", "metrics.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    # The trained CNN classifies the generative model's samples (`sample_quality`).
    with open(_params_path(workdir), "wb") as f:
      f.write(flax.serialization.to_bytes(jax.device_get(params)))
  return report


def _params_path(workdir: str) -> str:
  return os.path.join(workdir, "baseline", "params.msgpack")


def load_logits_fn(config, workdir: str, image_shape):
  """The CNN that `train_and_evaluate` saved in `workdir`, as logits_fn(x [B, *image_shape]).

  Inputs are model inputs (`inputs.model_inputs`: in `data.range`, configured
  channels). Returns None when no baseline has been trained there.
  """
  path = _params_path(workdir)
  if not os.path.exists(path):
    return None
  model = SmallCNN(num_classes=config.data.num_classes, width=config.baseline.width)
  template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)))
  try:
    with open(path, "rb") as f:
      params = flax.serialization.from_bytes(template["params"], f.read())
    if not jax.tree.all(jax.tree.map(lambda t, p: t.shape == np.shape(p), template["params"],
                                     params)):
      raise ValueError("parameter shapes differ")
  except (ValueError, KeyError) as e:
    raise ValueError(f"{path}: not a baseline CNN of width {config.baseline.width} for "
                     f"{config.data.num_classes} classes ({e})") from None
  return jax.jit(lambda x: model.apply({"params": params}, x))
