#!/usr/bin/env bash
# The tests, on a fresh machine with Python 3.11 and pip: makes .venv, installs
# sgc_jax[test] and runs pytest (tests marked `slow` are left out; `-m slow` runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"
exec "$VENV/bin/python" -m pytest "$@"
