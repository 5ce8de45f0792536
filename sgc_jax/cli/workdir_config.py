"""The config a run saved, as an ml_collections config file: `--config=THIS_FILE:WORKDIR`.

`sgc-score --workdir W --config.eval.estimator=denoising` needs no config file:
`common.config_from_workdir` points `--config` here, so the overrides apply to
W/config.json as trained (and the loader still refuses any change outside `eval`).
"""
from sgc_jax import run_dir


def get_config(workdir: str):
  return run_dir.read_config(workdir)
