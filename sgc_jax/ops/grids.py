"""Pixel maps and the token grid: a class map's labels per token, an image
averaged to a coarser grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp

UNLABELED = -1  # a token whose patch has no clear class

def grid_shape(grid: int | tuple[int, int]) -> tuple[int, int]:
  """A token grid as (rows, columns): an int is a square grid."""
  return (grid, grid) if isinstance(grid, int) else tuple(grid)


def token_labels(segmentation: jax.Array, grid: int | tuple[int, int], num_classes: int,
                 threshold: float = 0.5, ignore_label: int = 255) -> jax.Array:
  """[B, H, W] pixel classes -> [B, rows, columns] token classes by majority
  vote (`grid`: rows, columns, or one int for a square grid).

  A token whose majority class covers less than `threshold` of its patch, or
  whose majority is the ignore label, is UNLABELED (-1).
  """
  batch, height, width = segmentation.shape
  rows, columns = grid_shape(grid)
  ph, pw = height // rows, width // columns
  patches = segmentation.reshape(batch, rows, ph, columns, pw).transpose(0, 1, 3, 2, 4)
  patches = patches.reshape(batch, rows, columns, ph * pw).astype(jnp.int32)
  classes = jnp.where(patches == ignore_label, num_classes, patches)
  votes = jax.nn.one_hot(classes, num_classes + 1, dtype=jnp.float32).sum(-2)
  majority = jnp.argmax(votes, -1)
  share = jnp.max(votes, -1) / (ph * pw)
  labeled = (majority < num_classes) & (share >= threshold)
  return jnp.where(labeled, majority, UNLABELED).astype(jnp.int32)


def area_downsample(images, factor: int):
  """The mean of every factor x factor block of [B, H, W, C] images: what a
  level's own picture is trained on and measured against."""
  b, h, w, c = images.shape
  return images.reshape(b, h // factor, factor, w // factor, factor, c).mean((2, 4))
