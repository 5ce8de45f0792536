"""Breast and exam tables, breast-level metrics with bootstrap intervals, and report.html.

The fusion rule is checked on closed-form Gaussian classes: a breast's two
views are two independent draws of its class, so the sum of their exact
log-likelihoods must equal the exact log-likelihood of the two views side by
side under the joint (concatenated) class Gaussians.
"""
from __future__ import annotations

import os
import types

import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pytest

from gaussian_fixtures import GaussianClasses, anisotropic_classes
from report_page import ReportPage
from sgc_jax import breast_level, classifier, model_calibration
from sgc_jax import sde as sde_lib
from sgc_jax.scoring import report, score, tables

NAMES = ("benign", "malignant", "other")
EPS = 1e-5


def _rows(ll, studies, sides, patients=None, views=None, ood=None):
  """Image rows as `scores.parquet` holds them, for log-likelihoods [N, C]."""
  n, c = np.shape(ll)
  names = NAMES[:c]
  rows = []
  for i in range(n):
    row = {"key": f"/archive/{i}.dcm", "path": f"/archive/{i}.dcm",
           "study_instance_uid": studies[i], "declared_laterality": sides[i],
           "laterality": sides[i] or "L", "patient_id": patients[i] if patients else "",
           "view": views[i] if views else "CC", "ood": None if ood is None else ood[i],
           "ood_score_bits_per_dim": float(i)}
    row.update({f"log_likelihood_{name}": float(ll[i, k]) for k, name in enumerate(names)})
    logpost = classifier.log_posteriors(ll[i:i + 1], np.full(c, -np.log(c)))[0]
    row.update({f"probability_{name}": float(np.exp(logpost[k])) for k, name in enumerate(names)})
    row["prediction"] = names[int(np.argmax(logpost))]
    rows.append(row)
  return pa.Table.from_pylist(rows), list(names)


def _uniform(c, temperature=1.0):
  return classifier.Calibration(temperature, np.full(c, -np.log(c)))


def test_summed_view_likelihoods_equal_the_joint_closed_form():
  sde = sde_lib.VPSDE()
  classes = anisotropic_classes(sde, (3, 3, 1))
  # The joint model of two views side by side: the class Gaussians concatenated along width.
  joint = GaussianClasses(sde, jnp.concatenate([classes.means, classes.means], axis=2),
                          jnp.concatenate([classes.stds, classes.stds], axis=1))
  breasts = 5
  # Both views of a breast are independent draws of its class.
  labels = np.repeat(np.arange(breasts) % 3, 2)
  noise = np.random.default_rng(3).normal(size=(2 * breasts, 3, 3, 1))
  images = classes.means[labels] + classes.stds * noise
  ll = np.asarray([[float(classes.exact_log_likelihood(x, c, EPS)) for c in range(3)]
                   for x in images], np.float64)
  studies = [f"1.2.{i // 2}" for i in range(2 * breasts)]
  rows, names = _rows(ll, studies, ["L"] * (2 * breasts), views=["CC", "MLO"] * breasts)
  temperature = 3.0
  fused = tables.breast_table(rows, names, _uniform(3, temperature))
  assert fused.num_rows == breasts
  for b, row in enumerate(fused.to_pylist()):
    pair = jnp.concatenate([images[2 * b], images[2 * b + 1]], axis=1)
    exact = np.asarray([float(joint.exact_log_likelihood(pair, c, EPS)) for c in range(3)])
    got = np.asarray([row[f"log_likelihood_{n}"] for n in names])
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    expected_post = np.exp(classifier.log_posteriors(exact[None], np.full(3, -np.log(3)),
                                                     temperature)[0])
    np.testing.assert_allclose([row[f"probability_{n}"] for n in names], expected_post,
                               rtol=1e-4, atol=1e-9)
    assert row["views"] == 2 and row["view_positions"] == ["CC", "MLO"]
    assert row["fusion"] == breast_level.FUSED and row["temperature"] == temperature


