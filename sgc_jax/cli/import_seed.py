"""sgc-import-seed: the seed's trained PyTorch weights as a checkpoint of this project.

    sgc-import-seed --checkpoint model.pth --config configs/cbis_ddsm.py --workdir /runs/seed
    sgc-evaluate --config configs/cbis_ddsm.py --workdir /runs/seed

Reads the state_dict of the seed's `UNetScoreModel_conditional` (any widths, 1
or 3 input channels, any class count; `module.` prefixes of nn.DataParallel
are stripped) and writes a step-0 checkpoint that sgc-evaluate and
`sgc_jax.load` use as if it had been trained here. Needs PyTorch to read the
file (`pip install 'sgc_jax[torch]'`).
"""
import json

from absl import flags, logging
from ml_collections import config_flags

from sgc_jax import seed_import
from sgc_jax.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "The seed's saved state_dict (.pth).")
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file whose "
                                "model matches the checkpoint's.", lock_config=True)
flags.DEFINE_string("workdir", None, "Empty directory to write the checkpoint into.")
flags.mark_flags_as_required(["checkpoint", "config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  state_dict = seed_import.load_state_dict(FLAGS.checkpoint)
  print(json.dumps(seed_import.import_seed(state_dict, FLAGS.config, FLAGS.workdir), indent=2))


def run():
  common.run(main)


if __name__ == "__main__":
  run()
