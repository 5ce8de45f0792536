"""`sgc_jax.load`: a trained workdir restored from its saved config scores like `sgc-evaluate`."""
import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest

import sgc_jax
from sgc_jax import evaluation, model_calibration, run_dir
from sgc_jax.data import reader, records


@pytest.fixture(scope="module")
def trained(trained_tiny_digits, tmp_path_factory):
  """A copy of the session's tiny run (checkpoints and config only), evaluated on 4 images."""
  config, source, _, _ = trained_tiny_digits
  workdir = str(tmp_path_factory.mktemp("run") / "copy")
  shutil.copytree(source, workdir, ignore=shutil.ignore_patterns("eval_*", "calibration_*"))
  config = config.copy_and_resolve_references()
  config.eval.num_samples = 0
  config.eval.calibrate = False
  config.eval.max_examples = config.eval.batch_size = 4
  return config, workdir


@pytest.fixture(scope="module")
def loaded(trained):
  return sgc_jax.load(trained[1])               # config read back from config.json


def test_trainer_saves_the_config_it_ran_with(trained):
  config, workdir = trained
  saved = run_dir.read_config(workdir)
  assert saved.model.mlp.hidden == config.model.mlp.hidden == 32
  assert saved.training.num_steps == 20
  assert saved.data.num_classes == 10          # the validated config, dataset facts included
  assert tuple(saved.data.range) == tuple(config.data.range)


