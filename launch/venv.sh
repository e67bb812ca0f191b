# Sourced by the launch scripts: makes $VENV (default .venv) with sgc_jax
# installed (extras in $EXTRAS, e.g. "[test]"), and sets $PY to its python.
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".${EXTRAS:-}"
PY="$VENV/bin/python"
