"""The XLA options this library compiles its programs with.

On CPU, convolutions stay on XLA's own (Eigen) kernels and only matrix
products go to YNNPACK. YNNPACK, XLA:CPU's default for both, split a
convolution's work over blocks of 64 output channels: on this project's 2-core
AMD EPYC (AVX-512, JAX 0.10.2) a 3x3 convolution with 64 output channels on
64x64 maps of 8 images ran at 107 GFLOP/s on two cores and on one alike, and
kernel gradients at 74-123. Eigen ran the same shapes at 176-216 forward and
input gradient and 156-196 kernel gradient, near the machine's GEMM rate
(`python -m sgc_jax.bench convolutions` prints both). Other platforms keep
their defaults.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _cpu_options_accepted() -> bool:
  # The option is experimental: a jaxlib that renamed it compiles with its defaults.
  try:
    jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(CPU_OPTIONS)
  except jax.errors.JaxRuntimeError:
    return False
  return True


def options() -> dict | None:
  """Compiler options for the default backend (None: XLA's defaults)."""
  if jax.default_backend() == "cpu" and _cpu_options_accepted():
    return dict(CPU_OPTIONS)
  return None


def jit(fun, **kwargs):
  """`jax.jit` with `options()`."""
  return jax.jit(fun, compiler_options=options(), **kwargs)
