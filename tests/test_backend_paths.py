"""The CPU-only paths are chosen by the platform a program is lowered for:
exported here (no GPU needed) for CPU they are in, for CUDA and TPU they are
out, and on CPU they cost no conditional."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sgc_jax.core import checkpoint
from sgc_jax.models import conv, vqgan
from sgc_jax.runtime import compiler

_SIGNATURE = re.compile(
    r"stablehlo\.convolution.*: \(tensor<(\w+)>, tensor<(\w+)>\) -> tensor<(\w+)>")


def _module(fn, platforms, *args):
  return jax.export.export(jax.jit(fn), platforms=platforms)(*args).mlir_module()


def _convolutions(module):
  """Each convolution's (input, kernel) -> output shapes, e.g. ('2x2x2x5', '3x3x5x7', '2x2x2x7')."""
  return sorted(tuple(shape.removesuffix("xf32") for shape in match.groups())
                for match in _SIGNATURE.finditer(module))


X, W = jnp.ones((2, 2, 2, 5)), jnp.ones((3, 3, 5, 7))


def _tiny_conv(x, w):  # 2x2 outputs: the im2col case on CPU
  dn = lax.conv_dimension_numbers(X.shape, W.shape, ("NHWC", "HWIO", "NHWC"))  # as nn.Conv's
  return conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)


def test_im2col_only_where_lowered_for_cpu():
  on_cpu = _module(_tiny_conv, ["cpu"], X, W)
  assert _convolutions(on_cpu) == [] and on_cpu.count("stablehlo.dot_general") == 1
  for platform in ("cuda", "tpu"):
    module = _module(_tiny_conv, [platform], X, W)
    assert _convolutions(module) == [("2x2x2x5", "3x3x5x7", "2x2x2x7")]
    assert "dot_general" not in module
  both = _module(_tiny_conv, ["cpu", "cuda"], X, W)
  assert _convolutions(both) and "stablehlo.dot_general" in both


UPSAMPLE = vqgan.Upsample(jnp.float32)
MAP = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 5, 6)), jnp.float32)
PARAMS = UPSAMPLE.init(jax.random.PRNGKey(0), MAP)
SUBPIXEL = ("3x4x5x6", "2x2x6x6", "3x4x5x6")  # one output phase, on the map itself
UPSAMPLED = ("3x8x10x6", "3x3x6x6", "3x8x10x6")


def _param_grad(params, x):
  return jax.grad(lambda p: jnp.sum(UPSAMPLE.apply(p, x) ** 2))(params)


def test_the_upsample_convolves_the_map_itself_only_where_lowered_for_cpu():
  assert _convolutions(_module(UPSAMPLE.apply, ["cpu"], PARAMS, MAP)) == [SUBPIXEL] * 4
  assert _convolutions(_module(UPSAMPLE.apply, ["cuda"], PARAMS, MAP)) == [UPSAMPLED]
  assert set(_convolutions(_module(UPSAMPLE.apply, ["cpu", "cuda"], PARAMS, MAP))) == \
      {SUBPIXEL, UPSAMPLED}
  # The kernel's gradient: four 2x2 kernels' on CPU, the 3x3 kernel's elsewhere.
  assert _convolutions(_module(_param_grad, ["cpu"], PARAMS, MAP)) == \
      [SUBPIXEL] * 4 + [("3x4x5x6", "3x4x5x6", "2x2x6x6")] * 4
  assert _convolutions(_module(_param_grad, ["cuda"], PARAMS, MAP)) == \
      sorted([UPSAMPLED, ("3x8x10x6", "3x8x10x6", "3x3x6x6")])


def test_both_upsample_paths_give_the_same_values_and_gradients(monkeypatch):
  def value_and_grad(params, x):
    return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(UPSAMPLE.apply(p, x))), (0, 1))(
        params, x)
  on_cpu = jax.jit(value_and_grad)(PARAMS, MAP)
  monkeypatch.setattr(lax, "platform_dependent", lambda *args, cpu, default: default(*args))
  elsewhere = jax.jit(value_and_grad)(PARAMS, MAP)
  chex.assert_trees_all_close(on_cpu, elsewhere, rtol=1e-4, atol=1e-4)


def test_a_program_for_cpu_compiles_to_its_branch_alone():
  def loss(params, x, w):
    return jnp.sum(UPSAMPLE.apply(params, x)) + jnp.sum(_tiny_conv(x[:, :2, :2, :5], w))
  text = jax.jit(jax.value_and_grad(loss, (0, 2))).lower(PARAMS, MAP, W).compile().as_text()
  assert " conditional(" not in text
  # The upsample's 4 phases and their 4 kernel gradients; im2col's GEMM and its gradient.
  assert text.count(" convolution(") == 8 and text.count(" dot(") == 2


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_the_cpu_compiler_options_and_checkpoint_handler_are_off_elsewhere(
    monkeypatch, platform):
  registered = []
  monkeypatch.setattr(checkpoint.ocp.type_handlers, "register_type_handler",
                      lambda *args, **kwargs: registered.append(args))
  monkeypatch.setattr(jax, "default_backend", lambda: platform)
  assert compiler.options() is None
  checkpoint._save_replicas_whole_on_cpu.__wrapped__()
  assert registered == []
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  checkpoint._save_replicas_whole_on_cpu.__wrapped__()
  assert [args[0] for args in registered] == [jax.Array]
