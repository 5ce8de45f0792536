"""What every console script shares: `run(main)` with a `--help` that lists its flags."""
import sys

from absl import app, flags


def run(main) -> None:
  """Runs an absl `main` whose flags are defined in `main`'s module.

  absl's `--help` lists the flags of the module named by `sys.argv[0]`; a
  console script's argv[0] is the installed wrapper (`.../bin/sgc-train`), which
  defines none, so `--help` printed only "Try --helpfull". Registering the
  module's flags as key flags of argv[0] makes `--help` list them.
  """
  for flag in flags.FLAGS.get_key_flags_for_module(main.__module__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)
