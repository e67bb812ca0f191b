"""L2 normalisation along an axis, in JAX (NumPy's, for the k-means done once
over totals, is `kmeans.unit_rows`).

Two formulas, which round differently (and so do their gradients), each kept
for the models whose runs depend on it: `l2_normalize` (torch's F.normalize:
SlotCon) and `divide_by_norm` (PAT). ACSeg's `models.acseg.l2_normalize` is a
third, `l2_normalize` but for its x * x (see there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along `axis` (torch's F.normalize), as
  x * rsqrt(max(sum(x²), eps²))."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  # rsqrt of the clamped square keeps the gradient finite at x = 0.
  return x * lax.rsqrt(jnp.maximum(sq, eps * eps))


def divide_by_norm(x: jax.Array, min_norm: float = 1e-6) -> jax.Array:
  """x / max(||x||, min_norm) along the last axis, dividing by the norm itself."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), min_norm)
