"""`sgc_jax.load(workdir)`: a trained model, ready to score, in one call.

    import sgc_jax
    trained = sgc_jax.load("/tmp/digits")         # reads /tmp/digits/config.json
    result = trained.log_likelihoods(images)      # integer records [B, H, W, C]
    result.log_likelihood                         # [B, classes] log p(x|y), nats
    trained.score_fn(x, t, y)                     # the score network itself

What notebooks, `sgc-score` and the benchmarks call instead of reassembling
the config, the checkpoint restore and the score function by hand. The
trainer writes the run's config to `WORKDIR/config.json`; `load` reads it back
unless a config is given.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from sgc_jax import checkpointing, evaluation, likelihood, models, sharding, train_state
from sgc_jax import sde as sde_lib
from sgc_jax.config_validation import validate_config
from sgc_jax.data import reader

CONFIG_FILE = "config.json"


def write_config(config, workdir: str) -> None:
  """Writes `config` to `workdir/config.json` (atomically: a reader never sees half a file)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run saved in `workdir` (see `write_config`)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"--workdir: no {CONFIG_FILE} in {workdir} (written by sgc-train); "
                            "pass the run's config explicitly (--config)")
  with open(path, encoding="utf-8") as f:
    try:
      return ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A restored model with everything needed to score images with it."""
  config: ml_collections.ConfigDict  # validated: data.num_classes filled in
  model: Any                         # the flax module
  variables: dict                    # inference variables (EMA params, BatchNorm stats, ...)
  sde: Any
  score_fn: Callable                 # score_fn(x [B,H,W,C], t [B], y [B]) -> score
  step: int                          # the checkpoint's training step
  workdir: str
  builder: Any                       # the TFDS builder the model was trained on
  mesh: Any                          # the local devices the scorer shards over
  scorer: Callable                   # evaluation.make_class_scorer's scorer(x, ids, key)
  prepare: Callable                  # prepare(key, ids, records) -> dequantized inputs

  @property
  def num_classes(self) -> int:
    return self.config.data.num_classes

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the stored records (C before channel replication)."""
    return tuple(self.builder.info.features["image"].shape)

  def log_likelihoods(self, images, ids=None, key=None) -> likelihood.LikelihoodResult:
    """log p(x|y) for integer records [B, H, W, C] and every class, as `sgc-evaluate` does.

    Each image is dequantized, and its Hutchinson probes drawn, from `key`
    (default: the evaluation's `PRNGKey(seed + 1)`) folded with its id (default:
    its position 0..B-1; pass the record ids to reproduce an evaluation table).
    The batch is padded to a multiple of the device count and sharded. An
    image's numbers do not depend on its batch-mates, but adaptive solves carry
    round-off of the shape they run at: equal per-device batch sizes give
    equal numbers (what `sgc-score --per_device_batch` fixes).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != self.image_shape:
      shape = ", ".join(map(str, self.image_shape))
      raise ValueError(f"images: expected integer records [B, {shape}], got shape {images.shape}")
    n = len(images)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    if ids.shape != (n,):
      raise ValueError(f"ids: expected one id per image ({n}), got shape {ids.shape}")
    key = jax.random.PRNGKey(self.config.seed + 1) if key is None else key
    deq_key, probe_key = jax.random.split(key)
    padded = -(-n // self.mesh.size) * self.mesh.size
    take = np.minimum(np.arange(padded), n - 1)      # pad by repeating the last image
    ids = ids[take].astype(np.uint32)
    x = self.prepare(deq_key, ids, images[take])
    x = jax.device_put(x, sharding.batch_sharded(self.mesh))
    result = jax.device_get(self.scorer(x, ids, probe_key))
    return likelihood.LikelihoodResult(*(np.asarray(v)[:n] for v in result))


def load(workdir: str, config=None, *, mesh=None) -> TrainedModel:
  """Restores the latest checkpoint of a training `workdir`.

  Args:
    workdir: a `sgc-train` workdir.
    config: the run's config; default the `config.json` the trainer saved there.
      Its `eval` block sets how `log_likelihoods` scores (estimator, solver, ...).
    mesh: the devices to score on; default this process's local devices.
  """
  sharding.maybe_initialize_distributed()
  config = read_config(workdir) if config is None else config
  mesh = mesh or sharding.make_mesh(jax.local_devices())
  builder = reader.load_builder(config.data)
  config = validate_config(config, builder)
  sde = sde_lib.from_config(config.sde)
  model = models.get_model(config.model, config.data.num_classes, sde)
  variables = train_state.restore_inference_variables(config, workdir, mesh=mesh)
  step = checkpointing.latest_step(checkpointing.make_manager(workdir))
  score_fn = models.make_score_fn(model, variables, sde.marginal_std)
  scorer = evaluation.make_class_scorer(config, score_fn, sde, config.data.num_classes, mesh)
  return TrainedModel(config=config, model=model, variables=variables, sde=sde,
                      score_fn=score_fn, step=int(step), workdir=workdir, builder=builder,
                      mesh=mesh, scorer=scorer,
                      prepare=jax.jit(functools.partial(evaluation.per_image_inputs,
                                                        config=config)))
