#!/usr/bin/env bash
# The quality tables: trains vq, ema and sgc on sgc_scenes/res64 with the same
# seed, steps and architecture, evaluates each over the validation split
# (--mode=eval) and writes their table between its markers. Two tables:
#   ./launch/compare.sh                 L1 autoencoders (the discriminator never starts),
#                                       `quality-table` in docs/evaluation.md
#   GAN_START=100 ./launch/compare.sh   VQGANs: hinge GAN from step GAN_START,
#                                       `quality-table-gan` in README.md
# Environment: STEPS (300), GAN_START, WORKDIR (workdir/compare or
# workdir/compare_gan), DATA_DIR (data), VENV. Extra arguments go to every run.
# A finished run is not retrained (train resumes from its last checkpoint,
# which is already at STEPS).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
STEPS=${STEPS:-300}
DATA_DIR=${DATA_DIR:-data}
if [ -n "${GAN_START:-}" ]; then
  WORKDIR=${WORKDIR:-workdir/compare_gan}
  TABLE=(--table gan)
  TABLE_FILE=README.md
  GAN=(--config.loss.disc_start="$GAN_START")
else
  WORKDIR=${WORKDIR:-workdir/compare}
  TABLE=()
  TABLE_FILE=docs/evaluation.md
  GAN=()
fi
for quantizer in vq ema sgc; do
  for mode in train eval; do
    echo "== $quantizer --mode=$mode"
    "$PY" -m sgc_jax.main --config=configs/sgc_scenes.py:quantizer=$quantizer \
      --workdir="$WORKDIR/$quantizer" --config.data.data_dir="$DATA_DIR" \
      --config.total_steps="$STEPS" --config.evals.pictures.every=1000 ${GAN[@]+"${GAN[@]}"} \
      --mode=$mode "$@"
  done
done
"$PY" -m sgc_jax.tools.compare "$WORKDIR/vq" "$WORKDIR/ema" "$WORKDIR/sgc" --readme "$TABLE_FILE" \
  ${TABLE[@]+"${TABLE[@]}"}
