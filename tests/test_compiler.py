"""The CPU compiler options: convolutions on XLA's own kernels, same results."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sgc_jax.runtime import compiler
from sgc_jax.tools import synthetic
from tests.test_train import tiny_config

_DN = ("NHWC", "HWIO", "NHWC")


def _ynn_convolutions(hlo_text: str) -> int:
  """Convolutions inside the YNNPACK fusions of an optimised HLO module."""
  ynn = {re.search(r"calls=%([\w.\-]+)", line).group(1)
         for line in hlo_text.splitlines() if '"kind":"__ynn_fusion"' in line}
  count, computation = 0, None
  for line in hlo_text.splitlines():
    if not line.startswith(" ") and "{" in line:
      computation = line.lstrip("%").split()[0]
    elif computation in ynn and " convolution(" in line:
      count += 1
  return count


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)


def test_cpu_convolutions_leave_ynnpack_with_the_same_values_and_gradients():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 64)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 64, 64)) / 24, jnp.float32)
  loss = lambda x, w: jnp.sum(jnp.sin(_conv(x, w)))
  default = jax.jit(jax.value_and_grad(loss, (0, 1)))
  ours = compiler.jit(jax.value_and_grad(loss, (0, 1)))
  # XLA's default puts the convolutions in YNNPACK fusions; ours keeps none there.
  assert _ynn_convolutions(default.lower(x, w).compile().as_text()) == 3
  assert _ynn_convolutions(ours.lower(x, w).compile().as_text()) == 0
  chex.assert_trees_all_close(ours(x, w), default(x, w), rtol=2e-5, atol=2e-4)


def test_the_train_step_compiles_with_the_options(data_dir):
  _, compiled = synthetic.compiled_train_step(tiny_config(data_dir), batch_size=8)
  text = compiled.as_text()
  assert " convolution(" in text and _ynn_convolutions(text) == 0
  assert compiler.options() == compiler.CPU_OPTIONS


def test_an_option_this_jaxlib_rejects_leaves_xla_defaults(monkeypatch):
  monkeypatch.setattr(compiler, "CPU_OPTIONS",
                      {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION_TYPE"})
  compiler._cpu_options_accepted.cache_clear()
  try:
    assert compiler.options() is None
    assert float(compiler.jit(lambda x: x * 2)(jnp.float32(3))) == 6
  finally:
    compiler._cpu_options_accepted.cache_clear()


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_other_platforms_keep_their_defaults(platform, monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: platform)
  assert compiler.options() is None
