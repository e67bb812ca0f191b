"""The CPU convolution (im2col GEMMs on tiny maps) equals XLA's, with its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sgc_jax.models import conv


@pytest.mark.parametrize("kernel, stride, padding, size", [
    (3, 1, ((1, 1), (1, 1)), (9, 10)),
    # Maps of at most IM2COL_MAX_PIXELS outputs: one GEMM over the taps.
    (3, 1, ((1, 1), (1, 1)), (2, 2)),
    (3, 2, ((1, 1), (1, 1)), (3, 4)),  # a ResNet's strided 3x3 onto a 2x2 map
    (3, 1, ((1, 1), (1, 1)), (1, 1)),
    (1, 1, ((0, 0), (0, 0)), (9, 10)),
    (3, 2, ((0, 1), (0, 1)), (9, 10)),  # the VQGAN downsampling
    (4, 2, ((1, 1), (1, 1)), (9, 10)),  # the PatchGAN discriminator
    (4, 1, ((1, 1), (1, 1)), (9, 10)),
])
def test_gradients_equal_xla(kernel, stride, padding, size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, *size, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 7)), jnp.float32)
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  strides = (stride, stride)

  def loss(f, x, w):
    y = f(x, w, strides, padding, dimension_numbers=dn)
    return jnp.sum(jnp.sin(y))

  ours = jax.grad(lambda x, w: loss(conv.conv_general_dilated, x, w), (0, 1))(x, w)
  reference = jax.grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1))(x, w)
  np.testing.assert_allclose(conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn),
                             lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn),
                             rtol=1e-5, atol=1e-5)
  for a, b in zip(ours, reference):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, native", [((2, 2), False), ((3, 4), False), ((4, 4), True)])
def test_only_maps_of_at_most_four_output_pixels_take_the_gemm(size, native):
  x = jnp.zeros((2, *size, 5))
  w = jnp.zeros((3, 3, 5, 7))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  stride = (2, 2) if size == (3, 4) else (1, 1)
  # Lowered (here for CPU): a jaxpr carries the branches of every platform.
  module = jax.jit(lambda x, w: conv.conv_general_dilated(
      x, w, stride, ((1, 1), (1, 1)), dimension_numbers=dn)).lower(x, w).as_text()
  assert ("stablehlo.convolution" in module) == native


def test_a_large_convolution_exports_with_a_symbolic_batch():
  batch, = jax.export.symbolic_shape("b")
  w = jnp.zeros((3, 3, 128, 128))
  dn = lax.conv_dimension_numbers((1, 64, 64, 128), w.shape, ("NHWC", "HWIO", "NHWC"))
  exported = jax.export.export(jax.jit(lambda x: conv.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)))(
          jax.ShapeDtypeStruct((batch, 64, 64, 128), jnp.float32))
  assert exported.out_avals[0].shape[1:] == (64, 64, 128)


@pytest.mark.parametrize("stride", [1, 2])
def test_maps_of_symbolic_size_export_to_xlas_convolution(stride):
  """Whether a map of symbolic sides has at most IM2COL_MAX_PIXELS pixels is
  undecidable while tracing: it takes XLA's convolution at every size, the
  sizes where a concrete map takes the GEMM too (4x4 at stride 2: 2x2)."""
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(3, 3, 5, 7)), jnp.float32)
  strides, padding = (stride, stride), ((1, 1), (1, 1))
  dn = lax.conv_dimension_numbers((1, 4, 4, 5), w.shape, ("NHWC", "HWIO", "NHWC"))
  f = jax.jit(lambda x: conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn))
  batch, height, width = jax.export.symbolic_shape("b, h, w")
  exported = jax.export.export(f, platforms=("cpu",))(
      jax.ShapeDtypeStruct((batch, 4 * height, 4 * width, 5), jnp.float32))
  assert "stablehlo.convolution" in exported.mlir_module()
  assert str(exported.out_avals[0]) == ("float32[b,4*h,4*w,7]" if stride == 1
                                        else "float32[b,2*h,2*w,7]")
  for size in ((4, 4), (4, 12), (8, 8)):
    x = jnp.asarray(rng.normal(size=(2, *size, 5)), jnp.float32)
    np.testing.assert_allclose(exported.call(x), f(x), rtol=1e-5, atol=1e-5)


def _upsampled_then_convolved(x, w):
  doubled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return lax.conv_general_dilated(doubled, w, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 1, 1, 3), (3, 4, 4, 8)])
def test_upsample_conv_equals_convolving_the_upsampled_map(shape):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 6)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(shape[0], 2 * shape[1], 2 * shape[2], 6)), jnp.float32)
  ours, grads = jax.vjp(conv.upsample2_conv3x3, x, w)
  reference, grads_ref = jax.vjp(_upsampled_then_convolved, x, w)
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads(cotangent), grads_ref(cotangent)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_upsample_conv_refuses_other_convolutions():
  x, w = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(ValueError, match="3x3, stride 1, padding 1"):
    conv.upsample2_conv3x3(x, w, (2, 2))
  with pytest.raises(ValueError, match="3x3, stride 1, padding 1"):
    conv.upsample2_conv3x3(x, w, rhs_dilation=(2, 2))
  with pytest.raises(ValueError, match="3x3, stride 1, padding 1"):
    conv.upsample2_conv3x3(x, w, dimension_numbers=lax.conv_dimension_numbers(
        x.shape, w.shape, ("NCHW", "HWIO", "NCHW")))
