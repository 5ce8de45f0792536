"""Sample quality: how recognisable a score model's class-conditional samples are.

A classifier trained on real images (in evaluations, the discriminative
baseline of `sgc_jax.baseline`, given to `sgc_jax.evaluators.sample_quality`)
labels samples drawn for each class; a sampler's classification-accuracy
score is the fraction of class-y samples it recognises as y, averaged over
classes (every class gets the same number of samples, so this is also the
overall fraction). Samples of a model that has learnt its classes score near
the classifier's own accuracy; class-blind samples score near chance,
1 / num_classes. A failed (NaN) sample counts as not recognised.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from sgc_jax import sampling


def classification_accuracy_score(logits_fn: Callable, images, labels, num_classes: int) -> dict:
  """Classifies `images` [B, ...] drawn for `labels` [B] with `logits_fn(x) -> [B, C]`.

  Returns {"score": mean over classes of the fraction recognised, "per_class":
  [C] fractions (NaN for a class without samples), "failed": samples with
  non-finite values}.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
  predictions = np.asarray(jnp.argmax(logits_fn(jnp.asarray(np.where(
      finite.reshape((-1,) + (1,) * (images.ndim - 1)), images, 0.0))), axis=-1))
  correct = (predictions == labels) & finite
  per_class = np.array([correct[labels == c].mean() if (labels == c).any() else np.nan
                        for c in range(num_classes)])
  return {"score": float(np.nanmean(per_class)), "per_class": per_class.tolist(),
          "failed": int((~finite).sum())}


def score_samplers(score_fn, sde, logits_fn: Callable, *, num_classes: int,
                   image_shape: tuple[int, ...], samplers: Sequence[str], per_class: int, key,
                   data_range: tuple[float, float], **sample_kwargs) -> dict:
  """Draws `per_class` samples of every class with each sampler and scores them.

  Samples are clipped to `data_range` (the classifier saw only in-range inputs)
  before classification. Every sampler starts from the same per-sample keys,
  so the ODE and SDE samplers share their prior draws. `sample_kwargs` go to
  `sampling.sample` (num_steps, eps, rtol, ...).

  Returns {sampler: {"score", "per_class", "failed", "mean_nfe"}}.
  """
  labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)
  lo, hi = data_range
  results = {}
  for name in samplers:
    samples = sampling.sample(score_fn, sde, labels, image_shape, key=key, method=name,
                              **sample_kwargs)
    images = np.clip(np.asarray(samples.images), lo, hi)   # NaN stays NaN
    result = classification_accuracy_score(logits_fn, images, labels, num_classes)
    result["mean_nfe"] = float(np.mean(np.asarray(samples.num_function_evals)))
    results[name] = result
  return results
