"""Convolution that avoids XLA:CPU's one weak spot: tiny maps.

XLA:CPU runs a convolution, its input gradient and its kernel gradient near its
GEMM rate on maps of some size (measured, JAX 0.10.2, 2-core AMD EPYC with
AVX-512: 96-104 GFLOP/s forward, 85-96 input gradient, 78-93 kernel gradient
against 89-103 for a GEMM of the same size), but far off it on maps of a few
pixels: a 3x3, 512-channel convolution on 2x2 maps of 16 images ran at 2.2
GFLOP/s, 138 ms, against 2.3 ms as one GEMM (4x4 maps already run at 137). A
convolution with at most `IM2COL_MAX_PIXELS` output pixels per image is
therefore one GEMM over the gathered taps (im2col), whose gradients autodiff
makes GEMMs too; every other convolution, and every one on GPU and TPU, is
XLA's own. ResNets meet such maps in their last stage on small images.

(An earlier version also replaced every kernel gradient by per-tap GEMMs; on
this XLA that measured 1.2x-1.7x slower per train step with 2-3x the peak
memory, so XLA's kernel gradient is used.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
IM2COL_MAX_PIXELS = 4


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


def _output_pixels(x_shape, w_shape, strides, padding) -> int:
  return ((x_shape[1] + sum(padding[0]) - w_shape[0]) // strides[0] + 1) * (
      (x_shape[2] + sum(padding[1]) - w_shape[1]) // strides[1] + 1)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None):
  """Drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` calls it."""
  im2col_case = (jax.default_backend() == "cpu" and lhs.ndim == 4 and
                 feature_group_count == 1 and not isinstance(padding, str) and
                 rhs.shape[0] * rhs.shape[1] > 1 and
                 all(d == 1 for d in (lhs_dilation or (1, 1))) and
                 all(d == 1 for d in (rhs_dilation or (1, 1))) and
                 dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
                 and _output_pixels(lhs.shape, rhs.shape, window_strides, padding)
                 <= IM2COL_MAX_PIXELS)
  if im2col_case:
    return _im2col(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision)
