#!/usr/bin/env bash
# SlotCon's quality table (labels used only to evaluate): SlotCon trained
# STEPS steps, the same network untrained (random init, the same seed), and
# SGC-VQGAN's sgc codebook (its run of launch/compare.sh, or of
# launch/compare_camvid.sh with DATA=camvid, where that workdir exists), each
# through --mode=eval's protocol; the table goes into docs/methods/slotcon.md
# between the `quality-table-slotcon` markers (`quality-table-slotcon-camvid`
# with DATA=camvid).
# Environment: DATA (scenes: sgc_scenes/res64 at 64 px; camvid: CamVid,
# prepared under DATA_DIR as folder:camvid, at 128 px, evaluated on whole
# frames), STEPS (2000), WORKDIR (workdir/slotcon_table[_camvid]), SGC_WORKDIR
# (workdir/compare[_camvid]/sgc), DATA_DIR (data), VENV. Extra arguments go to
# every run. A finished training is not redone.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
DATA=${DATA:-scenes}
STEPS=${STEPS:-2000}
DATA_DIR=${DATA_DIR:-data}
case "$DATA" in
  scenes) ARGS="" SUFFIX="" TABLE=slotcon ;;
  camvid) ARGS=",size=128,data=camvid" SUFFIX=_camvid TABLE=slotcon-camvid ;;
  *) echo "error: DATA=$DATA: scenes or camvid" >&2; exit 1 ;;
esac
WORKDIR=${WORKDIR:-workdir/slotcon_table$SUFFIX}
SGC_WORKDIR=${SGC_WORKDIR:-workdir/compare$SUFFIX/sgc}
run() {
  "$PY" -m sgc_jax.main --config="configs/slotcon_scenes.py:steps=$STEPS$ARGS" \
    --config.data.data_dir="$DATA_DIR" "$@"
}
for mode in train eval; do
  echo "== slotcon --mode=$mode"
  run --workdir="$WORKDIR/slotcon" --mode=$mode "$@"
done
echo "== random init --mode=eval --eval_initial"
run --workdir="$WORKDIR/random_init" --mode=eval --eval_initial "$@"
runs=("$WORKDIR/slotcon" "$WORKDIR/random_init")
[ -f "$SGC_WORKDIR/eval/eval.json" ] && runs+=("$SGC_WORKDIR")
"$PY" -m sgc_jax.tools.compare "${runs[@]}" --readme docs/methods/slotcon.md \
  --table "$TABLE"