def test_one_row_per_breast_and_exam_and_lone_images_said_so():
  rng = np.random.default_rng(0)
  # Three studies with both breasts, two views each; one view without a side; one without a study.
  studies = [s for s in ("A", "B", "C") for _ in range(4)] + ["B", ""]
  sides = ["L", "L", "R", "R"] * 3 + ["", "R"]
  ll = rng.normal(size=(len(studies), 2)) * 5
  rows, names = _rows(ll, studies, sides, ood=[False] * 13 + [True])
  fused = tables.breast_table(rows, names, _uniform(2))
  exams = tables.exam_table(fused, names)
  assert fused.num_rows == 3 * 2 + 2
  assert exams.num_rows == 3 + 1
  by_fusion = {}
  for row in fused.to_pylist():
    by_fusion.setdefault(row["fusion"], []).append(row)
  assert len(by_fusion[breast_level.FUSED]) == 6
  assert all(r["views"] == 2 for r in by_fusion[breast_level.FUSED])
  (lone,) = by_fusion[breast_level.NO_LATERALITY]
  assert lone["views"] == 1 and lone["exam_id"] == "study:B"
  assert lone["view_keys"] == ["/archive/12.dcm"]
  (alone,) = by_fusion[breast_level.NO_STUDY]
  assert alone["views"] == 1 and alone["ood"] is True
  # An image alone keeps its image-level posterior (same temperature, same prior).
  assert alone["probability_malignant"] == pytest.approx(rows.column(
      "probability_malignant")[13].as_py())
  exam_b = [e for e in exams.to_pylist() if e["exam_id"] == "study:B"][0]
  assert exam_b["breasts"] == 3 and exam_b["images"] == 5
  members = [r for r in fused.to_pylist() if r["exam_id"] == "study:B"]
  top = max(members, key=lambda r: r["probability_malignant"])
  assert exam_b["max_probability_malignant"] == top["probability_malignant"]
  assert exam_b["breast_id"] == top["breast_id"] and exam_b["laterality"] == top["laterality"]
  assert exam_b["ood"] is False and exam_b["prediction"] == top["prediction"]
  # Without calibration no view was tested, and nor is the breast.
  untested, _ = _rows(ll[:2], ["A", "A"], ["L", "L"])
  assert tables.breast_table(untested, names, _uniform(2)).column("ood")[0].as_py() is None


def test_cbis_ddsm_patient_ids_group_views_alone_in_their_studies():
  patients = ["Mass-Test_P_00173_LEFT_CC", "Mass-Test_P_00173_LEFT_MLO",
              "Mass-Test_P_00173_RIGHT_CC", "Calc-Test_P_00173_LEFT_CC", "someone"]
  grouping = breast_level.group_views([f"k{i}" for i in range(5)],
                                      ["u1", "u2", "u3", "u4", "u5"], ["", "L", "", "L", "L"],
                                      patients)
  assert grouping.breast[:3] == ["patient:Mass-Test_P_00173/L"] * 2 + [
      "patient:Mass-Test_P_00173/R"]
  assert grouping.view[:2] == ["CC", "MLO"]
  # Another abnormality's folder of the same woman is another CBIS-DDSM study: not merged.
  assert grouping.exam[3] == "patient:Calc-Test_P_00173"
  assert grouping.fusion[:4] == [breast_level.FUSED_BY_PATIENT_ID] * 4
  assert grouping.breast[4] == "study:u5/L" and grouping.fusion[4] == breast_level.FUSED
  # A study holding several images is grouped by its UID, whatever its PatientID says.
  two = breast_level.group_views(["a", "b"], ["u", "u"], ["L", "L"], patients[:2])
  assert two.breast == ["study:u/L"] * 2


