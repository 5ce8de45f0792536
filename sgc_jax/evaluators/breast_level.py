"""Breast-level decisions: the views of each breast fused, with bootstrap confidence intervals.

Where the split's records carry a study and a laterality (VinDr-Mammo and
INbreast; CBIS-DDSM through its PatientIDs), the class-likelihood table's
images are grouped into breasts (`sgc_jax.breast_level`: log p(views | y) =
sum_v log p(x_v | y)), a breast-level temperature is fitted on the validation
breasts and stored beside the checkpoint for `sgc-score`
(`WORKDIR/calibration_breast_<estimator>.json`), and the report gets
`breast_level`: image- and breast-level AUC, sensitivity and specificity with
bootstrap 95 % intervals (exams resampled). Records without a study or a
laterality (digits) add nothing. The validation part is drawn by image, not
by woman, so a validation breast may hold only some of its views.
"""
from __future__ import annotations

import jax
import numpy as np

from sgc_jax import breast_level
from sgc_jax.data import records
from sgc_jax.evaluators import class_likelihood

PER_ESTIMATOR = True
_FIELDS = ("study_id", "laterality", "patient_id", "view")


def grouping_of(source, rows) -> breast_level.Grouping | None:
  """The breasts of records `rows` of `source`; None when the records name no breasts.

  None as well when no two of the records share a breast: then breast level
  is image level, and a breast-level temperature could not be fitted apart.
  """
  rows = [int(i) for i in rows]
  if not rows or not {"study_id", "laterality"} <= set(source[rows[0]]):
    return None
  fields = {name: [] for name in _FIELDS}
  for i in rows:
    record = source[i]
    for name, values in fields.items():
      values.append(records.text(record[name]) if name in record else "")
  grouping = breast_level.group_views([str(i) for i in rows], fields["study_id"],
                                      fields["laterality"], fields["patient_id"], fields["view"])
  return grouping if len(set(grouping.breast)) < len(rows) else None


def run(job, estimator: str) -> dict:
  """{"breast_level": image- and breast-level metrics with CIs}, or {} without breasts."""
  model = job.model
  scored = job.tables.get(estimator)
  ok = np.flatnonzero(scored["success"].all(axis=1))
  grouping = grouping_of(job.data.eval_source, ok)
  if grouping is None:
    return {}
  image_calibration, val_scored = class_likelihood.image_calibration(job, estimator)
  # Without validation breasts, the image-level temperature (as sgc-score then uses it).
  calibration, fitted_on = image_calibration, None
  if val_scored is not None:
    val_ok = np.flatnonzero(val_scored["success"].all(axis=1))
    val_grouping = grouping_of(job.data.val_source, val_ok)
    if val_grouping is not None:
      calibration = breast_level.fit_calibration(
          val_scored["log_likelihood"][val_ok], val_scored["label"][val_ok], val_grouping,
          image_calibration.log_prior)
      fitted_on = len(set(val_grouping.breast))
      if jax.process_index() == 0:
        breast_level.save_calibration(job.workdir, breast_level.BreastCalibration(
            temperature=float(calibration.temperature),
            log_prior=tuple(float(v) for v in calibration.log_prior), breasts=fitted_on,
            images=len(val_ok), estimator=estimator, step=model.step))
  found = breast_level.level_metrics(
      scored["log_likelihood"][ok], scored["label"][ok], grouping, image_calibration,
      calibration, replicates=model.config.eval.get("bootstrap_replicates",
                                                    breast_level.BOOTSTRAP_REPLICATES),
      seed=model.config.seed)   # .get: configs saved before the field
  found["breast_temperature_validation_breasts"] = fitted_on
  return {"breast_level": found}
