"""The estimators of log p(x|y), one table with one signature, and the sharded class scorer.

    ESTIMATORS["ode"].estimate(score_fn, sde, x, num_classes, keys, **options)

Every estimator scores all classes of a batch x [B, H, W, C] in one call and
returns a `likelihood.LikelihoodResult`; `keys` holds one key per image.
`options(config.eval)` picks the eval fields an estimator reads. Evaluation,
`sgc-score` (through `sgc_jax.load`), the solver benchmark and config
validation all go through this table, so a new estimator is one entry here.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from sgc_jax import estimators, inputs, likelihood, sharding


@dataclasses.dataclass(frozen=True)
class Estimator:
  """One way of computing log p(x|y) for every class.

  Attributes:
    estimate: estimate(score_fn, sde, x, num_classes, keys, **options) -> LikelihoodResult.
    options: options(eval_config) -> the keyword options `estimate` takes from `config.eval`.
    shared_draws: the estimator draws one set of random numbers for every image
      (from keys[0]); the scorer then passes the same key for all, so that
      an image's score never depends on its batch-mates.
  """
  estimate: Callable
  options: Callable
  shared_draws: bool


def _ode(score_fn, sde, x, num_classes, keys, **options):
  return likelihood.class_log_likelihoods(score_fn, sde, x, num_classes, key=keys, **options)


def _ode_options(ev) -> dict:
  return dict(solver=ev.solver, adaptive=ev.adaptive, rtol=ev.rtol, atol=ev.atol,
              num_steps=ev.num_steps, grid=ev.grid, eps=ev.eps, max_steps=ev.max_steps,
              divergence=ev.divergence, probe=ev.probe, num_probes=ev.num_probes,
              # Configs saved before the field existed kept one set of probes per solve.
              resample_probes=ev.get("resample_probes", False))


def _denoising(score_fn, sde, x, num_classes, keys, **options):
  # One (t, z) set for all images and classes: common random numbers between classes.
  return estimators.denoising_log_likelihoods(score_fn, sde, x, num_classes, key=keys[0],
                                              **options)


def _denoising_options(ev) -> dict:
  return dict(num_time_samples=ev.num_time_samples, eps=ev.eps)


ESTIMATORS = {
    # The probability-flow ODE's exact likelihood; per-image Hutchinson probes.
    "ode": Estimator(_ode, _ode_options, shared_draws=False),
    # The forward-only denoising bound (a lower bound on the SDE model's likelihood).
    "denoising": Estimator(_denoising, _denoising_options, shared_draws=True),
}


def make_class_scorer(config, score_fn, sde, num_classes: int, mesh, *, estimator=None):
  """Returns scorer(x [B,H,W,C], ids [B], key) -> LikelihoodResult, sharded over `mesh`.

  `estimator` (default `config.eval.estimator`) runs independently on each
  device's slice of the batch, with the options `config.eval` sets for it.
  An image's random draws come from `key` folded with its id (the same for
  all of its classes), so they vary between images and never depend on the
  batch; an estimator with shared draws gets `key` itself for every image.
  The jitted program is shared by every scorer of the same estimator,
  options, SDE, class count and mesh, so a second evaluation of the same
  network (another `sgc_jax.load`, the next `evaluate`) is not traced again.
  """
  sharded = compiled_scorer(config, sde, num_classes, mesh, estimator=estimator)
  return lambda x, ids, key: sharded(score_fn, x, ids, key)


def compiled_scorer(config, sde, num_classes: int, mesh, *, estimator=None):
  """The jitted sharded(score_fn, x, ids, key) every scorer of these settings shares."""
  name = estimator or config.eval.estimator
  options = tuple(sorted(ESTIMATORS[name].options(config.eval).items()))
  return _sharded_scorer(name, options, sde, num_classes, mesh)


@functools.lru_cache(maxsize=16)
def _sharded_scorer(name: str, options: tuple, sde, num_classes: int, mesh):
  """jit(shard_map(...)) of one estimator, taking score_fn as an argument (see above)."""
  entry = ESTIMATORS[name]

  def per_device(score_fn, x, ids, key):
    if entry.shared_draws:
      keys = jnp.broadcast_to(key, (len(ids),) + key.shape)
    else:
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids.astype(jnp.uint32))
    return entry.estimate(score_fn, sde, x, num_classes, keys, **dict(options))

  data = P(sharding.DATA_AXIS)
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), data, data, P()),
                               out_specs=data, check_vma=False))


def score_records(class_scorer, prepare, images, ids, key, mesh, *,
                  num_dequantizations: int = 1) -> likelihood.LikelihoodResult:
  """log p(x|y) for every class of integer records [B, H, W, C] (B a multiple of mesh.size).

  Each image is dequantized (`prepare`), and its random draws taken (`class_scorer`),
  from `key` folded with its id. With `num_dequantizations` = K > 1 the image is
  dequantized K times, each time with its own probes, and the K log-likelihoods are
  averaged: the K-sample estimate of E_u log p(x + u | y), the dequantization bound of
  the discrete image, whose Monte Carlo noise (dequantization and probes together) falls
  as 1/sqrt(K). Draw 0 uses `key`'s own streams, so K = 1 is the single-draw score.
  Network evaluations add up over the draws; an image and class succeed only if every
  draw did (a failed draw's NaN makes the mean NaN).
  """
  deq_key, probe_key = jax.random.split(key)
  draws = []
  for draw in range(num_dequantizations):
    keys = (deq_key, probe_key) if draw == 0 else (jax.random.fold_in(deq_key, draw),
                                                     jax.random.fold_in(probe_key, draw))
    x = jax.device_put(prepare(keys[0], ids, images), sharding.batch_sharded(mesh))
    draws.append(jax.device_get(class_scorer(x, ids, keys[1])))
  if len(draws) == 1:
    return draws[0]
  halves = [d.half_log_likelihoods for d in draws]
  return likelihood.LikelihoodResult(
      log_likelihood=np.mean([d.log_likelihood for d in draws], axis=0),
      num_function_evals=np.sum([d.num_function_evals for d in draws], axis=0),
      success=np.all([d.success for d in draws], axis=0),
      half_log_likelihoods=None if halves[0] is None else np.mean(halves, axis=0))


def per_image_inputs(key, ids, images, config):
  """Integer records [B,H,W,C] -> model inputs, each dequantized with `key` folded with its id.

  One dequantization key per image id: an image's input never depends on its
  position in the batch.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids.astype(jnp.uint32))
  return jax.vmap(lambda k, img: inputs.model_inputs(k, img[None], config)[0])(keys, images)
