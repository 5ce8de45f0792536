"""The digits recipe: the plain score network's own exact likelihood classifies.

A regression in the training recipe (loss weighting, t-sampling, the network)
or in the engine shows here as accuracy falling towards chance (0.1).
"""
import pytest

from configs import digits
from sgc_jax import evaluation, train_state, trainer


@pytest.fixture(scope="module")
def recipe_config(digits_data_dir):
  config = digits.get_config()
  config.data.data_dir = digits_data_dir
  assert config.model.class_gaussian == "none"  # the recipe's network carries the decisions
  config.model.mlp.hidden = 128
  config.model.mlp.depth = 2
  config.training.num_steps = 800
  config.training.warmup_steps = 50
  # An EMA of 0.999 over 800 steps still weighs the initial weights heavily.
  config.training.ema_decay = 0.0
  config.training.checkpoint_every = 800
  config.eval.max_examples = 60
  config.eval.rtol = config.eval.atol = 1e-3
  config.eval.calibrate = False
  config.eval.num_samples = 0
  return config


def test_short_plain_network_run_classifies_by_its_exact_likelihood(recipe_config, tmp_path):
  state, model = trainer.train(recipe_config, str(tmp_path))
  report = evaluation.evaluate(recipe_config, str(tmp_path),
                               variables=train_state.inference_variables(state),
                               model=model)["ode"]
  assert report["images"] == 60 and report["failed_images"] == 0
  assert report["accuracy"] >= 0.6, report
  # The flow diagnostics come with every ODE evaluation.
  assert report["flow_diagnostics"]["images"] == 60
