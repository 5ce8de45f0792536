"""Test-wide settings and fixtures.

4 forced CPU devices (so every sharded path is exercised); one XLA compilation
cache for the session and the processes it launches (tests compile the same
tiny programs many times: a trainer step, a class scorer; set
JAX_COMPILATION_CACHE_DIR yourself to keep it between runs); one digits records
directory and one tiny trained digits model per session; and the `slow` tier:
`pytest -m "not slow"` runs the fast tests only (see `_SLOW` below).
"""
import atexit
import os
import shutil
import tempfile

# Must be set before JAX initialises its backends. XLA:CPU aborts the process when a device
# thread misses a collective for 40 s, which 4 devices on 2 loaded cores can (seen here on a
# training step): the longer timeouts keep a slow machine slow rather than dead.
# Single-threaded Eigen ops: XLA:CPU's multi-threaded Eigen pool can wedge for good (every
# thread idle; PyAutoFit issue 1528, cured there by this flag). The suite runs in one process:
# under two pytest-xdist workers a 4-device training step wedged in its gradient all-reduce
# even with this flag (two device threads waiting at the rendezvous for two that never came;
# README, Tests).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4"
                      " --xla_cpu_collective_call_terminate_timeout_seconds=1200"
                      " --xla_cpu_collective_timeout_seconds=1200"
                      " --xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="sgc_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  # In the environment, so that the worker processes tests launch share it.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # pylint: disable=wrong-import-position


# The slow tier: tests that train or launch processes, and those measured at 4 s or more
# on the 2-core development machine (`--durations=60`; 3 s on its slower host, below).
# Module names mark every test of the module; "module.py::test_name" marks that test
# (every parametrization).
_SLOW_MODULES = {"test_multiprocess.py", "test_scoring.py", "test_recipe.py", "test_trainer.py",
                 "test_device_check.py", "test_builders.py", "test_precise_bn.py",
                 "test_scoring_tables.py"}
_SLOW_TESTS = {
    "test_likelihood.py::" + name for name in (
        "test_vectorised_pass_equals_a_loop_over_classes",
        "test_seed_unet_divergence_in_forward_mode_equals_the_jacobian_trace",
        "test_max_steps_failure_marks_only_its_own_image",
        "test_fixed_step_grid_dense_near_eps_is_accurate",
        "test_more_probes_average_out_the_hutchinson_error",
        "test_fresh_probes_per_step_average_out_along_the_path_and_stay_batch_independent",
        "test_float64_path_matches_closed_form_tightly", "test_no_retracing_on_second_call",
        "test_per_image_probes_are_batch_independent_and_differ_between_images",
        "test_image_result_is_independent_of_its_batch",
        "test_rademacher_is_exact_for_diagonal_jacobians",
        "test_hutchinson_is_unbiased_within_its_statistical_error")
} | {
    "test_solver_bench.py::test_grid_rows_and_reference_against_itself",
    "test_solver_bench.py::test_one_euler_step_is_off_the_pareto_front",
    "test_sampling.py::test_a_sample_alone_equals_the_same_sample_in_a_batch",
    "test_sampling.py::test_samples_have_the_class_mean_and_std",
    "test_sampling.py::test_a_sample_does_not_depend_on_its_batch_mates",
    "test_sampling.py::test_network_evaluations_follow_the_solver",
    "test_sampling.py::test_predictor_corrector_has_the_class_mean_and_std",
    "test_models.py::test_init_variables_and_score_fn",
    "test_scoring_decode.py::test_the_rle_decoders_panic_on_a_real_mammogram_is_its_row",
    "test_exponential_integrator.py::test_engine_option_matches_closed_form_and_is_batch_independent",
    "test_exponential_integrator.py::test_error_falls_at_the_solvers_order",
    "test_models.py::test_bf16_close_to_float32",
    "test_models.py::test_ddpmpp_dropout_only_in_training",
    "test_seed_import.py::test_score_equals_the_seed_network_at_384",
    "test_seed_import.py::test_score_equals_the_seed_network_at_64",
    "test_seed_import.py::test_imported_checkpoint_restores_as_if_trained_here",
    "test_sample_quality.py::test_baseline_classifier_round_trip_and_mismatch",
    "test_sample_quality.py::test_samples_of_well_separated_classes_are_recognised",
    "test_scoring_decode.py::test_every_failure_is_the_files_typed_error_and_the_run_goes_on",
    "test_reference_likelihood.py::test_seed_path_agrees_with_the_engine",
    "test_unet_layers.py::test_max_pool_equals_flax",
    "test_evaluation.py::test_evaluate_cli_without_checkpoint_names_the_workdir",
    # Measured at 3 s or more on the slower host of 2026-12-02 (`-m "not slow" --durations=0`),
    # where the fast tier took 3 min 15 s with them.
    "test_sampling.py::test_samples_converge_path_by_path_as_steps_are_added",
    "test_sampling.py::test_ode_is_the_deterministic_gaussian_transport_of_the_prior_draw",
    "test_flow_diagnostics.py::test_exact_scores_give_slope_one_and_full_agreement",
    "test_likelihood.py::test_exact_divergence_matches_closed_form",
    "test_likelihood.py::test_gaussian_probes_are_exact_on_unit_gaussian_scores",
    "test_losses.py::test_second_order_term_has_the_closed_form_gradient",
    "test_class_gaussian.py::test_gaussian_alone_gives_the_class_gaussian_likelihood",
    "test_class_gaussian.py::test_skip_adds_the_exact_marginal_score",
    "test_models.py::test_label_and_time_change_the_output",
    "test_reference_likelihood.py::test_engine_matches_a_hand_written_euler_integration",
    "test_unet_layers.py::test_max_pool_forward_mode_equals_flax_and_transposes_to_its_gradient",
    "test_estimators.py::test_exact_score_recovers_the_log_density",
}
# Fixtures that train a model or build records: a test using one is slow.
_SLOW_FIXTURES = {"trained_tiny_digits", "digits_data_dir"}


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    module = os.path.basename(str(item.fspath))
    name = f"{module}::{item.originalname}"
    if (module in _SLOW_MODULES or name in _SLOW_TESTS
        or _SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
  """The digits records (8x8 and 16x16), built once per session; read only."""
  from sgc_jax.data import records  # pylint: disable=import-outside-toplevel
  from sgc_jax.data.builders import digits  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name in (None, "16x16"):
    records.prepare(digits.Digits, data_dir, config=name)
  return data_dir


@pytest.fixture(scope="session")
def trained_tiny_digits(tmp_path_factory, digits_data_dir):
  """(config, workdir, state, model): the tiny digits MLP, trained once for the whole session.

  Tests that write into a workdir copy it first (see test_api.py), so that no
  test depends on which others ran before it.
  """
  from sgc_jax import trainer  # pylint: disable=import-outside-toplevel
  from tiny import tiny_config  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(digits_data_dir, steps=20)
  state, model = trainer.train(config, workdir)
  return config, workdir, state, model


@pytest.fixture(scope="session")
def recipe_levers():
  """The module tools/recipe_levers.py (variant definitions and their results rows' checks)."""
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "tools"))
  import recipe_levers as module  # pylint: disable=import-outside-toplevel
  return module
