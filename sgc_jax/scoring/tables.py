"""The breast and exam tables: per-image rows fused over the views of each breast.

`breast_table(scores, ...)` groups the image rows of `scores.parquet` into
breasts (`breast_level.group_views`: StudyInstanceUID x declared laterality,
the CBIS-DDSM PatientID fallback, an image without a study or side alone and
said so in `fusion`), sums each class's log-likelihood over a breast's views
(conditionally independent given its class) and applies the breast-level
temperature and the prior. `exam_table` keeps, per exam, the breast with the
largest malignancy posterior. Pure functions of the tables: no model, no files.
"""
from __future__ import annotations

import collections
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgc_jax import breast_level, classifier

BREASTS_FILE = "breasts.parquet"
EXAMS_FILE = "exams.parquet"


def malignant_class(names: Sequence[str]) -> str:
  """The class an exam is ranked by: "malignant" where there is one, else the last class."""
  return "malignant" if "malignant" in names else names[-1]


def breast_calibration(workdir: str, estimator: str, image_calibration,
                       num_classes: int) -> tuple[classifier.Calibration, str]:
  """(the breast-level calibration to apply, where it comes from, in words).

  The temperature `sgc-evaluate` fitted on validation breasts; without one (the
  records carry no study and laterality) the image-level temperature, so a
  breast of one view has its image's posterior; without any calibration T = 1
  and a uniform prior, as for the image rows.
  """
  stored = breast_level.load_calibration(workdir, estimator)
  if stored is not None:
    return stored.calibration(), (f"fitted on {stored.breasts} validation breasts "
                                  f"({stored.images} images)")
  if image_calibration is not None:
    return image_calibration.calibration(), "the image-level temperature (no breast-level fit)"
  return (classifier.Calibration(1.0, np.full(num_classes, -np.log(num_classes))),
          "none (no calibration: run sgc-evaluate)")


def breast_schema(names: Sequence[str]) -> pa.Schema:
  """The breasts table's schema for classes `names`."""
  fields = [("breast_id", pa.string()), ("exam_id", pa.string()),
            ("study_instance_uid", pa.string()), ("patient_id", pa.string()),
            ("laterality", pa.string()), ("fusion", pa.string()), ("views", pa.int64()),
            ("view_keys", pa.list_(pa.string())), ("view_paths", pa.list_(pa.string())),
            ("view_positions", pa.list_(pa.string()))]
  fields += [(f"log_likelihood_{n}", pa.float64()) for n in names]
  fields += [(f"probability_{n}", pa.float64()) for n in names]
  fields += [("prediction", pa.string()), ("ood", pa.bool_()), ("temperature", pa.float64())]
  return pa.schema(fields)


def exam_schema(names: Sequence[str]) -> pa.Schema:
  """The exams table's schema for classes `names`."""
  return pa.schema([("exam_id", pa.string()), ("study_instance_uid", pa.string()),
                    ("patient_id", pa.string()), ("breasts", pa.int64()),
                    ("images", pa.int64()),
                    (f"max_probability_{malignant_class(names)}", pa.float64()),
                    ("breast_id", pa.string()), ("laterality", pa.string()),
                    ("prediction", pa.string()), ("ood", pa.bool_())])


def _members(index: np.ndarray, count: int) -> list[list[int]]:
  """The rows of each of `count` groups, given each row's group."""
  members = [[] for _ in range(count)]
  for i, group in enumerate(index):
    members[group].append(i)
  return members


def _shared(values: list[str]) -> str:
  """The value all views share, else "" (a PatientID-grouped breast spans several studies)."""
  return values[0] if len(set(values)) == 1 else ""


def _any_flag(flags: list) -> bool | None:
  """True if any view is flagged; None when none was tested (no calibration)."""
  tested = [f for f in flags if f is not None]
  return any(tested) if tested else None


