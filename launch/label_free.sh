#!/usr/bin/env bash
# The label-free SGC-VQGAN: no human label trains anything.
#   1. SlotCon (self-supervised) trains SLOTCON_STEPS steps; its teacher is exported
#   2. ACSeg trains ACSEG_STEPS steps over that frozen backbone; --mode=pseudo_labels
#      writes its cluster maps of both splits as a folder data set, prepared here
#   3. SGC-VQGAN (quantizer sgc) trains STEPS steps on those pseudo-labels
# then every run is evaluated against the TRUE labels (the pseudo-classes
# matched to the true classes, Hungarian) beside `ema` (no labels) and
# label-guided `sgc` (the runs of launch/compare.sh, or of
# launch/compare_camvid.sh with DATA=camvid; trained here if missing), and the
# table goes into docs/methods/acseg.md between the `quality-table-label-free`
# markers (`quality-table-label-free-camvid` with DATA=camvid). A finished
# stage is not redone (training resumes from its last checkpoint, already at
# its last step).
# Environment: DATA (scenes: sgc_scenes/res64 at 64 px; camvid: CamVid,
# prepared under DATA_DIR as folder:camvid, at 128 px, evaluated on whole
# frames), STEPS (300; camvid: the recipe's), SLOTCON_STEPS (2000), ACSEG_STEPS
# (1000), WORKDIR (workdir/label_free[_camvid]), COMPARE_DIR
# (workdir/compare[_camvid]), DATA_DIR (data), VENV. Extra arguments go to
# every run.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
DATA=${DATA:-scenes}
SLOTCON_STEPS=${SLOTCON_STEPS:-2000}
ACSEG_STEPS=${ACSEG_STEPS:-1000}
DATA_DIR=${DATA_DIR:-data}
case "$DATA" in
  scenes)
    SIZE=64 SUFFIX="" TABLE=label-free STEPS=${STEPS:-300}
    SGC_CONFIG=configs/sgc_scenes.py SGC_CONFIG_ARGS=""
    SGC_ARGS=(--config.total_steps="$STEPS" --config.evals.pictures.every=1000)
    PSEUDO_FRAME=() ;;
  camvid)
    SIZE=128 SUFFIX=_camvid TABLE=label-free-camvid STEPS=${STEPS:-0}
    SGC_CONFIG=configs/sgc_camvid.py SGC_CONFIG_ARGS=",steps=$STEPS" SGC_ARGS=()
    # Pseudo-labelled frames at twice the evaluation size, so that 128 px
    # training crops see them at the scale the true-label recipe does.
    PSEUDO_FRAME=(--config.data.eval_frame="(192, 256)") ;;
  *) echo "error: DATA=$DATA: scenes or camvid" >&2; exit 1 ;;
esac
WORKDIR=${WORKDIR:-workdir/label_free$SUFFIX}
COMPARE_DIR=${COMPARE_DIR:-workdir/compare$SUFFIX}
SLOTCON_WORKDIR=${SLOTCON_WORKDIR:-$WORKDIR/slotcon}
stage() { echo "== [$1/6] $2"; }
main() { "$PY" -m sgc_jax.main "$@" --config.data.data_dir="$DATA_DIR"; }
args="size=$SIZE,data=$DATA"

stage 1 "SlotCon, $SLOTCON_STEPS steps (no labels) -> $SLOTCON_WORKDIR/bundle"
for mode in train export; do
  main --config="configs/slotcon_scenes.py:steps=$SLOTCON_STEPS,$args" \
    --workdir="$SLOTCON_WORKDIR" --mode=$mode "$@"
done

stage 2 "ACSeg over SlotCon's teacher, $ACSEG_STEPS steps (no labels)"
acseg() {
  main --config="configs/acseg_scenes.py:steps=$ACSEG_STEPS,$args" --workdir="$WORKDIR/acseg" \
    --config.model.backbone.weights="$SLOTCON_WORKDIR/bundle" "$@"
}
for mode in train eval; do
  acseg --mode=$mode "$@"
done
acseg --mode=pseudo_labels ${PSEUDO_FRAME[@]+"${PSEUDO_FRAME[@]}"} "$@"

stage 3 "prepare the pseudo-labelled data set"
name=$("$PY" -m sgc_jax.data.folder "$WORKDIR/acseg/pseudo_labels" --data_dir="$DATA_DIR" \
  --name="pseudo_labels$SUFFIX" | tail -n 1)
echo "$name"

stage 4 "SGC-VQGAN (sgc) on the pseudo-labels"
sgc() {
  main --config="$SGC_CONFIG:quantizer=$1$SGC_CONFIG_ARGS" ${SGC_ARGS[@]+"${SGC_ARGS[@]}"} "${@:2}"
}
sgc sgc --workdir="$WORKDIR/sgc_pseudo" --config.data.name="$name" --mode=train "$@"

stage 5 "against the true labels: --mode=eval of label-free sgc"
sgc sgc --workdir="$WORKDIR/sgc_pseudo" --mode=eval "$@"

stage 6 "ema and label-guided sgc (the quality table's runs)"
for quantizer in ema sgc; do
  for mode in train eval; do
    sgc $quantizer --workdir="$COMPARE_DIR/$quantizer" --mode=$mode "$@"
  done
done
"$PY" -m sgc_jax.tools.compare "$COMPARE_DIR/ema" "$WORKDIR/sgc_pseudo" "$COMPARE_DIR/sgc" \
  --names "ema (no labels),sgc on ACSeg pseudo-labels (no labels),sgc (true labels)" \
  --readme docs/methods/acseg.md --table "$TABLE"
