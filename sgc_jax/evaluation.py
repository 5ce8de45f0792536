"""Judges a trained model on a split: loads it once, runs the chosen evaluators, writes reports.

`evaluate(config, workdir)` restores the latest checkpoint (EMA parameters,
BatchNorm running averages) through `sgc_jax.load`, or takes in-memory
variables, and runs the evaluators `config.eval.evaluators` names
(`sgc_jax.evaluators`: class-likelihood tables and metrics, flow
diagnostics, sample quality) on `config.eval.split`. Scoring runs on all
devices (each device runs its own solves under `shard_map`: adaptive solves
take different step counts per device, so no collective may sit inside them).
Each estimator's report goes to `metrics.json` in its output directory
(`workdir/eval_<split>/`, or beside it with the estimator's name appended;
`evaluators.common.output_dir`), with its predictions and plots.
"""
from __future__ import annotations

import json
import os

import jax

from sgc_jax import api, evaluators, run_dir, sharding
from sgc_jax.config_validation import validate_config
from sgc_jax.data import reader
from sgc_jax.evaluators import common


def evaluate(config, workdir: str, *, estimators=None, variables=None, model=None,
             mesh=None) -> dict[str, dict]:
  """Classifies `config.eval.split` with each estimator asked for; writes each one's report.

  Args:
    config: the run's config (None: the `config.json` saved in `workdir`).
    workdir: the training workdir (checkpoints are read from it when
      `variables` is None); outputs go to its `eval_<split>*` directories.
    estimators: the class-likelihood tables to report (`scorer.ESTIMATORS`
      names); default `(config.eval.estimator,)`. Tables are scored once and
      shared: the flow diagnostics reuse a reported bound. Evaluators that run
      once (flow diagnostics, samples) report with the first estimator.
    variables, model: a trained model's inference variables and module, to
      skip the checkpoint restore.
    mesh: the devices to score on; default this process's local devices.
      In a multi-process job every process scores its share of the split and
      process 0 writes the outputs.

  Returns:
    {estimator: the metrics dict written to its `metrics.json`} (the same on
    every process).
  """
  sharding.maybe_initialize_distributed()
  mesh = mesh or sharding.make_mesh(jax.local_devices())
  if variables is None:
    trained = api.load(workdir, config, mesh=mesh)
    builder = reader.load_builder(trained.config.data)
  else:
    config = run_dir.read_config(workdir) if config is None else config
    builder = reader.load_builder(config.data)
    config = validate_config(config, builder)
    trained = api.from_variables(config, sharding.replicate_locally(variables, mesh),
                                 spec=run_dir.ModelSpec.from_builder(builder, config.data),
                                 workdir=workdir, step=run_dir.latest_step(workdir), mesh=mesh,
                                 model=model)
  data = common.EvalData.from_builder(builder, trained.config)
  estimators = tuple(estimators or (trained.config.eval.estimator,))
  job = common.Job(model=trained, data=data, tables=common.Tables(trained, data),
                   estimators=estimators, workdir=workdir)
  chosen = [evaluators.get(name) for name in evaluators.chosen(trained.config)]
  reports = {}
  for i, estimator in enumerate(estimators):
    report = {}
    for evaluator in chosen:
      if i == 0 or evaluator.PER_ESTIMATOR:
        report.update(evaluator.run(job, estimator))
    reports[estimator] = report
    if jax.process_index() == 0:
      out_dir = job.out_dir(estimator)
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
  return reports
