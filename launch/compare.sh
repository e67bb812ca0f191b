#!/usr/bin/env bash
# The quality table: trains vq, ema and sgc on sgc_scenes/res64 with the same
# seed, steps and architecture, evaluates each over the validation split
# (--mode=eval) and writes the table into README.md.
# Environment: STEPS (400), WORKDIR (workdir/compare), DATA_DIR (data), VENV.
# Extra arguments go to every run. A finished run is not retrained (train
# resumes from its last checkpoint, which is already at STEPS).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
STEPS=${STEPS:-400}
WORKDIR=${WORKDIR:-workdir/compare}
DATA_DIR=${DATA_DIR:-data}
for quantizer in vq ema sgc; do
  for mode in train eval; do
    echo "== $quantizer --mode=$mode"
    "$PY" -m sgc_jax.main --config=configs/sgc_scenes.py:quantizer=$quantizer \
      --workdir="$WORKDIR/$quantizer" --config.data.data_dir="$DATA_DIR" \
      --config.total_steps="$STEPS" --config.preview.every=1000 --mode=$mode "$@"
  done
done
"$PY" -m sgc_jax.compare "$WORKDIR/vq" "$WORKDIR/ema" "$WORKDIR/sgc" --readme README.md
