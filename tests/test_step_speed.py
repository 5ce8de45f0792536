"""tools/step_speed.py refuses a run too short to measure before it trains anything."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))
import step_speed  # pylint: disable=wrong-import-position


def test_too_few_steps_are_refused_before_training(monkeypatch):
  monkeypatch.setattr(step_speed.trainer, "train", lambda *a, **k: pytest.fail("trained"))
  with pytest.raises(ValueError, match=r"--steps: 150 steps log fewer than 2 times"):
    step_speed.steps_per_second("ema_cosine_28k_range11", 150)
