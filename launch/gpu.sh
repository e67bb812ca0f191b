#!/usr/bin/env bash
# Trains on the local NVIDIA GPU(s): installs sgc_jax[cuda] in .venv and runs the
# trainer with bf16 compute and the XLA GPU flags that matter for convolution
# networks. Environment: CONFIG (configs/sgc_coco.py:quantizer=sgc), WORKDIR
# (workdir/gpu), DATA_DIR (data), VENV; extra arguments go to the trainer.
#
#   launch/gpu.sh --config.data.batch_size=32 --config.total_steps=100000
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="[cuda]" source launch/venv.sh
CONFIG=${CONFIG:-configs/sgc_coco.py:quantizer=sgc}
WORKDIR=${WORKDIR:-workdir/gpu}
DATA_DIR=${DATA_DIR:-data}
# Latency-hiding scheduler: overlaps collectives with compute on multi-GPU hosts.
# Triton GEMM off: cuBLAS is faster for these shapes. Autotuning level 4 picks
# cuDNN convolution algorithms by measurement (once, then cached).
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=4"
# Let JAX take 90 % of GPU memory up front (no fragmentation from growth).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec "$PY" -m sgc_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.data.data_dir="$DATA_DIR" --config.model.dtype=bfloat16 --mode=train "$@"
