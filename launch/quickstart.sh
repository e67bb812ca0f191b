#!/usr/bin/env bash
# The main job, on a fresh machine with Python 3.11 and pip: makes .venv, installs
# sgc_jax, builds the embedded sgc_scenes data set, previews it, trains SGC-VQGAN
# on it and evaluates it over the validation split (PNGs under WORKDIR/images).
# Environment: PYTHON (python3), VENV (.venv), CONFIG (configs/sgc_scenes.py),
# WORKDIR (workdir/quickstart), DATA_DIR (data). Extra arguments go to every step.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CONFIG=${CONFIG:-configs/sgc_scenes.py}
WORKDIR=${WORKDIR:-workdir/quickstart}
DATA_DIR=${DATA_DIR:-data}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e .

step() {
  echo "== sgc_jax --mode=$1"
  "$VENV/bin/python" -m sgc_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
    --config.data.data_dir="$DATA_DIR" --mode="$1" "${@:2}"
}
step data "$@"
step preview "$@"
step train "$@"
echo "== done: data previews in $WORKDIR/preview/, reconstructions and semantic"
echo "   token maps in $WORKDIR/images/, metrics in $WORKDIR/metrics.jsonl"
