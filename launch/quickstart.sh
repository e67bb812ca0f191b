#!/usr/bin/env bash
# The main job, on a fresh machine with Python 3.11 and pip: makes .venv, installs
# sgc_jax, builds the embedded sgc_scenes data set, previews it, trains SGC-VQGAN
# on it, evaluates it over the validation split and exports an inference bundle,
# then tokenizes a few images with the bundle and decodes them back.
# Environment: PYTHON (python3), VENV (.venv), CONFIG (configs/sgc_scenes.py),
# WORKDIR (workdir/quickstart), DATA_DIR (data). Extra arguments go to every step.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
CONFIG=${CONFIG:-configs/sgc_scenes.py}
WORKDIR=${WORKDIR:-workdir/quickstart}
DATA_DIR=${DATA_DIR:-data}

step() {
  echo "== sgc_jax --mode=$1"
  "$PY" -m sgc_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
    --config.data.data_dir="$DATA_DIR" --mode="$1" "${@:2}"
}
step data "$@"
step preview "$@"
step train "$@"
step eval "$@"
step export "$@"
echo "== sgc-tokenize / sgc-detokenize with the bundle"
"$VENV/bin/sgc-tokenize" "$WORKDIR/preview/examples" --bundle "$WORKDIR/bundle" \
  --out "$WORKDIR/tokens"
"$VENV/bin/sgc-detokenize" "$WORKDIR/tokens" --bundle "$WORKDIR/bundle" \
  --out "$WORKDIR/detokenized"
echo "== done: previews in $WORKDIR/preview/, training images in $WORKDIR/images/,"
echo "   evaluation in $WORKDIR/eval/ (eval.md, PNGs), the inference bundle in"
echo "   $WORKDIR/bundle/, tokens in $WORKDIR/tokens/, decoded images in $WORKDIR/detokenized/"
