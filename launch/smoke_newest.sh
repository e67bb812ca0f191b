#!/usr/bin/env bash
# A short run of core, method, export and accelerator-path tests on the newest
# end of setup.py's ranges: Python 3.12, where pip takes the newest jax, flax,
# orbax and optax that the ranges allow (CI's full run is on Python 3.11, the
# oldest end). Argument: the venv to make (default .venv-newest). Environment:
# PYTHON (python3.12, else pyenv's newest 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-newest}
# The first candidate that runs as Python 3.12 (a pyenv shim may exist and fail).
for candidate in ${PYTHON:-} python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    PYTHON=$candidate
    break
  fi
  PYTHON=""
done
if [ -z "$PYTHON" ]; then
  echo "error: no Python 3.12 found (set PYTHON): the newest jax needs it" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e . "pytest>=8.0,<10" "pytest-xdist>=3.5,<4"
"$VENV/bin/python" -c "import sys, jax, flax, optax, orbax.checkpoint as ocp; \
print(f'== smoke run on Python {sys.version.split()[0]}, jax {jax.__version__}, \
flax {flax.__version__}, optax {optax.__version__}, orbax-checkpoint {ocp.__version__}')"
# The core through a toy method, the accelerator paths, export and the bundle,
# and the device check's parts (its dry run, 5 minutes, is in the full run).
exec "$VENV/bin/python" -m pytest -p no:cacheprovider tests/test_toy_method.py \
  tests/test_core_pieces.py tests/test_backend_paths.py tests/test_export.py \
  tests/test_device_check.py -k "not dry_run"
