"""What every evaluator is given: the loaded model, its data, shared scored tables, outputs."""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any

import jax
import numpy as np
import tqdm

from sgc_jax import baseline, scorer, sharding
from sgc_jax.data import reader, records

# The estimator whose outputs go to the bare `eval_<split>/` (it came first); others add a suffix.
_UNSUFFIXED = "ode"


def output_dir(workdir: str, split: str, estimator: str) -> str:
  """`workdir/eval_<split>/`, or `eval_<split>_<estimator>/` beside it for other estimators."""
  suffix = "" if estimator == _UNSUFFIXED else f"_{estimator}"
  return os.path.join(workdir, f"eval_{split}{suffix}")


@dataclasses.dataclass(frozen=True)
class EvalData:
  """The records an evaluation reads: the split it reports, and the training split's parts."""
  eval_source: Any
  train_source: Any
  val_source: Any           # the held-out part of train, or None

  @classmethod
  def from_builder(cls, builder, config) -> "EvalData":
    train_source, val_source = reader.training_sources(builder, config.data, seed=config.seed)
    return cls(eval_source=records.data_source(builder, config.eval.split),
               train_source=train_source, val_source=val_source)


def score_source(config, class_scorer, prepare, source, *, mesh, key, desc: str,
                 max_examples: int = 0):
  """Scores every record of `source`; returns a dict of numpy arrays in record order.

  "half_log_likelihoods" [N, 2, C] is there when the estimator returns it.

  With several processes, each scores records process_index::process_count on
  its local `mesh` (`eval.batch_size` images per process and batch), and the
  results are gathered so that every process returns the whole split.
  """
  batch_size = math.ceil(config.eval.batch_size / mesh.size) * mesh.size
  n = len(source) if not max_examples else min(max_examples, len(source))
  if n < len(source):
    source = reader.SubsetSource(source, np.arange(n))
  process, processes = jax.process_index(), jax.process_count()
  positions = np.arange(process, n, processes)
  fields = ("image", "label", "id") if "id" in source[0] else ("image", "label")
  out = {"log_likelihood": [], "nfe": [], "success": [], "label": [], "id": []}
  start = time.perf_counter()
  done = 0
  with tqdm.tqdm(total=len(positions), desc=desc, unit="img", disable=process != 0,
                 mininterval=5.0) as progress:
    for batch, n_valid in reader.eval_batches(source, batch_size=batch_size, fields=fields,
                                              shard_index=process, shard_count=processes):
      # Without stored ids an image is named by its position in the split.
      ids = batch["id"] if "id" in batch else np.resize(positions[done:done + n_valid], batch_size)
      result = scorer.score_records(class_scorer, prepare, batch["image"], np.asarray(ids), key,
                                    mesh, num_dequantizations=config.eval.num_dequantizations)
      out["log_likelihood"].append(result.log_likelihood[:n_valid])
      if result.half_log_likelihoods is not None:
        out.setdefault("half_log_likelihoods", []).append(result.half_log_likelihoods[:n_valid])
      out["nfe"].append(result.num_function_evals[:n_valid])
      out["success"].append(result.success[:n_valid])
      out["label"].append(batch["label"][:n_valid])
      out["id"].append(np.asarray(ids)[:n_valid])
      done += n_valid
      progress.update(n_valid)
  seconds = time.perf_counter() - start
  result = {k: np.concatenate(v) for k, v in out.items()}
  result["position"] = positions
  result = sharding.gather_from_processes(result)
  order = np.argsort(result.pop("position"), kind="stable")
  result = {k: v[order] for k, v in result.items()}
  # The slowest process sets the pace of the whole split.
  result["seconds"] = float(np.max(sharding.gather_from_processes(
      {"seconds": np.asarray([seconds])})["seconds"]))
  return result


class Tables:
  """Scored splits, each computed once and shared by every evaluator that asks for it.

  `get(estimator, part)` is the table of `part` ("eval": the reported split,
  "validation": the held-out part of train) scored with `estimator` (a
  `scorer.ESTIMATORS` name), every image keyed by `PRNGKey(seed + 1)` folded
  with its id, as `sgc_jax.load(...).log_likelihoods` does.
  """

  def __init__(self, model, data: EvalData):
    self._model, self._data = model, data
    self._tables: dict[tuple[str, str], dict] = {}
    # The model's own scorer is its configured estimator's; others are built on first use.
    self._scorers = {model.config.eval.estimator: model.scorer}

  def _scorer(self, estimator: str):
    if estimator not in self._scorers:
      model = self._model
      self._scorers[estimator] = scorer.make_class_scorer(
          model.config, model.score_fn, model.sde, model.num_classes, model.mesh,
          estimator=estimator)
    return self._scorers[estimator]

  def get(self, estimator: str, part: str = "eval") -> dict | None:
    """The scored table (None for "validation" when train holds no validation part)."""
    source = {"eval": self._data.eval_source, "validation": self._data.val_source}[part]
    if source is None:
      return None
    if (estimator, part) not in self._tables:
      config = self._model.config
      split = config.eval.split if part == "eval" else part
      self._tables[estimator, part] = score_source(
          config, self._scorer(estimator), self._model.prepare, source, mesh=self._model.mesh,
          key=jax.random.PRNGKey(config.seed + 1), desc=f"score {split} ({estimator})",
          max_examples=config.eval.max_examples)
    return self._tables[estimator, part]


@dataclasses.dataclass
class Job:
  """One evaluation: what every evaluator's `run(job, estimator)` is given.

  Attributes:
    model: a loaded model (`sgc_jax.api.TrainedModel`: config, score_fn, sde,
      variables, spec, mesh), restored or in memory.
    data: the records.
    tables: the scored tables, shared between evaluators.
    estimators: the tables the evaluation reports; the first one's report also
      holds the evaluators that run once.
    workdir: the run directory outputs go under.
  """
  model: Any
  data: EvalData
  tables: Tables
  estimators: tuple[str, ...]
  workdir: str

  def out_dir(self, estimator: str) -> str:
    return output_dir(self.workdir, self.model.config.eval.split, estimator)

  @functools.cached_property
  def baseline_logits_fn(self):
    """The baseline CNN trained in the workdir (`sgc_jax.baseline`), or None when there is none."""
    model = self.model
    return baseline.load_logits_fn(model.config, self.workdir,
                                   model.spec.input_shape(model.config.data.num_channels))
