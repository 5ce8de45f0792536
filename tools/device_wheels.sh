#!/usr/bin/env bash
# Downloads, here (where pip reaches the registry), the wheels of exactly what the lent GPU
# machine lacks to run this project from its checkout, into the ignored folder .whl/.
#
#   bash tools/device_wheels.sh                          # Python 3.12 builds -> .whl/ (they travel)
#   bash tools/device_wheels.sh --python-version 3.11    # 3.11 builds -> .whl/py3.11/ (smoke test)
#   bash tools/device_wheels.sh --python-version 3.11 --bare-venv /tmp/sgc-bare-py3.11
#
# The GPU machine (/work/.library/device/KINDS.md, package list read there on 2026-11-17) has
# Python 3.12, JAX 0.11.2 with CUDA, flax, optax, orbax-checkpoint, diffrax, lineax, numpy, scipy,
# pandas, pyarrow, scikit-learn, scikit-image, matplotlib, absl-py, tqdm and no network.
# MISSING is setup.py's install_requires less that list (tests/test_device_check.py checks it);
# DEPS are their dependencies the machine lacks as well; BUILT exist only as source releases and
# are built here into pure-Python wheels. One version of each: two stop the --no-index install.
# tools/device_check.sh installs them there with
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#
# --bare-venv DIR also makes a venv at DIR with this Python version that holds only what the GPU
# machine holds of what the project touches (JAX's CPU build at the version setup.py allows, and
# THERE below) and none of the carried packages, so that
#   PYTHON=DIR/bin/python SGC_DEVICE_CHECK_SMOKE=1 bash tools/device_check.sh
# proves that the carried wheels alone complete it (tests/test_device_check.py runs that).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY_VERSION=3.12
BARE_VENV=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python-version) PY_VERSION="$2"; shift 2 ;;
    --bare-venv) BARE_VENV="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "device_wheels: unknown argument $1" >&2; exit 2 ;;
  esac
done

# setup.py's install_requires that the GPU machine lacks (versions: the ones CI tests with).
MISSING=(
  tensorflow-datasets==4.9.10
  array-record==0.8.6
  grain==0.2.18
  pydicom==3.0.2
  ml-collections==1.1.0
  tensorboardX==2.6.5
  importlib-resources==7.1.0
)
# Their dependencies (Requires-Dist, markers for Linux CPython) that the machine lacks too.
DEPS=(
  dm-tree==0.1.10
  docstring-parser==0.18.0
  googleapis-common-protos==1.76.0
  immutabledict==4.3.1
  portpicker==1.6.0
  simple-parsing==0.1.9
  tensorflow-metadata==1.21.0
  termcolor==3.3.0
  toml==0.10.2
)
# Source releases only (pure Python): built into wheels here.
BUILT=(
  promise==2.3
)
# What the carried packages need that the GPU machine already has (not carried; --bare-venv
# installs these from the registry to stand in for the machine).
THERE=(
  absl-py attrs cloudpickle etils fsspec numpy packaging protobuf psutil pyarrow pyyaml requests
  six tqdm typing-extensions wrapt zipp
)
# The machine's own scientific stack that the project imports (--bare-venv only).
THERE_STACK=(
  "jax>=0.10.2,<0.12" flax optax orbax-checkpoint diffrax lineax scipy pandas scikit-learn
  scikit-image matplotlib
)

if [[ "$PY_VERSION" == 3.12 ]]; then
  DEST="$ROOT/.whl"
else
  DEST="$ROOT/.whl/py$PY_VERSION"
fi
mkdir -p "$DEST"
# Only this script's wheels stay: an older version of one would stop the install there.
find "$DEST" -maxdepth 1 -name '*.whl' -delete

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
echo "device_wheels: Python $PY_VERSION builds -> $DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${MISSING[@]}" "${DEPS[@]}"
python3 -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST" "${BUILT[@]}"

# Checks: one wheel per package, every wheel installable by that Python, every requirement
# either carried or on the machine, the total well under the 64 MiB a call carries.
python3 - "$DEST" "$PY_VERSION" "${THERE[*]}" <<'EOF'
import glob, os, sys, zipfile
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

dest, version, there = sys.argv[1], sys.argv[2], {canonicalize_name(n) for n in sys.argv[3].split()}
wheels = sorted(glob.glob(os.path.join(dest, "*.whl")))
names = {}
for w in wheels:
  name, _, _, tags = parse_wheel_filename(os.path.basename(w))
  names.setdefault(name, []).append(os.path.basename(w))
  if not any(t.interpreter in ("py3", f"cp{version.replace('.', '')}") for t in tags):
    sys.exit(f"device_wheels: {w} is not a build for Python {version}")
dupes = {n: ws for n, ws in names.items() if len(ws) > 1}
if dupes:
  sys.exit(f"device_wheels: more than one version of {dupes}")
env = {"python_version": version, "python_full_version": version + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
unmet = []
for w in wheels:
  with zipfile.ZipFile(w) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode("utf-8").splitlines():
      if line.startswith("Requires-Dist:"):
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
          continue
        n = canonicalize_name(req.name)
        if n not in names and n not in there:
          unmet.append(f"{os.path.basename(w)} needs {req}")
if unmet:
  sys.exit("device_wheels: neither carried nor on the GPU machine:\n  " + "\n  ".join(unmet))
total = sum(os.path.getsize(w) for w in wheels)
print(f"device_wheels: {len(wheels)} wheels, {total / 2**20:.1f} MiB, one version each, "
      f"every requirement carried or on the machine")
if total > 32 * 2**20:
  sys.exit("device_wheels: over 32 MiB: the working tree that travels is 64 MiB in all")
EOF

if [[ -n "$BARE_VENV" ]]; then
  # A venv of exactly this Python version: python3.X on the PATH, else pyenv's.
  py="$(command -v "python$PY_VERSION" 2>/dev/null || true)"
  if [[ -z "$py" ]] || ! "$py" -V >/dev/null 2>&1; then
    py="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$PY_VERSION".*/bin/python"$PY_VERSION" \
          2>/dev/null | tail -1)"
  fi
  [[ -n "$py" ]] || { echo "device_wheels: no Python $PY_VERSION here for --bare-venv" >&2; exit 1; }
  rm -rf "$BARE_VENV"
  "$py" -m venv "$BARE_VENV"
  "$BARE_VENV/bin/python" -m pip install -q "${THERE_STACK[@]}" "${THERE[@]}"
  echo "device_wheels: bare venv $BARE_VENV ($("$BARE_VENV/bin/python" -V)," \
       "jax $("$BARE_VENV/bin/python" -c 'import jax; print(jax.__version__)'))"
fi
