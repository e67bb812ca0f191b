"""Convolution around XLA:CPU's weak spot: tiny maps.

With the compiler options of `sgc_jax/runtime/compiler.py` (convolutions on XLA's Eigen
kernels), XLA:CPU runs a convolution and both its gradients near its GEMM rate
on maps of moderate size, but not on tiny ones: a 3x3, 512-channel convolution
on 2x2 maps of 16 images took 148 ms for its two gradients, against 4.6 ms as
one GEMM (JAX 0.10.2, 2-core AMD EPYC with AVX-512). A convolution with at most
`IM2COL_MAX_PIXELS` output pixels per image is therefore one GEMM over the
gathered taps (im2col), whose gradients autodiff makes GEMMs too. ResNets meet
such maps in their last stage on small images. Every other convolution, every
one over maps of symbolic size (a shape-polymorphic `jax.export`) and every one
on GPU and TPU is XLA's own.

The CPU paths here are `lax.platform_dependent` branches, chosen by the
platform a program is lowered for, not by the backend it was traced on: a
program exported on a CPU host for CUDA, or jitted for CPU devices on a GPU
host, gets the right path. A single-platform lowering keeps only its branch
(XLA folds the constant-index case away: no conditional is compiled); a
multi-platform export carries both.

(Earlier versions summed large kernel gradients over batch chunks, and before
that replaced every kernel gradient by per-tap GEMMs; both were workarounds
for XLA:CPU's default YNNPACK convolutions, and both measured slower than
Eigen's own kernel gradient: 3x3, 128 -> 64 channels, 64x64 maps of 8 images,
both gradients 75 ms chunked against 56 ms.)
"""

from __future__ import annotations

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


def _tiny_map(x_shape, w_shape, strides, padding) -> bool:
  """Whether the output map has at most IM2COL_MAX_PIXELS pixels. Sides of
  symbolic size (`jax.export` of any image size) make it False: comparing them
  with a constant is undecidable while tracing, XLA's convolution takes every
  size, and what the GEMM saves on tiny maps is mostly training's gradients,
  which are traced at concrete sizes."""
  if not all(isinstance(side, int) for side in x_shape[1:3]):
    return False
  pixels = ((x_shape[1] + sum(padding[0]) - w_shape[0]) // strides[0] + 1) * (
      (x_shape[2] + sum(padding[1]) - w_shape[1]) // strides[1] + 1)
  return pixels <= IM2COL_MAX_PIXELS


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None):
  """Drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` calls it."""
  im2col_case = (lhs.ndim == 4 and
                 feature_group_count == 1 and not isinstance(padding, str) and
                 all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))) and
                 dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
                 and rhs.shape[0] * rhs.shape[1] > 1 and
                 _tiny_map(lhs.shape, rhs.shape, window_strides, padding))
  def xla(lhs, rhs):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision)
  if not im2col_case:
    return xla(lhs, rhs)
  strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
  return lax.platform_dependent(
      lhs, rhs, cpu=lambda lhs, rhs: _im2col(lhs, rhs, strides, pads), default=xla)


def _subpixel_kernels(kernel):
  """The 2x2 kernels of the four output phases of a 3x3 kernel applied to a
  nearest-upsampled map, with each phase's padding: along one axis, even
  outputs see the previous and the same input (taps 0 and 1+2), odd ones the
  same and the next (taps 0+1 and 2)."""
  def halves(k, axis):
    first, middle, last = (lax.index_in_dim(k, i, axis) for i in range(3))
    return ((jnp.concatenate([first, middle + last], axis), (1, 0)),
            (jnp.concatenate([first + middle, last], axis), (0, 1)))
  return [[(k2, (pad_rows, pad_cols)) for k2, pad_cols in halves(k1, 1)]
          for k1, pad_rows in halves(kernel, 0)]


def _check_upsample_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                         dimension_numbers, feature_group_count):
  if (tuple(window_strides) != (1, 1) or rhs.shape[:2] != (3, 3) or feature_group_count != 1
      or tuple(map(tuple, padding)) != ((1, 1), (1, 1)) or lhs.ndim != 4
      or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
      or dimension_numbers not in (None, lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                                     _NHWC))):
    raise ValueError("upsample2_conv3x3 computes a 3x3, stride 1, padding 1, undilated "
                     f"convolution of NHWC maps, got kernel {rhs.shape}, strides "
                     f"{window_strides}, padding {padding}, dilations {lhs_dilation}, "
                     f"{rhs_dilation}, dimension numbers {dimension_numbers}")


def upsample2_conv3x3(lhs, rhs, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                      lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                      feature_group_count=1, precision=None):
  """A 3x3 'SAME' convolution of `lhs` upsampled x2 by nearest neighbour,
  computed on `lhs` itself: each of the four output phases is a 2x2
  convolution, 16 taps against 36, the same sums (2.25x fewer FLOPs, no
  upsampled map). A `conv_general_dilated` for flax's `nn.Conv` given the
  map before upsampling; it takes only that case."""
  _check_upsample_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                       dimension_numbers, feature_group_count)
  batch, height, width, _ = lhs.shape
  phases = jnp.stack([
      jnp.stack([lax.conv_general_dilated(lhs, k, (1, 1), pad, dimension_numbers=_NHWC,
                                          precision=precision)
                 for k, pad in row]) for row in _subpixel_kernels(rhs)])
  # [row phase, column phase, B, H, W, D] -> [B, 2H, 2W, D]
  return phases.transpose(2, 3, 0, 4, 1, 5).reshape(batch, 2 * height, 2 * width, -1)


def upsample2(x):
  """Nearest-neighbour x2 as a broadcast: its gradient is a sum, where
  `jax.image.resize`'s gather would give a scatter (slow on CPU)."""
  batch, height, width, channels = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
  return x.reshape(batch, 2 * height, 2 * width, channels)


def upsampled_conv3x3(lhs, rhs, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                      lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                      feature_group_count=1, precision=None):
  """`upsample2_conv3x3`'s convolution on the platform it is lowered for: on
  CPU `upsample2_conv3x3` itself (measured 2.1-2.2x faster there, forward and
  backward); elsewhere, where it was never measured, the reference's
  computation: XLA's convolution of the upsampled map. Both take the same
  kernel, so a model's parameters do not depend on the platform."""
  _check_upsample_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                       dimension_numbers, feature_group_count)

  def subpixel(lhs, rhs):
    return upsample2_conv3x3(lhs, rhs, precision=precision)

  def xla(lhs, rhs):
    return lax.conv_general_dilated(upsample2(lhs), rhs, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=_NHWC, precision=precision)
  return lax.platform_dependent(lhs, rhs, cpu=subpixel, default=xla)