def breast_table(scores: pa.Table, names: Sequence[str],
                 calibration: classifier.Calibration) -> pa.Table:
  """One row per breast of the image rows `scores` (in order of first appearance).

  Args:
    scores: `scores.parquet`'s rows (key, path, study_instance_uid,
      declared_laterality, patient_id, view, log_likelihood_<class>; ood if
      the column exists).
    names: the class names.
    calibration: the breast-level temperature and prior (`breast_calibration`).
  """
  column = lambda name: scores.column(name).to_pylist()
  keys = column("key")
  grouping = breast_level.group_views(keys, column("study_instance_uid"),
                                      column("declared_laterality"), column("patient_id"),
                                      column("view"))
  breast_ids, index = grouping.breasts()
  ll = np.stack([np.asarray(column(f"log_likelihood_{n}"), np.float64) for n in names], 1)
  summed = breast_level.fuse(ll, index, len(breast_ids))
  logpost = calibration.apply(summed)
  members = _members(index, len(breast_ids))
  studies, patients, paths = column("study_instance_uid"), column("patient_id"), column("path")
  ood = column("ood") if "ood" in scores.column_names else [None] * len(keys)
  rows = collections.defaultdict(list)
  for b, breast_id in enumerate(breast_ids):
    views = members[b]
    first = views[0]
    rows["breast_id"].append(breast_id)
    rows["exam_id"].append(grouping.exam[first])
    rows["study_instance_uid"].append(_shared([studies[i] for i in views]))
    rows["patient_id"].append(_shared([patients[i] for i in views]))
    rows["laterality"].append(grouping.laterality[first])
    rows["fusion"].append(grouping.fusion[first])
    rows["views"].append(len(views))
    rows["view_keys"].append([keys[i] for i in views])
    rows["view_paths"].append([paths[i] for i in views])
    rows["view_positions"].append([grouping.view[i] for i in views])
    rows["ood"].append(_any_flag([ood[i] for i in views]))
  for c, name in enumerate(names):
    rows[f"log_likelihood_{name}"] = summed[:, c].tolist()
  for c, name in enumerate(names):
    rows[f"probability_{name}"] = np.exp(logpost[:, c]).tolist()
  rows["prediction"] = [names[c] for c in classifier.predict(logpost)]
  rows["temperature"] = [float(calibration.temperature)] * len(breast_ids)
  schema = breast_schema(names)
  return pa.table({name: rows[name] for name in schema.names}, schema=schema)


def exam_table(breasts: pa.Table, names: Sequence[str]) -> pa.Table:
  """One row per exam of `breasts`: its most suspicious breast and that breast's posterior.

  The breast with the largest posterior of `malignant_class(names)` is the
  exam's; its prediction is the exam's (for two classes: malignant if any
  breast is predicted malignant).
  """
  column = lambda name: breasts.column(name).to_pylist()
  positive = f"probability_{malignant_class(names)}"
  exam_ids, index = breast_level.distinct(column("exam_id"))
  probability = np.asarray(column(positive), np.float64)
  studies, patients, views = column("study_instance_uid"), column("patient_id"), column("views")
  breast_ids, sides, predictions = column("breast_id"), column("laterality"), column("prediction")
  ood = column("ood")
  rows = collections.defaultdict(list)
  for exam_id, members in zip(exam_ids, _members(index, len(exam_ids))):
    top = members[int(np.argmax(probability[members]))]
    rows["exam_id"].append(exam_id)
    rows["study_instance_uid"].append(_shared([studies[i] for i in members]))
    rows["patient_id"].append(_shared([patients[i] for i in members]))
    rows["breasts"].append(len(members))
    rows["images"].append(int(sum(views[i] for i in members)))
    rows[f"max_{positive}"].append(float(probability[top]))
    rows["breast_id"].append(breast_ids[top])
    rows["laterality"].append(sides[top])
    rows["prediction"].append(predictions[top])
    rows["ood"].append(_any_flag([ood[i] for i in members]))
  schema = exam_schema(names)
  return pa.table({name: rows[name] for name in schema.names}, schema=schema)


def flat(table: pa.Table) -> pa.Table:
  """`table` with its list columns (a breast's views) joined by ";", as CSV can hold them."""
  for i, field in enumerate(table.schema):
    if pa.types.is_list(field.type):
      table = table.set_column(i, field.name, pc.binary_join(table.column(i), ";"))
  return table
