"""models/group_norm.GroupNorm is flax's nn.GroupNorm: parameters, values, gradients."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.models.group_norm import GroupNorm


@pytest.mark.parametrize("shape, groups, dtype", [
    ((4, 8, 8, 64), 32, None),
    ((2, 5, 3, 96), 32, None),          # odd map, 3 channels per group
    ((3, 7, 64), 8, None),              # tokens [B, N, C]
    ((2, 6, 6, 64), 32, jnp.bfloat16),  # bfloat16 compute, float32 statistics
])
def test_equals_flax_group_norm(shape, groups, dtype):
  rng = np.random.default_rng(0)
  # An offset and a spread per channel: the E[x^2] - E[x]^2 variance must hold up.
  x = jnp.asarray(rng.normal(size=shape) * rng.uniform(0.5, 3, shape[-1])
                  + rng.normal(size=shape[-1]) * 2, jnp.float32)
  ours, reference = (GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype),
                     nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype))
  params = reference.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == \
      jax.tree.map(jnp.shape, params)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  y, y_ref = ours.apply(params, x), reference.apply(params, x)
  assert y.dtype == y_ref.dtype
  tolerance = 2e-2 if dtype == jnp.bfloat16 else 2e-5
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                             rtol=tolerance, atol=tolerance)
  if dtype is None:
    cotangent = jnp.asarray(rng.normal(size=shape), jnp.float32)
    grads = jax.vjp(ours.apply, params, x)[1](cotangent)
    grads_ref = jax.vjp(reference.apply, params, x)[1](cotangent)
    chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=1e-4)


def test_channels_that_do_not_split_into_groups_are_an_error():
  with pytest.raises(ValueError, match="48 channels do not split into 32 groups"):
    GroupNorm().init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 48)))
