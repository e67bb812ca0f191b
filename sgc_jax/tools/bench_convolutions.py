"""The convolutions of the taming VQGAN at 64 px, timed alone: `python -m sgc_jax.tools.bench convolutions`.

    python -m sgc_jax.tools.bench convolutions [--batch_size=8]

For each 3x3 convolution shape of configs/bench_taming64.py (NHWC, float32),
the GFLOP/s of its forward pass, input gradient and kernel gradient compiled
with XLA's default options and with `sgc_jax/runtime/compiler.py`'s, beside an f32 GEMM
of about the same work: the machine's reference rate. Each figure is the best
of 10 calls. The upsampling convolutions also get a row as this library runs
them (`models/conv.upsample2_conv3x3`), whose GFLOP/s count the plain
convolution's FLOPs, so that it compares with the row above it.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax import lax

from sgc_jax.models import conv
from sgc_jax.runtime import compiler
from sgc_jax.tools.versus import available_cores, cpu_description, read_cpuinfo

_NHWC = ("NHWC", "HWIO", "NHWC")
# (map size, input channels, output channels, upsampled first)
SHAPES = ((64, 64, 64, False), (64, 128, 64, False), (64, 128, 128, False),
          (32, 128, 128, False), (16, 256, 256, False), (8, 256, 256, False),
          (32, 128, 128, True))
REPEATS = 10


def machine() -> str:
  model, simd = cpu_description(read_cpuinfo())
  return f"{model} ({simd}), {available_cores()} cores"


def _best_seconds(compiled, *args) -> float:
  jax.block_until_ready(compiled(*args))
  best = float("inf")
  for _ in range(REPEATS):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    best = min(best, time.perf_counter() - start)
  return best


def _plain(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


def _doubled(x, w):
  return _plain(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), w)


def _passes(function):
  """The forward pass, input gradient and kernel gradient, each of (x, w, cotangent)."""
  return (lambda x, w, g: function(x, w),
          lambda x, w, g: jax.vjp(lambda x_: function(x_, w), x)[1](g)[0],
          lambda x, w, g: jax.vjp(lambda w_: function(x, w_), w)[1](g)[0])


def _rates(function, options, x, w, g, flops: float) -> list[str]:
  return [f"{flops / _best_seconds(jax.jit(fn).lower(x, w, g).compile(options), x, w, g) / 1e9:.0f}"
          for fn in _passes(function)]


def gemm_rate(flops: float) -> float:
  """GFLOP/s of a [n, n] x [n, n] float32 GEMM of about `flops`, compiled with our options."""
  n = max(256, round((flops / 2) ** (1 / 3) / 64) * 64)
  a = jnp.ones((n, n), jnp.float32)
  compiled = jax.jit(jnp.matmul).lower(a, a).compile(compiler.options())
  return 2 * n ** 3 / _best_seconds(compiled, a, a) / 1e9


def convolutions(batch_size: int) -> tuple[list[str], list[list[str]]]:
  """(header, rows): GFLOP/s per shape and pass under XLA's defaults and ours."""
  header = ["map", "channels", "path", "GFLOP", "fwd default", "fwd ours",
            "input grad default", "input grad ours", "kernel grad default",
            "kernel grad ours", "GEMM"]
  rows = []
  key = jax.random.PRNGKey(0)
  for size, cin, cout, upsampled in SHAPES:
    out = 2 * size if upsampled else size
    x = jax.random.normal(key, (batch_size, size, size, cin), jnp.float32)
    w = jax.random.normal(key, (3, 3, cin, cout), jnp.float32) * 0.02
    g = jnp.ones((batch_size, out, out, cout), jnp.float32)
    flops = 2.0 * batch_size * out * out * 9 * cin * cout
    paths = [("upsample + conv", _doubled), ("upsample2_conv3x3", conv.upsample2_conv3x3)] \
        if upsampled else [("conv", _plain)]
    gemm = f"{gemm_rate(flops):.0f}"
    for path, function in paths:
      default, ours = _rates(function, None, x, w, g, flops), \
          _rates(function, compiler.options(), x, w, g, flops)
      rows.append([f"{out}x{out}", f"{cin}->{cout}", path, f"{flops / 1e9:.3g}",
                   default[0], ours[0], default[1], ours[1], default[2], ours[2], gemm])
  return header, rows
