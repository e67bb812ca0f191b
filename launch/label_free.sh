#!/usr/bin/env bash
# The label-free SGC-VQGAN on sgc_scenes/res64: no human label trains anything.
#   1. SlotCon (self-supervised) trains SLOTCON_STEPS steps; its teacher is exported
#   2. ACSeg trains ACSEG_STEPS steps over that frozen backbone; --mode=pseudo_labels
#      writes its cluster maps of both splits as a folder data set, prepared here
#   3. SGC-VQGAN (quantizer sgc) trains STEPS steps on those pseudo-labels
# then every run is evaluated against the TRUE labels of sgc_scenes (the
# pseudo-classes matched to the true classes, Hungarian) beside `ema` (no
# labels) and label-guided `sgc` (launch/compare.sh's runs, trained here if
# missing), and the table goes into docs/methods/acseg.md between the
# `quality-table-label-free` markers. A finished stage is not redone (training
# resumes from its last checkpoint, already at its last step).
# Environment: STEPS (300), SLOTCON_STEPS (2000), ACSEG_STEPS (1000), WORKDIR
# (workdir/label_free), COMPARE_DIR (workdir/compare), DATA_DIR (data), VENV.
# Extra arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
STEPS=${STEPS:-300}
SLOTCON_STEPS=${SLOTCON_STEPS:-2000}
ACSEG_STEPS=${ACSEG_STEPS:-1000}
DATA_DIR=${DATA_DIR:-data}
WORKDIR=${WORKDIR:-workdir/label_free}
COMPARE_DIR=${COMPARE_DIR:-workdir/compare}
SLOTCON_WORKDIR=${SLOTCON_WORKDIR:-$WORKDIR/slotcon}
stage() { echo "== [$1/6] $2"; }
main() { "$PY" -m sgc_jax.main "$@" --config.data.data_dir="$DATA_DIR"; }

stage 1 "SlotCon, $SLOTCON_STEPS steps (no labels) -> $SLOTCON_WORKDIR/bundle"
main --config="configs/slotcon_scenes.py:steps=$SLOTCON_STEPS" --workdir="$SLOTCON_WORKDIR" \
  --mode=train "${@:1}"
main --config="configs/slotcon_scenes.py:steps=$SLOTCON_STEPS" --workdir="$SLOTCON_WORKDIR" \
  --mode=export "${@:1}"

stage 2 "ACSeg over SlotCon's teacher, $ACSEG_STEPS steps (no labels)"
acseg() {
  main --config="configs/acseg_scenes.py:steps=$ACSEG_STEPS" --workdir="$WORKDIR/acseg" \
    --config.model.backbone.weights="$SLOTCON_WORKDIR/bundle" "$@"
}
for mode in train eval pseudo_labels; do
  acseg --mode=$mode "${@:1}"
done

stage 3 "prepare the pseudo-labelled data set"
name=$("$PY" -m sgc_jax.data.folder "$WORKDIR/acseg/pseudo_labels" --data_dir="$DATA_DIR" \
  | tail -n 1)
echo "$name"

stage 4 "SGC-VQGAN (sgc) on the pseudo-labels, $STEPS steps"
sgc() {
  main --config=configs/sgc_scenes.py:quantizer=$1 --config.total_steps="$STEPS" \
    --config.evals.pictures.every=1000 "${@:2}"
}
sgc sgc --workdir="$WORKDIR/sgc_pseudo" --config.data.name="$name" --mode=train "${@:1}"

stage 5 "against the true labels: --mode=eval of label-free sgc"
sgc sgc --workdir="$WORKDIR/sgc_pseudo" --mode=eval "${@:1}"

stage 6 "ema and label-guided sgc, $STEPS steps (launch/compare.sh's runs)"
for quantizer in ema sgc; do
  for mode in train eval; do
    sgc $quantizer --workdir="$COMPARE_DIR/$quantizer" --mode=$mode "${@:1}"
  done
done
"$PY" -m sgc_jax.tools.compare "$COMPARE_DIR/ema" "$WORKDIR/sgc_pseudo" "$COMPARE_DIR/sgc" \
  --names "ema (no labels),sgc on ACSeg pseudo-labels (no labels),sgc (true labels)" \
  --readme docs/methods/acseg.md --table label-free
