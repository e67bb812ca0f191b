# Sourced by the GPU launch scripts: the XLA settings that matter for these
# convolution networks on NVIDIA GPUs (each flag exists in jaxlib 0.10-0.12;
# an unknown flag would stop XLA at start).
# Latency-hiding scheduler: overlaps collectives with compute on multi-GPU hosts.
# Triton GEMM off: cuBLAS is faster for these shapes. Autotuning level 4 picks
# cuDNN convolution algorithms by measurement (once per program).
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=4"
# Let JAX take 90 % of GPU memory up front (no fragmentation from growth).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
