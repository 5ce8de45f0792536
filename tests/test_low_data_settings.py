"""tools/low_data.py refuses to add cells made with other settings to a results file."""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import low_data  # pylint: disable=wrong-import-position


def _args(**changes):
  args = dict(model="mlp", min_steps=1000, num_probes=4, baseline_steps=1500, max_examples=0,
              weight_decay=None)
  return argparse.Namespace(**{**args, **changes})


def test_cells_of_another_recipe_are_never_extended_by_this_one():
  with open(os.path.join(ROOT, "tools", "results", "low_data_seeds.json"), encoding="utf-8") as f:
    study = json.load(f)
  stored = study["mlp"]["settings"]
  assert "weight_decay" not in stored        # written before the option existed
  assert stored["network"]["mlp"] == {"hidden": 256, "depth": 3}
  # configs/digits.py now trains 4 blocks with weight decay 0.2 for 12,000 steps: those cells
  # are not its cells, and a rerun into their file is refused naming all three.
  assert low_data.differing_settings(stored, _args()) == ["network", "recipe", "weight_decay"]
  assert low_data.differing_settings(stored, _args(weight_decay=0.0)) == ["network", "recipe"]
  assert low_data.differing_settings(stored, _args(weight_decay=0.0, num_probes=1)) == [
      "network", "num_probes", "recipe"]
  # The U-Net's cells were made with the network and recipe configs/digits_unet.py still trains.
  assert low_data.differing_settings(study["unet"]["settings"],
                                     _args(model="unet", num_probes=1, weight_decay=0.0)) == []
  # ... which trained without dropout: a config that now adds it is another network.
  with_dropout = low_data.network_of("unet")
  with_dropout["unet"]["dropout"] = 0.1
  dropout_cells = dict(study["unet"]["settings"], network=with_dropout)
  assert low_data.differing_settings(dropout_cells, _args(model="unet", num_probes=1,
                                                          weight_decay=0.0)) == ["network"]
  # ... and with BatchNorm (written before model.unet.norm existed): GroupNorm is another one.
  assert "norm" not in study["unet"]["settings"]["network"]["unet"]
  with_group_norm = low_data.network_of("unet")
  with_group_norm["unet"]["norm"] = "group"
  assert low_data.differing_settings(dict(study["unet"]["settings"], network=with_group_norm),
                                     _args(model="unet", num_probes=1,
                                           weight_decay=0.0)) == ["network"]
  # The 4-block cells of 6,000 steps differ from the config's by the recipe's length alone,
  # and the file the README's final table quotes holds the config's own cells.
  assert low_data.differing_settings(_study("low_data_seeds_wd02_depth4.json"), _args()) == [
      "recipe"]
  assert low_data.differing_settings(_study("low_data_seeds_wd02_depth4_12k.json"),
                                     _args()) == []


def _study(name):
  with open(os.path.join(ROOT, "tools", "results", name), encoding="utf-8") as f:
    return json.load(f)["mlp"]["settings"]


def test_the_cell_config_trains_with_the_weight_decay_the_settings_record(digits_data_dir,
                                                                            monkeypatch):
  monkeypatch.setenv("SGC_DATA_DIR", digits_data_dir)
  for wanted in (None, 0.0):
    args = _args(weight_decay=wanted)
    recorded = low_data.settings_of(args)["weight_decay"]
    config, _ = low_data.cell_config(args, "per_class_5", seed=0)
    assert config.training.weight_decay == recorded == (0.2 if wanted is None else 0.0)
