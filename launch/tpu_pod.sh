#!/usr/bin/env bash
# Trains sgc_jax on a Cloud TPU VM pod slice: creates the slice (or reuses it),
# copies this checkout to every worker, installs sgc_jax[tpu] there (in a venv
# of Python --python, default 3.12, which current jax needs and TPU VM images
# lack: uv, installed with pip, fetches it on the worker), and runs
# the trainer on all workers at once (one JAX process per host; they find each
# other through jax.distributed's TPU auto-detection). Data and workdir live on
# a gs:// bucket, so a preempted slice resumes from its last checkpoint: with
# --spot or --preemptible the script recreates the slice and resumes, up to
# --max-restarts times.
#
#   launch/tpu_pod.sh --name sgc-v5e --zone us-west4-a --accelerator v5litepod-64 \
#       --version v2-alpha-tpuv5-lite --bucket gs://MY_BUCKET --spot \
#       [--config configs/sgc_coco.py:quantizer=sgc] [--run sgc_coco] \
#       [--project P] [--python 3.12] [--max-restarts 20] [--dry-run]
#       [-- --config.total_steps=100000 ...]
#
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
NAME="" ZONE="" ACCELERATOR="" VERSION="" BUCKET="" PROJECT="" CAPACITY=""
CONFIG="configs/sgc_coco.py:quantizer=sgc" RUN="sgc_coco" MAX_RESTARTS=20 DRY_RUN=0 PYTHON=3.12
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --accelerator) ACCELERATOR=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --bucket) BUCKET=${2%/}; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --run) RUN=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --spot) CAPACITY="--spot"; shift ;;
    --preemptible) CAPACITY="--preemptible"; shift ;;
    --max-restarts) MAX_RESTARTS=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1" >&2; usage ;;
  esac
done
for required in NAME ZONE ACCELERATOR VERSION BUCKET; do
  if [ -z "${!required}" ]; then
    echo "error: --$(echo "$required" | tr 'A-Z' 'a-z') is required" >&2; exit 2
  fi
done
case "$BUCKET" in gs://*) ;; *) echo "error: --bucket must be gs://..., got $BUCKET" >&2; exit 2 ;; esac
TRAINER_ARGS=("$@")
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" ${PROJECT_FLAG:+"$PROJECT_FLAG"})

run() {  # prints, and runs unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}

slice_state() {
  [ "$DRY_RUN" = 1 ] && { echo "ABSENT"; return; }
  "${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || echo "ABSENT"
}

create_slice() {
  case "$(slice_state)" in
    READY) echo "reusing the READY slice $NAME" ;;
    ABSENT) run "${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" \
              --version="$VERSION" ${CAPACITY:+"$CAPACITY"} ;;
    *) run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
       run "${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" \
         --version="$VERSION" ${CAPACITY:+"$CAPACITY"} ;;
  esac
}

install() {
  local archive=/tmp/sgc_jax_$NAME.tar.gz
  run git archive --format=tar.gz -o "$archive" HEAD
  run "${TPU[@]}" scp "$archive" "$NAME:sgc_jax.tar.gz" "${WHERE[@]}" --worker=all
  run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="rm -rf sgc_jax && \
mkdir sgc_jax && tar xzf sgc_jax.tar.gz -C sgc_jax && cd sgc_jax && \
python3 -m pip install -q --user uv && ~/.local/bin/uv venv -q --python $PYTHON .venv && \
~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[tpu]'"
}

train_command() {
  local args=""
  # printf of no arguments would still print one empty, quoted argument.
  [ ${#TRAINER_ARGS[@]} -eq 0 ] || args=$(printf ' %q' "${TRAINER_ARGS[@]}")
  echo "cd sgc_jax && .venv/bin/python -m sgc_jax.main --config=$CONFIG \
--workdir=$BUCKET/runs/$RUN --config.data.data_dir=$BUCKET/tfds --mode=train$args"
}

create_slice
install
for attempt in $(seq 0 "$MAX_RESTARTS"); do
  if run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$(train_command)"; then
    [ "$DRY_RUN" = 1 ] && exit 0
    echo "done: checkpoints and metrics in $BUCKET/runs/$RUN"
    exit 0
  fi
  state=$(slice_state)
  if [ -z "$CAPACITY" ] || [ "$state" = READY ]; then
    echo "error: training failed on a $state slice (not a preemption); see the output above" >&2
    exit 1
  fi
  echo "slice $NAME is $state (preempted): recreating it and resuming (restart $((attempt + 1)))"
  create_slice
  install
done
echo "error: gave up after $MAX_RESTARTS restarts" >&2
exit 1
