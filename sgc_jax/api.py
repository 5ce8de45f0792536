"""`sgc_jax.load(workdir)`: a trained model, ready to score, in one call.

    import sgc_jax
    trained = sgc_jax.load("/tmp/digits")         # reads /tmp/digits/config.json
    result = trained.log_likelihoods(images)      # integer records [B, H, W, C]
    result.log_likelihood                         # [B, classes] log p(x|y), nats
    trained.score_fn(x, t, y)                     # the score network itself

The one way every CLI, tool and test gets a trained model: the run's config
is read once, one checkpoint manager restores the latest step, and what the
model scores comes from the run directory's `model_spec.json`, so no
training records are needed (`sgc_jax.run_dir`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from sgc_jax import checkpointing, likelihood, models, run_dir, scorer, sharding, train_state
from sgc_jax import sde as sde_lib
from sgc_jax.config_validation import validate_config
from sgc_jax.data import reader


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A restored model with everything needed to score images with it."""
  config: ml_collections.ConfigDict  # validated: data.num_classes filled in
  model: Any                         # the flax module
  variables: dict                    # inference variables (EMA params, BatchNorm stats, ...)
  sde: Any
  score_fn: Callable                 # score_fn(x [B,H,W,C], t [B], y [B]) -> score
  step: int | None                   # the checkpoint's training step (None: never checkpointed)
  workdir: str
  spec: run_dir.ModelSpec            # image shape and dtype, classes, preprocessing
  mesh: Any                          # the local devices the scorer shards over
  scorer: Callable                   # scorer.make_class_scorer's scorer(x, ids, key)
  prepare: Callable                  # prepare(key, ids, records) -> dequantized inputs

  @property
  def num_classes(self) -> int:
    return self.config.data.num_classes

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the stored records (C before channel replication)."""
    return self.spec.image_shape

  @functools.cached_property
  def builder(self):
    """The TFDS builder of the training records (needs them; scoring needs only `spec`)."""
    return reader.load_builder(self.config.data)

  @functools.cached_property
  def identity(self) -> run_dir.CheckpointIdentity:
    """Which model this is: step, variables' hash, config's hash (what scoring records)."""
    return run_dir.CheckpointIdentity(step=self.step,
                                      variables_hash=run_dir.variables_hash(self.variables),
                                      config_hash=run_dir.config_hash(self.config))

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
    padded = -(-n // self.mesh.size) * self.mesh.size
    take = np.minimum(np.arange(padded), n - 1)      # pad by repeating the last image
    ids = ids[take].astype(np.uint32)
    result = scorer.score_records(self.scorer, self.prepare, images[take], ids, key, self.mesh,
                                  num_dequantizations=self.config.eval.num_dequantizations)
    # A tree map: an estimator's optional fields (None) stay None.
    return jax.tree.map(lambda v: np.asarray(v)[:n], result)


def from_variables(config, variables: dict, *, spec: run_dir.ModelSpec, workdir: str,
                   step: int | None, mesh, model=None) -> TrainedModel:
  """A `TrainedModel` of in-memory `variables` (a validated `config`; `model` rebuilt if None).

  What `load` returns after its restore, and what the trainer's evaluation
  scores without a round trip through the checkpoint.
  """
  sde = sde_lib.from_config(config.sde)
  if model is None:
    model = models.get_model(config.model, config.data.num_classes, sde)
  score_fn = models.make_score_fn(model, variables, sde.marginal_std)
  return TrainedModel(
      config=config, model=model, variables=variables, sde=sde, score_fn=score_fn, step=step,
      workdir=workdir, spec=spec, mesh=mesh,
      scorer=scorer.make_class_scorer(config, score_fn, sde, config.data.num_classes, mesh),
      prepare=jax.jit(functools.partial(scorer.per_image_inputs, config=config)))


def load(workdir: str, config=None, *, mesh=None) -> TrainedModel:
  """Restores the latest checkpoint of a training `workdir`.

  Args:
    workdir: a `sgc-train` (or `sgc-import-seed`) workdir.
    config: the run's config; default the `config.json` saved there. Only its
      `eval` block (estimator, solver, tolerances, ...) may differ from the
      saved one: a config that builds another model, or reads other records,
      is refused naming the first differing field.
    mesh: the devices to score on; default this process's local devices.
  """
  sharding.maybe_initialize_distributed()
  if config is None:
    config = run_dir.read_config(workdir)
  elif run_dir.has_config(workdir):
    run_dir.check_same_run(config, run_dir.read_config(workdir), workdir)
  mesh = mesh or sharding.make_mesh(jax.local_devices())
  manager = checkpointing.make_manager(workdir)
  # Before the spec: a workdir without checkpoints is named before any records are looked for.
  step = train_state.latest_checkpoint(manager)
  spec = run_dir.read_model_spec(workdir)
  if spec is None:
    # A run saved before specs were stored: its records say what the model scores.
    spec = run_dir.ModelSpec.from_builder(reader.load_builder(config.data), config.data)
  config = validate_config(config, spec=spec)
  sde = sde_lib.from_config(config.sde)
  model = models.get_model(config.model, config.data.num_classes, sde)
  variables, step = train_state.restore_inference_variables(
      manager, model, spec.input_shape(config.data.num_channels), config.data.num_classes,
      mesh=mesh, step=step)
  return from_variables(config, variables, spec=spec, workdir=workdir, step=step, mesh=mesh,
                        model=model)