def _binary_data(n, seed):
  """n exams of two breasts with two views; per-view evidence for the breast's label."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(rng.integers(0, 2, 2 * n), 2)
  shift = np.where(labels == 1, 0.6, -0.6)
  ll = np.stack([-0.5 * (rng.normal(size=labels.size) + shift + 0.6) ** 2,
                 -0.5 * (rng.normal(size=labels.size) + shift - 0.6) ** 2], axis=1)
  studies = [f"s{i // 4}" for i in range(labels.size)]
  sides = ["L", "L", "R", "R"] * n
  grouping = breast_level.group_views([str(i) for i in range(labels.size)], studies, sides,
                                      [""] * labels.size)
  return ll, labels, grouping


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_data():
  widths = []
  for n in (25, 400):
    ll, labels, grouping = _binary_data(n, seed=n)
    found = breast_level.level_metrics(ll, labels, grouping, _uniform(2), _uniform(2, 2.0),
                                       replicates=200)
    assert found["breasts"] == 2 * n and found["exams"] == n
    assert found["breasts_with_several_views"] == 2 * n
    for level in ("image", "breast"):
      for name in ("auc", "sensitivity", "specificity"):
        low, high = found[level][f"{name}_ci95"]
        assert low <= found[level][name] <= high
    widths.append(np.diff(found["breast"]["auc_ci95"])[0])
    # Two views carry more evidence than one.
    assert found["breast"]["auc"] > found["image"]["auc"]
  assert widths[1] < widths[0] / 2   # ~ 1/sqrt(16) of it


def test_breast_temperature_is_fitted_stored_and_preferred(tmp_path):
  ll, labels, grouping = _binary_data(100, seed=1)
  fitted = breast_level.fit_calibration(ll * 10, labels, grouping, np.log([0.5, 0.5]))
  image_level = classifier.calibrate(ll * 10, labels, np.log([0.5, 0.5]))
  # Summing two views' over-confident evidence needs more tempering than one view's.
  assert fitted.temperature > image_level.temperature
  workdir = str(tmp_path)
  image_stored = model_calibration.ModelCalibration(
      temperature=image_level.temperature, log_prior=(np.log(0.5),) * 2,
      ood_threshold_bits_per_dim=None, ood_quantile=0.995, ood_images=0, estimator="ode",
      step=4)
  assert tables.breast_calibration(workdir, "ode", None, 2)[0].temperature == 1.0
  chosen, source = tables.breast_calibration(workdir, "ode", image_stored, 2)
  assert chosen.temperature == image_level.temperature and "image-level" in source
  breast_level.save_calibration(workdir, breast_level.BreastCalibration(
      temperature=fitted.temperature, log_prior=tuple(fitted.log_prior), breasts=200,
      images=400, estimator="ode", step=4))
  assert os.path.exists(os.path.join(workdir, "calibration_breast_ode.json"))
  chosen, source = tables.breast_calibration(workdir, "ode", image_stored, 2)
  assert chosen.temperature == pytest.approx(fitted.temperature) and "200" in source
  assert breast_level.load_calibration(workdir, "denoising") is None


def test_report_is_self_contained_and_shows_every_flagged_image(tmp_path):
  rng = np.random.default_rng(0)
  studies = [s for s in ("A", "B", "C") for _ in range(4)]
  ll = rng.normal(size=(12, 2)) * 3
  flagged = [False] * 12
  flagged[3] = flagged[10] = True
  rows, names = _rows(ll, studies, ["L", "L", "R", "R"] * 3, ood=flagged)
  out = str(tmp_path)
  thumbnails = report.Thumbnails(out, max_value=255)
  for i, key in enumerate(rows.column("key").to_pylist()):
    if i != 5:   # one row without a thumbnail (an output made before them) still reports
      thumbnails.write(key, rng.integers(0, 256, (128, 128, 1), np.uint8))
  errors = pa.Table.from_pylist([
      {"key": "/archive/x", "path": "/archive/x", "reason": "NotDicomError",
       "message": "/archive/x: not <DICOM>"}], schema=score.schemas(names)[1])
  breasts = tables.breast_table(rows, names, _uniform(2))
  path = report.write_report(out, {"inputs": 13, "scored": 12, "identity": {"x": 1}}, rows,
                             errors, breasts, names, thumbnails)
  page = ReportPage()
  with open(path, encoding="utf-8") as f:
    text = f.read()
  page.feed(text)
  assert page.sections == ["summary", "failures", "posteriors", "ood-scores", "suspicious",
                           "ood-flagged"]
  assert page.sources and all(s.startswith("data:image/png;base64,") for s in page.sources)
  assert "http" not in text and "<script" not in text
  assert sorted(page.keys["ood-flagged"]) == ["/archive/10.dcm", "/archive/3.dcm"]
  # The most suspicious breasts show every view; 6 breasts, all listed.
  assert len(page.keys["suspicious"]) == 12
  assert "NotDicomError" in text and "not &lt;DICOM&gt;" in text
  # Thumbnails of 128-pixel images are at most 64 pixels a side.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(thumbnails.path("/archive/0.dcm")) as picture:
    assert max(picture.size) == report.THUMBNAIL_PIXELS


def test_the_breast_level_evaluator_fits_stores_and_reports(tmp_path):
  """`sgc-evaluate`'s breast_level on a fake job: records with study and laterality, or none."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sgc_jax.evaluators import breast_level as evaluator  # pylint: disable=g-import-not-at-top

  def part(n, seed):
    ll, labels, grouping = _binary_data(n, seed)
    source = [{"study_id": grouping.exam[i].split(":")[1].encode(),
               "laterality": grouping.laterality[i].encode(), "patient_id": b"",
               "view": np.asarray(b"CC"), "label": labels[i]} for i in range(len(labels))]
    table = {"log_likelihood": ll * 20, "label": labels,
             "success": np.ones((len(labels), 2), bool)}
    return source, table

  eval_source, eval_table = part(40, seed=2)
  val_source, val_table = part(60, seed=3)
  eval_table["success"][0, 1] = False   # a failed solve: left out, its breast has one view
  config = ml_collections.ConfigDict({"eval": {"prior": "uniform", "calibrate": True,
                                               "bootstrap_replicates": 100}, "seed": 0})
  model = types.SimpleNamespace(config=config, num_classes=2, step=7)
  tables_ = types.SimpleNamespace(get=lambda estimator, which="eval": {
      "eval": eval_table, "validation": val_table}[which])
  data = types.SimpleNamespace(eval_source=eval_source, val_source=val_source,
                               train_source=val_source)
  job = types.SimpleNamespace(model=model, tables=tables_, data=data, workdir=str(tmp_path))
  found = evaluator.run(job, "ode")["breast_level"]
  assert found["images"] == 159 and found["breasts"] == 80 and found["exams"] == 40
  assert found["breast_temperature_validation_breasts"] == 120
  stored = breast_level.load_calibration(str(tmp_path), "ode")
  assert stored.breasts == 120 and stored.images == 240 and stored.step == 7
  assert found["breast_temperature"] == pytest.approx(stored.temperature)
  for level in ("image", "breast"):
    assert found[level]["bootstrap_replicates"] == 100
    low, high = found[level]["auc_ci95"]
    assert low <= found[level]["auc"] <= high
  # Records without a study (digits): nothing to fuse, nothing reported.
  data.eval_source = [{"label": 0, "image": np.zeros(1)}] * 160
  assert evaluator.run(job, "ode") == {}
