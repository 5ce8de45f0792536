"""Tiny configs on the real digits records, for fast end-to-end tests."""
from configs import digits


def tiny_config(data_dir: str, *, model: str = "mlp", steps: int = 20):
  config = digits.get_config()
  config.data.data_dir = data_dir
  config.model.name = model
  config.model.mlp.hidden = 32
  config.model.mlp.depth = 1
  config.model.unet.channels = (8, 16)
  # A 20-step network classifies at chance; the class-Gaussian skip makes the
  # tiny end-to-end runs classify well above it, so label misalignments show.
  # (tests/test_recipe.py trains the plain network of the digits recipe.)
  config.model.class_gaussian = "full"
  config.training.batch_size = 16
  config.training.num_steps = steps
  config.training.warmup_steps = 0
  config.training.log_every = 5
  config.training.checkpoint_every = 10
  config.eval.batch_size = 8
  config.eval.max_examples = 8
  # The end-to-end tests exercise the adaptive Diffrax path; the exponential
  # integrator has its own tests.
  config.eval.solver, config.eval.adaptive, config.eval.grid = "tsit5", True, "quadratic"
  config.eval.resample_probes = False    # one set of probes per adaptive solve
  config.eval.rtol = config.eval.atol = 1e-2
  config.eval.divergence = "hutchinson"
  config.eval.num_probes = 1
  config.eval.num_samples = 1
  config.baseline.num_steps = 150
  config.baseline.learning_rate = 3e-3
  config.baseline.width = 16
  config.baseline.batch_size = 16
  return config


def tiny_sample_quality_config(config, *, per_class: int):
  """`config` evaluating 4 test images plus a one-step-per-class Euler-Maruyama sample grid."""
  config = config.copy_and_resolve_references()
  config.eval.evaluators = ("class_likelihood", "sample_quality")
  config.eval.calibrate, config.eval.max_examples = False, 4
  config.eval.num_samples, config.eval.sampler_steps = 1, 4
  config.eval.sample_quality_samplers = ("euler_maruyama",)
  config.eval.sample_quality_per_class = per_class
  return config


def tiny_bound_config(config):
  """`config` scoring by a 4-sample denoising bound (eval fields only: the same trained run)."""
  config = config.copy_and_resolve_references()
  config.eval.estimator, config.eval.num_time_samples = "denoising", 4
  return config


def tiny_split_config(data_dir: str):
  """conftest's `trained_tiny_digits` run (20 steps) evaluated on 11 test images (an odd
  count: 2 processes get 6 and 5)."""
  config = tiny_config(data_dir, steps=20)
  config.eval.max_examples = 11
  config.eval.num_samples = 0             # samples are not what these tests are about
  return config
