#!/usr/bin/env bash
# Trains on the local NVIDIA GPU(s): installs sgc_jax[cuda13] (CUDA=12 for
# sgc_jax[cuda12], for drivers older than 580) in .venv and runs the trainer with
# bf16 compute and the XLA GPU settings of launch/gpu_env.sh. Environment:
# CONFIG (configs/sgc_coco.py:quantizer=sgc), WORKDIR (workdir/gpu), DATA_DIR
# (data), CUDA (13), PYTHON (python3.12: jax >= 0.11 needs Python >= 3.12), VENV;
# extra arguments go to the trainer.
#
#   launch/gpu.sh --config.data.batch_size=32 --config.total_steps=100000
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=${CUDA:-13}
case "$CUDA" in 12|13) ;; *) echo "error: CUDA=$CUDA: must be 12 or 13" >&2; exit 2 ;; esac
PYTHON=${PYTHON:-python3.12}
EXTRAS="[cuda$CUDA]" source launch/venv.sh
CONFIG=${CONFIG:-configs/sgc_coco.py:quantizer=sgc}
WORKDIR=${WORKDIR:-workdir/gpu}
DATA_DIR=${DATA_DIR:-data}
source launch/gpu_env.sh
exec "$PY" -m sgc_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.data.data_dir="$DATA_DIR" --config.model.dtype=bfloat16 --mode=train "$@"
