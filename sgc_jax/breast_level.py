"""Breast- and exam-level decisions from per-image log-likelihoods: the views of a breast fused.

Mammograms are read per breast (CC + MLO) and per exam, not per image. A
generative classifier has the natural rule for it: the views of one breast are
conditionally independent given the breast's class, so

  log p(views | y) = sum_v log p(x_v | y),

and the breast's posterior is Bayes' rule on that sum with the class prior
counted once and a breast-level temperature T_b (`classifier.log_posteriors`):
summing views sums their over-confidence too, so T_b is fitted on validation
breasts as the image-level T is on validation images. No retraining.

Grouping (`group_views`): a breast is StudyInstanceUID x laterality (the side
the DICOM tags or the dataset's table declare, never one guessed from the
image). CBIS-DDSM gives every image its own StudyInstanceUID and names the
breast in PatientID (`Mass-Test_P_00173_LEFT_CC`), so an image alone in its
study whose PatientID has that form is grouped by the PatientID without its
`_<LEFT|RIGHT>_<CC|MLO>` suffix, plus that side. An image without a study or
a side is its own breast, and its `fusion` says why. An exam is a study (or
that PatientID prefix).

`level_metrics` reports AUC, sensitivity and specificity at image and breast
level with percentile-bootstrap 95 % intervals (2,000 replicates, as the NYU
breast cancer classifier's metarepository reports them), resampling exams:
the views and breasts of one woman are not independent, exams are.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import Sequence

import numpy as np

from sgc_jax import classifier, metrics, run_dir

FUSED = "breast"
FUSED_BY_PATIENT_ID = "breast (grouped by PatientID)"
NO_STUDY = "single image: no study"
NO_LATERALITY = "single image: no laterality"
BOOTSTRAP_REPLICATES = 2000
# The metrics a bootstrap interval is reported for (AUC alone for more than two classes).
_REPORTED = ("auc", "sensitivity", "specificity")
# CBIS-DDSM's PatientID: <abnormality>-<split>_P_<id>_<side>_<view>.
_PATIENT_ID = re.compile(r"^(?P<patient>.+)_(?P<side>LEFT|RIGHT)_(?P<view>CC|MLO)$")


@dataclasses.dataclass(frozen=True)
class Grouping:
  """Which breast and exam every image belongs to, and how its breast was formed."""
  breast: list[str]       # per image: its breast's id
  exam: list[str]         # per image: its exam's id
  laterality: list[str]   # per image: "L" or "R" it was grouped under ("" when alone)
  view: list[str]         # per image: ViewPosition, or the PatientID's view
  fusion: list[str]       # per image: FUSED, FUSED_BY_PATIENT_ID, NO_STUDY, NO_LATERALITY

  def breasts(self) -> tuple[list[str], np.ndarray]:
    """(breast ids, [N] index of each image's breast)."""
    return distinct(self.breast)

  def exams(self) -> tuple[list[str], np.ndarray]:
    """(exam ids, [N] index of each image's exam)."""
    return distinct(self.exam)


def distinct(ids: Sequence) -> tuple[list, np.ndarray]:
  """(distinct ids in order of first appearance, [N] position of each one's id among them)."""
  order = list(dict.fromkeys(ids))
  position = {name: i for i, name in enumerate(order)}
  return order, np.asarray([position[name] for name in ids], np.int64)


def _side(text: str) -> str:
  text = (text or "").strip().upper()
  return {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}.get(text, "")


def group_views(keys: Sequence[str], studies: Sequence[str], lateralities: Sequence[str],
                patient_ids: Sequence[str], views: Sequence[str] | None = None) -> Grouping:
  """Groups images into breasts and exams (see the module docstring for the rule).

  Args:
    keys: a unique name per image (the path key, a record id): an image alone
      is its own breast and, without a study, its own exam.
    studies: StudyInstanceUID per image ("" when absent).
    lateralities: the declared side per image ("L"/"R"/"LEFT"/"RIGHT"; "" when absent).
    patient_ids: PatientID per image ("" when absent).
    views: ViewPosition per image (default all "").
  """
  views = list(views) if views is not None else [""] * len(keys)
  images_in_study = collections.Counter(s for s in studies if s)
  out = Grouping([], [], [], [], [])
  for key, study, side, patient, view in zip(keys, studies, lateralities, patient_ids, views):
    side = _side(side)
    match = _PATIENT_ID.match(patient or "")
    if match and images_in_study[study] <= 1:
      exam, side, fusion = f"patient:{match['patient']}", match["side"][0], FUSED_BY_PATIENT_ID
      view = view or match["view"]
    elif not study:
      exam, side, fusion = f"image:{key}", "", NO_STUDY
    else:
      exam, fusion = f"study:{study}", FUSED if side else NO_LATERALITY
    out.breast.append(f"{exam}/{side}" if side else f"image:{key}")
    out.exam.append(exam)
    out.laterality.append(side)
    out.view.append(view)
    out.fusion.append(fusion)
  return out


def fuse(log_likelihoods, index: np.ndarray, count: int) -> np.ndarray:
  """[count, C] summed log p(x_v | y) over the images of each group (`index`: [N] group)."""
  ll = np.asarray(log_likelihoods, np.float64)
  summed = np.zeros((count, ll.shape[1]))
  np.add.at(summed, index, ll)
  return summed


def group_labels(labels, index: np.ndarray, count: int) -> np.ndarray:
  """[count] label of each group: the largest of its images' (malignant if any view is)."""
  out = np.full(count, -1, np.int64)
  np.maximum.at(out, index, np.asarray(labels, np.int64))
  return out


def fit_calibration(log_likelihoods, labels, grouping: Grouping,
                    log_prior) -> classifier.Calibration:
  """The breast-level temperature, fitted on validation breasts' summed log-likelihoods."""
  names, index = grouping.breasts()
  return classifier.calibrate(fuse(log_likelihoods, index, len(names)),
                              group_labels(labels, index, len(names)), log_prior)


def bootstrap_metrics(labels, log_posteriors, *, clusters=None,
                      replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0) -> dict:
  """AUC, sensitivity and specificity (`metrics.discrimination_metrics`) with bootstrap 95 % CIs.

  Args:
    labels: [N] integer labels.
    log_posteriors: [N, C] calibrated log p(y | .); the decision is its argmax.
    clusters: [N] resampling unit of each row (default: every row its own);
      whole clusters are drawn with replacement.
    replicates: bootstrap replicates; the interval is their 2.5th and 97.5th
      percentiles, over the replicates where the metric is defined (a replicate
      without positives has no AUC).
    seed: of the resampling.

  Returns:
    {name: point estimate, f"{name}_ci95": [low, high]} for each metric, and
    "bootstrap_replicates".
  """
  labels = np.asarray(labels, np.int64)
  lp = np.asarray(log_posteriors, np.float64)
  num_classes = lp.shape[1]

  def measure(rows):
    found = metrics.discrimination_metrics(labels[rows], lp[rows])
    return [found[name] for name in _REPORTED if name in found]

  names = [n for n in _REPORTED if num_classes == 2 or n == "auc"]
  point = measure(np.arange(len(labels)))
  _, unit = distinct(range(len(labels)) if clusters is None else list(clusters))
  members = [np.flatnonzero(unit == u) for u in range(unit.max() + 1)]
  rng = np.random.default_rng(seed)
  draws = np.asarray([measure(np.concatenate([members[u] for u in
                                              rng.integers(0, len(members), len(members))]))
                      for _ in range(replicates)])
  result = {}
  for j, name in enumerate(names):
    valid = draws[:, j][np.isfinite(draws[:, j])]
    result[name] = point[j]
    result[f"{name}_ci95"] = ([float(v) for v in np.percentile(valid, [2.5, 97.5])]
                              if len(valid) else [float("nan")] * 2)
  result["bootstrap_replicates"] = replicates
  return result


def level_metrics(log_likelihoods, labels, grouping: Grouping,
                  image_calibration: classifier.Calibration,
                  breast_calibration: classifier.Calibration, *,
                  replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0) -> dict:
  """Image- and breast-level AUC, sensitivity and specificity with bootstrap 95 % CIs.

  Args:
    log_likelihoods: [N, C] per-image log p(x | y).
    labels: [N] per-image labels (a breast's label is the largest of its views').
    grouping: `group_views` of the N images.
    image_calibration, breast_calibration: temperature and prior of each level.
    replicates, seed: of the bootstrap, which resamples exams at both levels.

  Returns:
    {"image": metrics, "breast": metrics, "images", "breasts", "exams",
     "breasts_with_several_views", "breast_temperature"}.
  """
  ll = np.asarray(log_likelihoods, np.float64)
  labels = np.asarray(labels, np.int64)
  breast_names, breast = grouping.breasts()
  exam_names, exam = grouping.exams()
  breast_exam = np.zeros(len(breast_names), np.int64)
  breast_exam[breast] = exam
  summed = fuse(ll, breast, len(breast_names))
  views = np.bincount(breast, minlength=len(breast_names))
  return {
      "image": bootstrap_metrics(labels, image_calibration.apply(ll), clusters=exam,
                                 replicates=replicates, seed=seed),
      "breast": bootstrap_metrics(group_labels(labels, breast, len(breast_names)),
                                  breast_calibration.apply(summed), clusters=breast_exam,
                                  replicates=replicates, seed=seed),
      "images": int(len(labels)),
      "breasts": len(breast_names),
      "exams": len(exam_names),
      "breasts_with_several_views": int((views > 1).sum()),
      "breast_temperature": float(breast_calibration.temperature),
  }


# --- the stored breast-level calibration ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BreastCalibration:
  """The breast-level temperature `sgc-evaluate` fitted, and the prior it was fitted with."""
  temperature: float
  log_prior: tuple[float, ...]
  breasts: int            # validation breasts it was fitted on
  images: int             # their views
  estimator: str
  step: int | None        # the checkpoint step

  def calibration(self) -> classifier.Calibration:
    """As a `classifier.Calibration`."""
    return classifier.Calibration(temperature=self.temperature,
                                  log_prior=np.asarray(self.log_prior, np.float64))


def calibration_path(workdir: str, estimator: str) -> str:
  """`WORKDIR/calibration_breast_<estimator>.json` (beside the image-level calibration)."""
  return os.path.join(workdir, f"calibration_breast_{estimator}.json")


def save_calibration(workdir: str, value: BreastCalibration) -> str:
  """Writes the breast-level calibration atomically; returns its path."""
  target = calibration_path(workdir, value.estimator)
  run_dir.write_text_atomically(target, json.dumps(dataclasses.asdict(value), indent=2))
  return target


def load_calibration(workdir: str, estimator: str) -> BreastCalibration | None:
  """The stored breast-level calibration, or None when `sgc-evaluate` fitted none."""
  return run_dir.read_record(calibration_path(workdir, estimator), BreastCalibration,
                             "sgc-evaluate")
