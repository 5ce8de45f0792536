"""The demo's printed table: every column holds its own classifier's values, row by row."""
from sgc_jax import demo

_KEYS = ("accuracy", "balanced_accuracy", "auc", "f1", "nll", "ece_uncalibrated", "ece")


def _metrics(base: float) -> dict:
  """Distinct values per classifier and per metric, so a swapped column or row shows."""
  metrics = {key: base + 0.01 * i for i, key in enumerate(_KEYS)}
  metrics.update(bits_per_dim=base * 10 + 0.123, mean_nfe=base * 100 + 0.5)
  return metrics


def test_demo_table_puts_each_classifier_in_its_own_column():
  ode, bound, cnn = _metrics(0.1), _metrics(0.4), _metrics(0.7)
  lines = demo.format_table(ode, bound, cnn).splitlines()
  assert len(lines) == 1 + len(_KEYS) + 2
  assert lines[0].split() == ["metric", "generative", "(ODE)", "generative", "(bound)",
                              "discriminative"]
  for line, key in zip(lines[1:], _KEYS):
    values = line.split()[-3:]
    assert values == [f"{ode[key]:.4f}", f"{bound[key]:.4f}", f"{cnn[key]:.4f}"], (key, line)
  bits, passes = lines[-2].split()[-3:], lines[-1].split()[-3:]
  assert lines[-2].startswith("bits/dim") and bits == ["1.123", "4.123", "-"]
  assert lines[-1].startswith("network passes") and passes == ["10.5", "40.5", "-"]
  # Each metric's row, by name: a row printing another metric's value would fail above.
  names = [line[:26].strip() for line in lines[1:1 + len(_KEYS)]]
  assert names == ["accuracy", "balanced accuracy", "AUC (one-vs-rest)", "F1 (macro)",
                   "NLL (calibrated)", "ECE before calibration", "ECE after calibration"]
