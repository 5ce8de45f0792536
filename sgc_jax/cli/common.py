"""What every console script shares: `run(main)` with a `--help` that lists its flags."""
import os
import sys

from absl import app, flags

WORKDIR_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workdir_config.py")


def config_from_workdir(argv: list[str]) -> list[str]:
  """`argv` with `--config=WORKDIR_CONFIG:WORKDIR` added when it overrides `--config.*` fields
  without naming a config file, so the overrides apply to WORKDIR/config.json as trained.

  ml_collections defines the `--config.FIELD` flags only once `--config` is
  given; without this, `sgc-score --workdir W --config.eval.estimator=denoising`
  failed with "Unknown command line flag 'config.eval.estimator'".
  """
  args = argv[1:]
  if "--" in args:
    args = args[:args.index("--")]
  names_config = any(a in ("--config", "-config") or a.startswith(("--config=", "-config="))
                     for a in args)
  overrides = any(a.startswith(("--config.", "-config.")) for a in args)
  if names_config or not overrides:
    return list(argv)
  workdir = None
  for i, a in enumerate(args):
    if a.startswith(("--workdir=", "-workdir=")):
      workdir = a.split("=", 1)[1]
    elif a in ("--workdir", "-workdir") and i + 1 < len(args):
      workdir = args[i + 1]
  if not workdir:
    return list(argv)          # absl reports the missing --workdir
  return [argv[0], f"--config={WORKDIR_CONFIG}:{workdir}", *argv[1:]]


def run(main, *, config_from_workdir_flags: bool = False) -> None:
  """Runs an absl `main` whose flags are defined in `main`'s module.

  absl's `--help` lists the flags of the module named by `sys.argv[0]`; a
  console script's argv[0] is the installed wrapper (`.../bin/sgc-train`), which
  defines none, so `--help` printed only "Try --helpfull". Registering the
  module's flags as key flags of argv[0] makes `--help` list them.
  """
  for flag in flags.FLAGS.get_key_flags_for_module(main.__module__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  if config_from_workdir_flags:
    # ml_collections reads the `--config.*` overrides from sys.argv itself.
    sys.argv[:] = config_from_workdir(sys.argv)
  app.run(main)
