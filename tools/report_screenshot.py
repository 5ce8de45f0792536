"""Renders an sgc-score report.html in headless Chromium to a PNG, to look at it as a reader would.

    python tools/report_screenshot.py /tmp/scores/report.html /tmp/report.png

A tool for checking the report's layout, not a test requirement: it needs a
Chromium (`apt-get install -y chromium` on Debian; `--chromium` names another
binary). The browser runs offline, in a throwaway profile, with no network,
so the screenshot also shows that the page needs nothing outside itself.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def screenshot(report: str, out: str, *, width: int = 1200, height: int = 2000,
               chromium: str | None = None, timeout_s: float = 120.0) -> str:
  """Writes the PNG of `report` rendered at `width` x `height` pixels to `out`; returns `out`."""
  binary = chromium or next((b for b in _BROWSERS if shutil.which(b)), None)
  if binary is None:
    raise FileNotFoundError("no Chromium found (apt-get install -y chromium, or --chromium)")
  with tempfile.TemporaryDirectory() as profile:
    subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={os.path.abspath(out)}",
         f"--window-size={width},{height}", "file://" + os.path.abspath(report)],
        check=True, timeout=timeout_s, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  if not os.path.exists(out):
    raise RuntimeError(f"{binary} wrote no screenshot to {out}")
  return out


def main(argv=None) -> int:
  """Command line: REPORT OUT [--width --height --chromium]."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("report")
  parser.add_argument("out")
  parser.add_argument("--width", type=int, default=1200)
  parser.add_argument("--height", type=int, default=2000)
  parser.add_argument("--chromium", default=None)
  args = parser.parse_args(argv)
  print(screenshot(args.report, args.out, width=args.width, height=args.height,
                   chromium=args.chromium))
  return 0


if __name__ == "__main__":
  sys.exit(main())