def test_load_gives_the_evaluation_tables_log_likelihoods(trained, loaded):
  config, workdir = trained
  evaluation.evaluate(config, workdir)
  with open(os.path.join(workdir, "eval_test", "predictions.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  expected = np.asarray([[float(r[f"log_likelihood_{c}"]) for c in range(10)] for r in rows])
  # What sgc-score applies; uncalibrated here (eval.calibrate off): T = 1, no OOD threshold.
  stored = model_calibration.load(workdir, "ode")
  assert (stored.temperature, stored.ood_threshold_bits_per_dim, stored.step) == (1.0, None, 20)
  np.testing.assert_allclose(np.exp(stored.log_prior), 0.1)

  assert loaded.step == 20 and loaded.num_classes == 10
  source = records.data_source(reader.load_builder(loaded.config.data), "test")
  images = np.stack([source[i]["image"] for i in range(len(rows))])
  ids = np.asarray([source[i]["id"] for i in range(len(rows))])
  assert [int(r["id"]) for r in rows] == ids.tolist()
  result = loaded.log_likelihoods(images, ids=ids)
  assert result.log_likelihood.shape == (4, 10) and result.success.all()
  # predictions.csv rounds to 4 decimals.
  np.testing.assert_allclose(result.log_likelihood, expected, atol=6e-5, rtol=0)
  # The image ids key dequantization and probes: other ids give other numbers.
  other = loaded.log_likelihoods(images, ids=ids + 1000)
  assert not np.allclose(other.log_likelihood, expected, atol=1e-3)


def test_load_scores_the_configured_number_of_dequantizations(trained, loaded):
  """eval.num_dequantizations = 2: the first draw's numbers averaged with a second draw's."""
  config, workdir = trained
  source = records.data_source(reader.load_builder(loaded.config.data), "test")
  images = np.stack([source[i]["image"] for i in range(4)])
  one = loaded.log_likelihoods(images)
  config = config.copy_and_resolve_references()
  config.eval.num_dequantizations = 2
  two = sgc_jax.load(workdir, config).log_likelihoods(images)
  second = 2 * two.log_likelihood - one.log_likelihood     # the second draw alone
  assert np.isfinite(second).all() and two.success.all()
  assert not np.allclose(second, one.log_likelihood, atol=1e-3)
  # Per image the draws agree up to the dequantization and probe noise of a tiny model.
  assert np.abs(second - one.log_likelihood).max() < 0.05 * np.abs(one.log_likelihood).max()
  assert (two.num_function_evals > one.num_function_evals).all()


def test_a_second_load_of_the_same_run_reuses_the_compiled_scorer(trained, loaded):
  """Two loads of one run share one compiled class scorer: the second is not traced again."""
  from sgc_jax import scorer  # pylint: disable=import-outside-toplevel
  _, workdir = trained
  again = sgc_jax.load(workdir)
  assert again.score_fn is not loaded.score_fn
  source = records.data_source(reader.load_builder(loaded.config.data), "test")
  images = np.stack([source[i]["image"] for i in range(4)])
  ids = np.asarray([source[i]["id"] for i in range(4)])
  jitted = scorer.compiled_scorer(loaded.config, loaded.sde, loaded.num_classes, loaded.mesh)
  first = loaded.log_likelihoods(images, ids=ids).log_likelihood
  compiled = jitted._cache_size()  # pylint: disable=protected-access
  assert compiled >= 1
  second = again.log_likelihoods(images, ids=ids).log_likelihood
  np.testing.assert_array_equal(first, second)
  assert jitted._cache_size() == compiled  # pylint: disable=protected-access


def test_load_score_fn_and_errors(loaded, tmp_path):
  x = np.zeros((2, 8, 8, 1), np.float32)
  score = loaded.score_fn(x, np.full((2,), 0.5, np.float32), np.array([0, 1], np.int32))
  assert score.shape == (2, 8, 8, 1) and np.isfinite(np.asarray(score)).all()
  with pytest.raises(ValueError, match=r"images: expected integer records \[B, 8, 8, 1\]"):
    loaded.log_likelihoods(np.zeros((2, 9, 9, 1), np.uint8))
  with pytest.raises(FileNotFoundError, match="no config.json in"):
    sgc_jax.load(str(tmp_path))


def test_the_run_directory_describes_the_model_without_its_records(trained, loaded):
  spec = run_dir.read_model_spec(trained[1])
  assert spec == loaded.spec
  assert (spec.dataset, spec.builder_config, spec.image_shape, spec.image_dtype) == (
      "digits", "8x8", (8, 8, 1), "uint8")
  assert spec.class_names == tuple(str(c) for c in range(10)) and spec.bit_depth == 8
  assert spec.preprocess_options() is None and spec.allowed_modalities is None


def _test_images(config, n=4):
  source = records.data_source(reader.load_builder(config.data), "test")
  return (np.stack([source[i]["image"] for i in range(n)]),
          np.asarray([source[i]["id"] for i in range(n)]))


def test_a_copied_workdir_scores_on_a_machine_without_the_records(trained, loaded, tmp_path,
                                                                  monkeypatch):
  config, workdir = trained
  images, ids = _test_images(config)
  expected = loaded.log_likelihoods(images, ids=ids).log_likelihood
  copy, empty = str(tmp_path / "copy"), tmp_path / "no_records"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("eval_*"))
  empty.mkdir()
  # The copy's config names a data dir that holds nothing, as on the scoring machine.
  saved = run_dir.read_config(copy)
  saved.data.data_dir = str(empty)
  run_dir.write_config(saved, copy)
  monkeypatch.setenv("SGC_DATA_DIR", str(empty))
  moved = sgc_jax.load(copy)
  result = moved.log_likelihoods(images, ids=ids)
  np.testing.assert_array_equal(result.log_likelihood, expected)
  assert moved.identity == loaded.identity and moved.num_classes == 10
  assert os.listdir(empty) == []               # no records were looked for, or built


def test_a_run_saved_before_model_specs_reads_its_records(trained, loaded, tmp_path):
  copy = str(tmp_path / "old")
  shutil.copytree(trained[1], copy, ignore=shutil.ignore_patterns("eval_*", run_dir.SPEC_FILE))
  assert sgc_jax.load(copy).spec == loaded.spec


def test_a_run_saved_before_later_options_reads_as_what_it_trained(trained, loaded, tmp_path):
  config, workdir = trained
  copy = str(tmp_path / "before_options")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("eval_*"))
  with open(os.path.join(copy, run_dir.CONFIG_FILE), encoding="utf-8") as f:
    saved = json.load(f)
  del saved["data"]["random_shift"], saved["model"]["unet"]["dropout"], saved["model"]["unet"]["norm"]
  del saved["eval"]["num_dequantizations"]
  with open(os.path.join(copy, run_dir.CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(saved, f)
  restored = run_dir.read_config(copy)
  assert tuple(restored.data.random_shift) == (0, 1) and restored.model.unet.dropout == 0.0
  assert restored.model.unet.norm == "batch" and restored.eval.num_dequantizations == 1
  # Today's config is the same run, so it loads with it.
  assert sgc_jax.load(copy, config).identity.variables_hash == loaded.identity.variables_hash


def test_load_refuses_a_config_of_another_model_naming_the_field(trained, loaded):
  config, workdir = trained
  other = config.copy_and_resolve_references()
  other.model.mlp.hidden = 64
  with pytest.raises(ValueError, match=r"--config: model\.mlp\.hidden is 64, the model in .* "
                                       r"was trained with 32"):
    sgc_jax.load(workdir, other)
  other = config.copy_and_resolve_references()
  other.data.builder_config = "16x16"
  with pytest.raises(ValueError, match=r"data\.builder_config is '16x16'.*trained with ''"):
    sgc_jax.load(workdir, other)
  # The eval block, and where this machine keeps its records, may differ.
  other = config.copy_and_resolve_references()
  other.eval.estimator, other.data.data_dir = "denoising", "/elsewhere"
  assert sgc_jax.load(workdir, other).config.eval.estimator == "denoising"


def test_checkpoint_identity(trained, loaded):
  identity = loaded.identity
  assert identity.step == 20 and identity.config_hash == run_dir.config_hash(loaded.config)
  zeroed = jax.tree.map(np.zeros_like, jax.device_get(loaded.variables))
  assert run_dir.variables_hash(zeroed) != identity.variables_hash
  assert run_dir.variables_hash(jax.device_get(loaded.variables)) == identity.variables_hash
