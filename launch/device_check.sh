#!/usr/bin/env bash
# The check a lent GPU machine runs first, as it is, in ONE device call of at
# most 9 minutes (sgc_jax/tools/device_check.py says what it measures):
#
#   here, once:   launch/device_wheels.sh        (the wheels the GPU image lacks -> .whl/)
#   device call:  run(command="bash launch/device_check.sh", carry=[".whl"], timeout_s=600)
#
# It installs .whl's wheels with --no-deps --no-index into /tmp (the machine's
# own JAX, jaxlib and CUDA plugin are left alone), then writes device_report.md
# and .json, its log, and SlotCon's bundle in parts (at most 8 files) to $OUT
# (default workdir/device_check). Then commit the report to docs/performance.md,
# and unpack the bundle with the join_slotcon_bundle.sh that came back.
#
#   launch/device_check.sh --dry-run   the same code path on this CPU, tiny shapes
#                                      (under 3 minutes; CI runs it)
# Other arguments go to `python -m sgc_jax.tools.device_check` (--budget=SECONDS ...).
# Environment: PYTHON (python3: on the GPU machine, the one that holds JAX), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-workdir/device_check}
ARGS=()
DRY_RUN=0
for arg in "$@"; do
  if [ "$arg" = --dry-run ]; then DRY_RUN=1; else ARGS+=("$arg"); fi
done
if [ "$DRY_RUN" = 1 ]; then
  exec env JAX_PLATFORMS=cpu "$PYTHON" -m sgc_jax.tools.device_check --out="$OUT" --dry_run \
    ${ARGS[@]+"${ARGS[@]}"}
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  site=/tmp/sgc_jax_site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
source launch/gpu_env.sh
exec "$PYTHON" -m sgc_jax.tools.device_check --out="$OUT" ${ARGS[@]+"${ARGS[@]}"}
