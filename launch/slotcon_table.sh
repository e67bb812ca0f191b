#!/usr/bin/env bash
# SlotCon's quality table on sgc_scenes/res64 (labels used only to evaluate):
# SlotCon trained STEPS steps, the same network untrained (random init, the
# same seed), and SGC-VQGAN's sgc codebook (its run of launch/compare.sh, where
# that workdir exists), each through --mode=eval's protocol; the table goes into
# docs/methods/slotcon.md between the `quality-table-slotcon` markers.
# Environment: STEPS (2000), WORKDIR (workdir/slotcon_table), SGC_WORKDIR
# (workdir/compare/sgc), DATA_DIR (data), VENV. Extra arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
STEPS=${STEPS:-2000}
DATA_DIR=${DATA_DIR:-data}
WORKDIR=${WORKDIR:-workdir/slotcon_table}
SGC_WORKDIR=${SGC_WORKDIR:-workdir/compare/sgc}
run() {
  "$PY" -m sgc_jax.main --config="configs/slotcon_scenes.py:steps=$STEPS" \
    --config.data.data_dir="$DATA_DIR" "$@"
}
for mode in train eval; do
  echo "== slotcon --mode=$mode"
  run --workdir="$WORKDIR/slotcon" --mode=$mode "${@:1}"
done
echo "== random init --mode=eval --eval_initial"
run --workdir="$WORKDIR/random_init" --mode=eval --eval_initial "${@:1}"
runs=("$WORKDIR/slotcon" "$WORKDIR/random_init")
[ -f "$SGC_WORKDIR/eval/eval.json" ] && runs+=("$SGC_WORKDIR")
"$PY" -m sgc_jax.tools.compare "${runs[@]}" --readme docs/methods/slotcon.md --table slotcon
