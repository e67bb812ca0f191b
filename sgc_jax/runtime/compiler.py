"""The XLA options this library compiles its programs with.

On CPU, convolutions run on XLA's own (Eigen) kernels; matrix products and
reductions stay on YNNPACK, XLA:CPU's default for all three. YNNPACK splits a
convolution's work over blocks of 64 output channels: on this project's 2-core
AMD EPYC (AVX-512, JAX 0.10.2) a 3x3 convolution with 64 output channels on
64x64 maps of 8 images ran at 107 GFLOP/s on two cores and on one alike, and
its kernel gradients at about half the GEMM rate. Eigen ran the same shapes at
172-182 forward and input gradient against a GEMM's 208 (`python -m
sgc_jax.tools.bench convolutions` prints both, for every shape of the taming VQGAN).
Other platforms keep their defaults.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


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
