"""tools/device_wheels.sh carries exactly what the GPU machine lacks; device_check.sh's smoke mode.

The fast tests read setup.py, the wheel script and (where this workplace has it) the GPU
machine's package list. The slow test runs the device check's smoke mode from carried wheels
alone, the way the GPU machine runs it (`--no-index --target`, the checkout on PYTHONPATH):
    bash tools/device_wheels.sh --python-version 3.11 --bare-venv /tmp/sgc-bare-py3.11
    python -m pytest -q tests/test_device_check.py
It skips where .whl/ holds no wheels for the Python that would run it (CI's clean clone).
"""
import ast
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL_SCRIPT = os.path.join(ROOT, "tools", "device_wheels.sh")
KINDS = "/work/.library/device/KINDS.md"


def _name(requirement: str) -> str:
  """PEP 503 name of a requirement string ("tensorboardX>=2.6" -> "tensorboardx")."""
  return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def _install_requires() -> set[str]:
  tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
  for node in ast.walk(tree):
    if isinstance(node, ast.keyword) and node.arg == "install_requires":
      return {_name(ast.literal_eval(e)) for e in node.value.elts}
  raise AssertionError("setup.py has no install_requires")


def _script_array(name: str) -> list[str]:
  text = open(WHEEL_SCRIPT, encoding="utf-8").read()
  body = re.search(rf"^{name}=\((.*?)^\)", text, re.S | re.M).group(1)
  return [w.strip('"') for line in body.splitlines() for w in line.split("#")[0].split()]


def _gpu_machine_packages() -> set[str]:
  if not os.path.exists(KINDS):
    pytest.skip(f"{KINDS} (the GPU machine's package list) is not on this machine")
  text = open(KINDS, encoding="utf-8").read()
  listed = re.search(r"Packages: (.*?)\.\s*$", text, re.S | re.M).group(1)
  return {_name(n.strip()) for n in listed.split(",")}


def test_wheel_list_is_install_requires_less_the_gpu_machines_packages():
  there = _gpu_machine_packages()
  carried_top = {_name(r) for r in _script_array("MISSING")}
  assert carried_top == _install_requires() - there


def test_carried_wheels_are_not_on_the_gpu_machine_and_their_needs_are():
  there = _gpu_machine_packages()
  carried = {_name(r) for r in _script_array("MISSING") + _script_array("DEPS")
             + _script_array("BUILT")}
  assert not carried & there
  assert {_name(n) for n in _script_array("THERE")} <= there
  # One pinned version of each: two would stop the --no-index install.
  pins = _script_array("MISSING") + _script_array("DEPS") + _script_array("BUILT")
  assert all("==" in p for p in pins) and len({_name(p) for p in pins}) == len(pins)


def _wheel_dir(python_version: str) -> str:
  sub = os.path.join(ROOT, ".whl", f"py{python_version}")
  return sub if os.path.isdir(sub) else os.path.join(ROOT, ".whl")


def _smoke_python():
  """(python, version): the bare venv device_wheels.sh makes, else the one running the tests."""
  for version in ("3.11", "3.12"):
    python = os.environ.get("SGC_BARE_PYTHON") or f"/tmp/sgc-bare-py{version}/bin/python"
    if os.path.exists(python):
      out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, check=True).stdout.strip()
      return python, out
  return sys.executable, "%d.%d" % sys.version_info[:2]


@pytest.mark.slow
def test_smoke_mode_runs_from_carried_wheels_and_marks_the_cpu(tmp_path):
  python, version = _smoke_python()
  wheels = _wheel_dir(version)
  tag = f"cp{version.replace('.', '')}"
  if not os.path.isdir(wheels) or not any(f.endswith(".whl") and tag in f
                                          for f in os.listdir(wheels)):
    pytest.skip(f"no Python {version} wheels in {wheels}: run "
                f"`bash tools/device_wheels.sh --python-version {version}` first")
  out = tmp_path / "device_check.json"
  env = dict(os.environ, SGC_DEVICE_CHECK_SMOKE="1", PYTHON=python,
             SGC_SITE=str(tmp_path / "site"), SGC_WHEELS=wheels)
  for name in ("PYTHONPATH", "XLA_FLAGS"):  # as bare as the GPU machine
    env.pop(name, None)
  proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "device_check.sh"), str(out)],
                        env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report["backend"] == "cpu" and report["is_accelerator"] is False
  assert report["smoke_test"] is True and report["complete"] is True
  assert "--no-index" in report["install"]
  assert set(report["project_imports"].values()) == {"ok"}, report["project_imports"]
  # The carried packages were imported from the --target folder, not from the venv.
  assert report["imported_from"]["tensorflow-datasets"].startswith(str(tmp_path / "site"))
  entries = report["train"] + report["score"] + report["bf16_log_p"]
  assert entries and not [e for e in entries if "error" in e or "skipped" in e]
  assert {e["dtype"] for e in report["train"]} == {"float32", "bfloat16"}
  assert all(e["images_per_s"] > 0 for e in report["train"] + report["score"])
  assert report["bf16_log_p"][0]["mean_abs_delta_nats"] >= 0


def test_full_run_on_a_cpu_refuses_to_report_figures(tmp_path):
  """Without an accelerator a full run writes why, no figures, and exits non-zero."""
  out = tmp_path / "device_check.json"
  env = dict(os.environ, PYTHON=sys.executable, SGC_WHEELS=str(tmp_path / "none"),
             SGC_DEVICE_CHECK_SMOKE="0")
  env["PYTHONPATH"] = ROOT
  proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "device_check.sh"), str(out)],
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report["backend"] == "cpu" and report["is_accelerator"] is False
  assert "no accelerator" in report["error"]
  assert report["train"] == [] and report["score"] == []
