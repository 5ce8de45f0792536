"""Checks a config before any work starts; every error names the offending field."""
from __future__ import annotations

import numpy as np

from sgc_jax import evaluators, models, run_dir
from sgc_jax.scorer import ESTIMATORS
from sgc_jax import sde as sde_lib
from sgc_jax import exponential_integrator, solvers
from sgc_jax.likelihood import DIVERGENCES, PROBES
from sgc_jax.models import class_gaussian, unet
from sgc_jax.sampling import METHODS as SAMPLERS

LR_SCHEDULES = ("constant", "step", "cosine")
PRIORS = ("uniform", "empirical")
_BIT_DEPTHS = {np.dtype(np.uint8): (8,), np.dtype(np.uint16): (10, 12, 14, 16)}


def _require(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ValueError(f"{field}: {message}")


def _one_of(value, options, field: str) -> None:
  _require(value in options, field, f"{value!r} is not one of {list(options)}")


def validate_config(config, builder=None, *, spec=None):
  """Validates `config`, and its fit to the records: the dataset `builder` or a run's `spec`.

  `builder` also checks `eval.split`; `spec` (a `run_dir.ModelSpec`) needs no
  records. Returns a copy with `data.num_classes` filled in from either.
  """
  config = config.copy_and_resolve_references()
  data, training, evaluation = config.data, config.training, config.eval
  lo, hi = data.range
  _require(hi > lo, "data.range", f"expects (low, high) with high > low, got {tuple(data.range)}")
  _require(data.num_channels >= 1, "data.num_channels", f"must be >= 1, got {data.num_channels}")
  _require(len(data.random_flip) == 2, "data.random_flip", "expects (horizontal, vertical)")
  shift = tuple(data.random_shift)
  _require(len(shift) == 2 and all(isinstance(v, int) for v in shift) and shift[0] >= 0
           and shift[1] >= 1 and shift[0] % shift[1] == 0, "data.random_shift",
           f"expects (at most, in multiples of) whole pixels: a multiple >= 1 and a limit >= 0 "
           f"that it divides, got {shift}")
  _require(0.0 <= data.validation_fraction < 1.0, "data.validation_fraction",
           f"must be in [0, 1), got {data.validation_fraction}")
  _one_of(config.sde.name.lower(), sde_lib.SDES, "sde.name")
  if config.sde.name.lower() == "ve":
    _require(0 < config.sde.sigma_min < config.sde.sigma_max, "sde.sigma_max",
             "needs 0 < sigma_min < sigma_max")
  else:
    _require(0 < config.sde.beta_min < config.sde.beta_max, "sde.beta_max",
             "needs 0 < beta_min < beta_max")

  for name in ("batch_size", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
    _require(training[name] >= 1, f"training.{name}", f"must be >= 1, got {training[name]}")
  _require(training.learning_rate > 0, "training.learning_rate", "must be > 0")
  _one_of(training.lr_schedule, LR_SCHEDULES, "training.lr_schedule")
  _require(0.0 <= training.ema_decay < 1.0, "training.ema_decay", "must be in [0, 1)")
  weight_decay = training.get("weight_decay", 0.0)   # absent from runs made before it
  _require(weight_decay >= 0.0, "training.weight_decay", f"must be >= 0, got {weight_decay}")
  _require(int(training.get("precise_bn_batches", 0)) >= 0, "training.precise_bn_batches",
           "must be >= 0")
  # Recomputing the statistics runs the network in training mode, which would drop units
  # that inference keeps (and needs a dropout key the recomputation does not have).
  _require(not (training.get("precise_bn_batches", 0) and config.model.name == "unet"
                and config.model.unet.get("dropout", 0.0)), "training.precise_bn_batches",
           "cannot be combined with model.unet.dropout > 0")
  if config.model.name == "unet":
    norm = config.model.unet.get("norm", "batch")
    _one_of(norm, unet.NORMS, "model.unet.norm")
    _require(not (training.get("precise_bn_batches", 0) and norm != "batch"),
             "training.precise_bn_batches", f"has no BatchNorm to recompute with model.unet.norm = {norm!r}")
  _require(0.0 <= training.label_dropout < 1.0, "training.label_dropout", "must be in [0, 1)")
  _require(0.0 < training.eps < 1.0, "training.eps", "must be in (0, 1)")
  _require(training.second_order_weight >= 0.0, "training.second_order_weight",
           f"must be >= 0, got {training.second_order_weight}")
  if training.label_dropout:
    model_cls = models.MODELS.get(config.model.name)
    _require(getattr(model_cls, "supports_null_label", False), "training.label_dropout",
             f"model {config.model.name!r} has no null label to drop to")

  _one_of(config.model.class_gaussian, ("none", *class_gaussian.COVARIANCES),
          "model.class_gaussian")
  _require(0.0 <= config.model.class_gaussian_shrinkage <= 1.0, "model.class_gaussian_shrinkage",
           f"must be in [0, 1], got {config.model.class_gaussian_shrinkage}")

  _one_of(evaluation.estimator, ESTIMATORS, "eval.estimator")
  for name in evaluators.chosen(config):
    _one_of(name, evaluators.NAMES, "eval.evaluators")
  _one_of(evaluation.solver.lower(), (*solvers.SOLVERS, *exponential_integrator.SOLVERS),
          "eval.solver")
  _one_of(evaluation.grid, exponential_integrator.GRIDS, "eval.grid")
  _require(not (evaluation.adaptive and evaluation.solver.lower() in exponential_integrator.SOLVERS),
           "eval.adaptive", f"{evaluation.solver} steps through a fixed grid: set it to False")
  _one_of(evaluation.divergence, DIVERGENCES, "eval.divergence")
  _one_of(evaluation.probe, PROBES, "eval.probe")
  _one_of(evaluation.prior, PRIORS, "eval.prior")
  _one_of(evaluation.sampler, SAMPLERS, "eval.sampler")
  for sampler in evaluation.sample_quality_samplers:
    _one_of(sampler, SAMPLERS, "eval.sample_quality_samplers")
  _require(evaluation.sampler_steps >= 2, "eval.sampler_steps",
           "must be >= 2 (the last reverse-SDE step is the denoising step)")
  _require(evaluation.batch_size >= 1, "eval.batch_size", "must be >= 1")
  _require(evaluation.num_probes >= 1, "eval.num_probes", "must be >= 1")
  _require(evaluation.num_dequantizations >= 1, "eval.num_dequantizations", "must be >= 1")
  _require(not (evaluation.get("resample_probes", False)
                and evaluation.solver.lower() not in exponential_integrator.SOLVERS),
           "eval.resample_probes", f"fresh probes per step need an exponential integrator "
           f"{sorted(exponential_integrator.SOLVERS)}; {evaluation.solver} adapts its steps to a "
           "fixed vector field")

  if builder is not None:
    _one_of(evaluation.split, list(builder.info.splits), "eval.split")
    spec = run_dir.ModelSpec.from_builder(builder, data)
  if spec is not None:
    dtype = np.dtype(spec.image_dtype)
    _require(data.bit_depth in _BIT_DEPTHS.get(dtype, ()), "data.bit_depth",
             f"{data.bit_depth} does not fit the {dtype} records of {spec.dataset}")
    stored_channels = spec.image_shape[-1]
    _require(data.num_channels % stored_channels == 0, "data.num_channels",
             f"{data.num_channels} is not a multiple of the stored {stored_channels} channel(s)")
    dim = int(np.prod(spec.image_shape[:-1])) * data.num_channels
    _require(config.model.class_gaussian != "full" or dim <= class_gaussian.MAX_FULL_DIM,
             "model.class_gaussian", f"'full' needs D <= {class_gaussian.MAX_FULL_DIM} pixel "
             f"values, the model inputs have {dim}; use 'diagonal'")
    with config.unlocked():
      config.data.num_classes = spec.num_classes
  return config
