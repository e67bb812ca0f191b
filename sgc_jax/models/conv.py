"""Convolution with a fast kernel gradient on CPU.

XLA:CPU computes a convolution's kernel gradient (backprop-filter) about 6x
slower than the convolution itself (measured: 8-10 GFLOP/s against 54-67 on a
2-core x86 machine). Here the kernel gradient is a sum over the k·k kernel
taps of GEMMs that contract the batch and spatial axes, which runs at 25-75
GFLOP/s on the same machine; the forward pass and the input gradient stay
XLA's, except on tiny maps (`IM2COL_MAX_PIXELS`), where the convolution is one
GEMM over the gathered taps. On GPU and TPU the native paths are used unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


# At most this many output pixels per image, a convolution is one GEMM over the
# gathered taps (im2col): XLA:CPU's convolution falls far off its speed on tiny
# maps (measured: a 3x3, 512-channel convolution on 2x2 maps of 16 images at
# 2.2 GFLOP/s, 138 ms, against 2.3 ms as one GEMM; 4x4 maps already run at
# 137 GFLOP/s). ResNets meet such maps in their last stage on small images.
IM2COL_MAX_PIXELS = 4


def _taps(x, kernel_shape, strides, out_shape):
  """The k·k strided windows of padded x, each [N, out_h, out_w, cin]."""
  kh, kw, cin, _ = kernel_shape
  batch, out_h, out_w = out_shape
  sh, sw = strides
  return [lax.slice(x, (0, i, j, 0),
                    (batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, cin),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]


def _plain(x, w, strides, padding):
  kh, kw, cin, cout = w.shape
  out_h = (x.shape[1] + sum(padding[0]) - kh) // strides[0] + 1
  out_w = (x.shape[2] + sum(padding[1]) - kw) // strides[1] + 1
  if out_h * out_w > IM2COL_MAX_PIXELS or kh * kw == 1:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  columns = jnp.concatenate(_taps(x, w.shape, strides, (x.shape[0], out_h, out_w)), -1)
  return jnp.einsum("nhwk,kd->nhwd", columns, w.reshape(kh * kw * cin, cout))


def kernel_gradient(x, g, kernel_shape, strides, padding):
  """dL/dw of an NHWC/HWIO convolution, from its input x and output cotangent g."""
  cin, cout = kernel_shape[2:]
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  patches = _taps(x, kernel_shape, strides, g.shape[:3])
  g = g.reshape(-1, cout)
  taps = [jnp.einsum("nc,nd->cd", patch.reshape(-1, cin), g, preferred_element_type=jnp.float32)
          for patch in patches]
  return jnp.stack(taps).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, padding):
  return _plain(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
  return _plain(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, g):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x_: _plain(x_, w, strides, padding), x)
  dx, = input_vjp(g)
  dw = kernel_gradient(x, g, w.shape, strides, padding).astype(w.dtype)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None):
  """Drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` calls it."""
  plain_case = (jax.default_backend() == "cpu" and lhs.ndim == 4 and
                feature_group_count == 1 and not isinstance(padding, str) and
                all(d == 1 for d in (lhs_dilation or (1, 1))) and
                all(d == 1 for d in (rhs_dilation or (1, 1))) and
                dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not plain_case:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision)
  return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
