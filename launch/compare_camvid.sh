#!/usr/bin/env bash
# The quality table on photographs: vq, ema and sgc trained by the CamVid
# recipe (configs/sgc_camvid.py: 128 px, GAN on for the second half of the
# run) with the same seed, steps and architecture, each evaluated on the 101
# whole validation frames (--mode=eval), and sgc with its semantic loss
# balanced by median frequency; then more seeds of ema, sgc and the balanced
# sgc, to measure the noise.
# The table (mean ± sd where there are seeds) and the per-class table go into
# README.md between the `quality-table-camvid` markers.
# About 30 minutes per run on 2 CPU cores: 2 hours for seed 0's four runs,
# 1.5 hours more for each extra seed (SEEDS, "1 2" by default).
# Environment: CAMVID (the CamVid folder, ../shared/data/camvid), DATA_DIR
# (data), WORKDIR (workdir/compare_camvid), STEPS (the recipe's 400), SEEDS
# (extra seeds of ema, sgc and the balanced sgc, "1 2"; "" for none), VENV.
# Extra arguments go to every run. A finished run is not retrained.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
CAMVID=${CAMVID:-../shared/data/camvid}
DATA_DIR=${DATA_DIR:-data}
WORKDIR=${WORKDIR:-workdir/compare_camvid}
STEPS=${STEPS:-0}
SEEDS=${SEEDS-1 2}
"$PY" -m sgc_jax.data.folder "$CAMVID" --data_dir="$DATA_DIR" --name=camvid
run() {  # quantizer seed workdir [extra arguments]
  local quantizer=$1 seed=$2 workdir=$3
  shift 3
  for mode in train eval; do
    echo "== $quantizer, seed $seed --mode=$mode"
    "$PY" -m sgc_jax.main --config="configs/sgc_camvid.py:quantizer=$quantizer,steps=$STEPS" \
      --workdir="$workdir" --config.data.data_dir="$DATA_DIR" --config.seed="$seed" \
      --mode=$mode "$@"
  done
}
columns=() names=()
BALANCED=--config.model.codebook.class_balance=median_frequency
for seed in 0 $SEEDS; do
  suffix=_seed$seed quantizers="ema sgc"
  if [ "$seed" = 0 ]; then
    suffix="" quantizers="vq ema sgc"
  fi
  for quantizer in $quantizers; do
    run $quantizer "$seed" "$WORKDIR/$quantizer$suffix" "$@"
    columns+=("$WORKDIR/$quantizer$suffix") names+=("$quantizer")
  done
  # sgc with the semantic loss balanced by median frequency (codebook.class_balance).
  run sgc "$seed" "$WORKDIR/sgc_balanced$suffix" $BALANCED "$@"
  columns+=("$WORKDIR/sgc_balanced$suffix") names+=("sgc (median-frequency)")
done
"$PY" -m sgc_jax.tools.compare "${columns[@]}" --seeds --readme README.md --table camvid \
  --names "$(IFS=,; echo "${names[*]}")"
