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

