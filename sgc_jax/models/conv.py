"""Convolution around XLA:CPU's two weak spots: tiny maps and large kernel gradients.

XLA:CPU runs a convolution, its input gradient and its kernel gradient near its
GEMM rate on maps of moderate size (measured, JAX 0.10.2, 2-core AMD EPYC with
AVX-512: 96-104 GFLOP/s forward, 85-96 input gradient, 70-93 kernel gradient
against 89-103 for a GEMM of the same size), but not at the two ends:
  - tiny maps: a 3x3, 512-channel convolution on 2x2 maps of 16 images ran at
    2.2 GFLOP/s, 138 ms, against 2.3 ms as one GEMM (4x4 maps already run at
    137). A convolution with at most `IM2COL_MAX_PIXELS` output pixels per image
    is one GEMM over the gathered taps (im2col), whose gradients autodiff makes
    GEMMs too. ResNets meet such maps in their last stage on small images.
  - large kernel gradients: once an operand passes about 8 MiB the kernel
    gradient falls to about half its rate (3x3, 128 channels, 64x64 maps of 8
    images: 35 GFLOP/s, where the same in 4 batch chunks ran at 73 and 64
    channels at 70-92). Above `KERNEL_GRADIENT_CHUNK_BYTES` it is therefore a
    sum of XLA's kernel gradients over batch chunks of at most that size.
Every other convolution, and every one on GPU and TPU, is XLA's own.

(An earlier version replaced every kernel gradient by per-tap GEMMs; on this
XLA that measured 1.2x-1.7x slower per train step with 2-3x the peak memory.)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
IM2COL_MAX_PIXELS = 4
KERNEL_GRADIENT_CHUNK_BYTES = 8 << 20


def _im2col(x, w, strides, padding):
  kh, kw, cin, cout = w.shape
  sh, sw = strides
  batch = x.shape[0]
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_h = (x.shape[1] - kh) // sh + 1
  out_w = (x.shape[2] - kw) // sw + 1
  taps = [lax.slice(x, (0, i, j, 0),
                    (batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, cin),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
  return jnp.einsum("nhwk,kd->nhwd", jnp.concatenate(taps, -1),
                    w.reshape(kh * kw * cin, cout))


def _output_pixels(x_shape, w_shape, strides, padding, rhs_dilation=None) -> int:
  dh, dw = rhs_dilation or (1, 1)
  return ((x_shape[1] + sum(padding[0]) - dh * (w_shape[0] - 1) - 1) // strides[0] + 1) * (
      (x_shape[2] + sum(padding[1]) - dw * (w_shape[1] - 1) - 1) // strides[1] + 1)


def _output_bytes(x, w, strides, padding, rhs_dilation) -> int:
  return (x.shape[0] * _output_pixels(x.shape, w.shape, strides, padding, rhs_dilation)
          * w.shape[3] * x.dtype.itemsize)


def _native(x, w, strides, padding, rhs_dilation):
  return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=rhs_dilation,
                                  dimension_numbers=_NHWC)


def _batch_chunks(x_shape, g_shape, itemsize: int) -> int:
  """The fewest batch chunks (a divisor of the batch) whose input and output
  cotangent each stay within KERNEL_GRADIENT_CHUNK_BYTES."""
  batch = x_shape[0]
  per_example = max(math.prod(x_shape[1:]), math.prod(g_shape[1:])) * itemsize
  for chunks in range(1, batch + 1):
    if batch % chunks == 0 and per_example * (batch // chunks) <= KERNEL_GRADIENT_CHUNK_BYTES:
      return chunks
  return batch


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _chunked_kernel_gradient(x, w, strides, padding, rhs_dilation):
  return _native(x, w, strides, padding, rhs_dilation)


def _chunked_fwd(x, w, strides, padding, rhs_dilation):
  return _native(x, w, strides, padding, rhs_dilation), (x, w)


def _chunked_bwd(strides, padding, rhs_dilation, residuals, g):
  x, w = residuals
  dx, = jax.vjp(lambda x_: _native(x_, w, strides, padding, rhs_dilation), x)[1](g)
  chunks = _batch_chunks(x.shape, g.shape, x.dtype.itemsize)
  size = x.shape[0] // chunks
  dw = None
  for i in range(chunks):
    part = jax.vjp(lambda w_: _native(x[i * size:(i + 1) * size], w_, strides, padding,
                                      rhs_dilation), w)[1](g[i * size:(i + 1) * size])[0]
    dw = part if dw is None else dw + part
  return dx, dw


_chunked_kernel_gradient.defvjp(_chunked_fwd, _chunked_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None):
  """Drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` calls it."""
  plain_case = (jax.default_backend() == "cpu" and lhs.ndim == 4 and
                feature_group_count == 1 and not isinstance(padding, str) and
                all(d == 1 for d in (lhs_dilation or (1, 1))) and
                dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  im2col_case = (plain_case and rhs.shape[0] * rhs.shape[1] > 1 and
                 all(d == 1 for d in (rhs_dilation or (1, 1))) and
                 _output_pixels(lhs.shape, rhs.shape, window_strides, padding)
                 <= IM2COL_MAX_PIXELS)
  if im2col_case:
    return _im2col(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
  # A symbolic batch (an exported function) is inference: no kernel gradient.
  if plain_case and isinstance(lhs.shape[0], int) and max(
      math.prod(lhs.shape) * lhs.dtype.itemsize, _output_bytes(lhs, rhs, window_strides, padding,
                                                  rhs_dilation)) > KERNEL_GRADIENT_CHUNK_BYTES:
    return _chunked_kernel_gradient(lhs, rhs, tuple(window_strides),
                                    tuple(tuple(p) for p in padding),
                                    tuple(rhs_dilation or (1, 1)))
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision)
