"""Where a results file's numbers came from: the commit of the code that made them."""
from __future__ import annotations

import os
import subprocess


def git_commit(path: str = os.path.dirname(os.path.abspath(__file__))) -> str:
  """The short commit of the checkout holding `path`, or "unknown" outside a git checkout."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True, cwd=path).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def machine(cpuinfo: str = "/proc/cpuinfo") -> dict:
  """The host a timing was taken on: CPU model, its widest vector extension, cores.

  Timings from two hosts are not comparable: the same training ran 2.7-2.9x slower on an
  AVX2-only EPYC than on the host of earlier sessions (tests/test_recipe.py's U-Net run,
  182 s against 66 s), so every results file that records seconds records this too.
  """
  model, flags = "unknown", set()
  try:
    with open(cpuinfo, encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
          model = value.strip()
        elif key.strip() == "flags" and not flags:
          flags = set(value.split())
  except OSError:
    pass
  vector = next((name for name in ("avx512f", "avx2", "avx", "sse4_2") if name in flags),
                "unknown")
  return {"cpu": model, "vector_extension": vector, "cores": os.cpu_count()}
