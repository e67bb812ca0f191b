"""Augmented views of an image and the geometry that links them.

A view is a crop box of the source image (y0, x0, y1, x1, in [0, 1] source
coordinates) resized to a square, optionally flipped left-right. Keeping the
boxes and flips lets a loss find, for each token of one view, the token of the
other view that sees the same source point (`token_correspondence`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import PIL.Image

Box = np.ndarray  # float32 [4]: y0, x0, y1, x1 in source coordinates in [0, 1]


@dataclasses.dataclass(frozen=True)
class CropSpec:
  """Random resized crop: area share and aspect-ratio ranges of the crop."""
  min_area: float = 0.35
  max_area: float = 1.0
  min_aspect: float = 3 / 4
  max_aspect: float = 4 / 3
  flip: bool = True
  # Second view: at least this share of its area overlaps the first view.
  min_overlap: float = 0.3


def sample_box(rng: np.random.Generator, spec: CropSpec, height: int,
               width: int) -> Box:
  """A random box of the given area share and aspect ratio, inside the image."""
  area = rng.uniform(spec.min_area, spec.max_area)
  log_aspect = rng.uniform(math.log(spec.min_aspect), math.log(spec.max_aspect))
  aspect = math.exp(log_aspect) * width / height  # in normalised units
  h = min(1.0, math.sqrt(area / aspect))
  w = min(1.0, math.sqrt(area * aspect))
  y0, x0 = rng.uniform(0.0, 1.0 - h), rng.uniform(0.0, 1.0 - w)
  return np.array([y0, x0, y0 + h, x0 + w], np.float32)


def overlap_box(a: Box, b: Box) -> Box:
  """The intersection of two boxes (empty boxes have y1 <= y0 or x1 <= x0)."""
  return np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]),
                   min(a[3], b[3])], np.float32)


def _area(box: Box) -> float:
  return max(0.0, float(box[2] - box[0])) * max(0.0, float(box[3] - box[1]))


def sample_overlapping_box(rng: np.random.Generator, spec: CropSpec,
                           first: Box, height: int, width: int,
                           attempts: int = 20) -> Box:
  """A box whose overlap with `first` covers at least `min_overlap` of it."""
  for _ in range(attempts):
    box = sample_box(rng, spec, height, width)
    if _area(overlap_box(first, box)) >= spec.min_overlap * _area(box):
      return box
  return first.copy()  # always valid: full overlap


def crop_resize(array: np.ndarray, box: Box, size: int | tuple[int, int], flip: bool,
                nearest: bool) -> np.ndarray:
  """Crops `box` out of an [H, W(, C)] uint8/uint16 array and resizes it to
  size² (or to (height, width))."""
  out_height, out_width = (size, size) if isinstance(size, int) else size
  height, width = array.shape[:2]
  pixel_box = (float(box[1]) * width, float(box[0]) * height,
               float(box[3]) * width, float(box[2]) * height)
  resample = PIL.Image.Resampling.NEAREST if nearest else PIL.Image.Resampling.BILINEAR
  if array.dtype == np.uint16:  # Pillow keeps 16-bit maps exact in mode I;16
    image = PIL.Image.fromarray(array.astype(np.uint16), mode="I;16")
  else:
    image = PIL.Image.fromarray(array)
  out = np.asarray(image.resize((out_width, out_height), resample=resample, box=pixel_box))
  return out[:, ::-1] if flip else out


def centred_box(height: int, width: int, aspect: float) -> Box:
  """The largest centred box of `aspect` (width / height) in an image, as
  fractions [y0, x0, y1, x1]."""
  box_height, box_width = min(height, width / aspect), min(width, height * aspect)
  y0, x0 = (height - box_height) / 2 / height, (width - box_width) / 2 / width
  return np.array([y0, x0, y0 + box_height / height, x0 + box_width / width], np.float32)


def token_correspondence(box_a, flip_a, box_b, flip_b, grid: int, xp=np):
  """For each token of view A, the token of view B that sees the same point.

  Works on numpy or jax.numpy (`xp`), and on leading batch dimensions.

  Args:
    box_a, box_b: [..., 4] crop boxes of the two views.
    flip_a, flip_b: [...] booleans.
    grid: tokens per side of both views.

  Returns:
    index [..., grid*grid] int32 flat token index into view B, and
    valid [..., grid*grid] bool: the source point of A's token centre is inside B.
  """
  centres = (xp.arange(grid, dtype=xp.float32) + 0.5) / grid
  vy, vx = xp.meshgrid(centres, centres, indexing="ij")
  vy, vx = vy.reshape(-1), vx.reshape(-1)
  box_a, box_b = xp.asarray(box_a)[..., None, :], xp.asarray(box_b)[..., None, :]
  flip_a, flip_b = xp.asarray(flip_a)[..., None], xp.asarray(flip_b)[..., None]
  vx_a = xp.where(flip_a, 1.0 - vx, vx)
  source_y = box_a[..., 0] + vy * (box_a[..., 2] - box_a[..., 0])
  source_x = box_a[..., 1] + vx_a * (box_a[..., 3] - box_a[..., 1])
  by = (source_y - box_b[..., 0]) / (box_b[..., 2] - box_b[..., 0])
  bx = (source_x - box_b[..., 1]) / (box_b[..., 3] - box_b[..., 1])
  bx = xp.where(flip_b, 1.0 - bx, bx)
  valid = (by >= 0) & (by < 1) & (bx >= 0) & (bx < 1)
  row = xp.clip(xp.floor(by * grid), 0, grid - 1).astype(xp.int32)
  col = xp.clip(xp.floor(bx * grid), 0, grid - 1).astype(xp.int32)
  return row * grid + col, valid
