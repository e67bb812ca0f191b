"""Frozen sub-trees of the parameters (pretrained backbones): no updates, no optimizer state.

Leaves are named by their path joined with "/" (`backbone/conv1/kernel`), and
a pattern freezes a leaf when it matches the whole name (`re.fullmatch`, as the
sharding rules): `backbone/.*` freezes the backbone.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import optax


def mask(params, patterns: Sequence[str]):
  """A pytree of bools like `params`: True where a leaf's path matches a pattern."""
  compiled = [re.compile(pattern) for pattern in patterns]

  def frozen(path, _):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    return any(pattern.fullmatch(name) for pattern in compiled)

  return jax.tree.map_with_path(frozen, params)


def freeze(tx: optax.GradientTransformation,
           patterns: Sequence[str]) -> optax.GradientTransformation:
  """`tx` on the leaves no pattern matches; zero updates and no state for the rest.

  `tx` sees only the trainable leaves, so that e.g. its clipping by global norm
  ignores frozen gradients. Without patterns, `tx` itself.
  """
  if not patterns:
    return tx

  def labels(tree):
    return jax.tree.map(lambda frozen: "frozen" if frozen else "trained", mask(tree, patterns))

  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
