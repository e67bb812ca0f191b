#!/usr/bin/env bash
# The tests, on a fresh machine with Python 3.11 and pip: makes .venv, installs
# sgc_jax[test] and runs pytest (tests marked `slow` are left out; `-m slow` runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="[test]" source launch/venv.sh
exec "$PY" -m pytest "$@"
