"""RoIAlign with torchvision's semantics (`aligned=True` by default), for NHWC maps.

How SlotCon uses it (official code, `SlotCon.invaug` in `models/slotcon.py`):
the tensor aligned is each view's prototype score map (the cosine similarities
`dots` of `SemanticGrouping`, before the softmax), [N, K, h, w] there, one box per
image (batch index n for image n), `output_size=(h, w)` (the map's own size),
`spatial_scale=1`, `sampling_ratio=-1` (torchvision's default: adaptive) and
`aligned=True`. Afterwards each output is flipped horizontally when its view was.

Where the boxes come from (`data/transforms.py`): the two views are random
resized crops (i, j, h, w) of one image, in integer image pixels. Their overlap,
x in [max(left edges), min(right edges)] and likewise for y, is written in each
view's own frame as fractions of that crop's width and height: (x1, y1, x2, y2)
in [0, 1] when the crops overlap. Nothing clamps an empty overlap, so then
x2 <= x1 or y2 <= y1 (and values may leave [0, 1]). A flipped view's box is
mirrored, (1 - x2, y1, 1 - x1, y2), so it names the same image region in the
flipped crop. The model multiplies x by w and y by h: box units are feature
pixels, pixel j covering [j, j + 1) (its centre at j + 0.5).

What each output cell samples (torchvision's definition). Let the offset be
0.5 when aligned, else 0. The box in pixel-index coordinates (where pixel j's
centre is at j) runs from x1 * scale - offset to x2 * scale - offset, and
likewise in y; without `aligned`, a width or height below 1 is raised to 1.
It is cut into an out_h x out_w grid of equal bins. Bin (p, q) takes g_y x g_x
sample points on a regular grid inside it, at
  y = y_start + p * bin_h + (i + 0.5) * bin_h / g_y,  i = 0 .. g_y - 1
(x likewise), and its value is the sum of the samples divided by
max(g_y * g_x, 1). A sample with y < -1, y > H, x < -1 or x > W (or NaN) is 0
but still counts in the divisor; otherwise coordinates below 0 are raised to 0,
those in [H - 1, H] lowered to H - 1 (x likewise), and the value is the bilinear
interpolation of the four nearest pixel centres. g = sampling_ratio when it is
positive; otherwise g_y = ceil(roi_h / out_h) per box (g_x likewise), which is
0 or negative for an empty box under `aligned`, so the whole output is 0.

In SlotCon's case each bin is at most one feature pixel wide, so g = 1 for a
non-empty overlap: cell (p, q) is the bilinear value at the centre of the
(p, q)-th of h x w equal parts of the overlap. Cell (p, q) of both views
therefore looks at the same place of the original image once the flipped
views' outputs are flipped back (the 0.5 offset is what makes the mirror exact).
An empty overlap gives an all-zero map.

Fixed shapes: the adaptive g is data dependent, so samples run over a static
maximum per axis, `max_samples`, and those past a box's g are masked. The
default bound, ceil(H / out_h) by ceil(W / out_w), is exact for every box that
lies inside the map (1 in SlotCon's case). A box that would need more samples
per bin is sampled with the bound instead, i.e. as torchvision would with that
grid; `adaptive_grid` gives the exact per-box counts for checking on the host.

Bilinear interpolation and the bin average are separable, so the result is two
small matrix products with per-image interpolation matrices [out, H] and
[out, W]: no gather, differentiable in the features, batch parallel. As in
torchvision, no gradient flows to the boxes.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
  out = (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)
  if len(out) != 2 or min(out) < 1:
    raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
  return out


def _roi_geometry(boxes, spatial_scale, aligned, out_hw):
  """Start and size of the boxes in pixel-index coordinates, per axis: [N] each."""
  offset = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (boxes[:, k] * spatial_scale - offset for k in range(4))
  roi_w, roi_h = x2 - x1, y2 - y1
  if not aligned:
    # torchvision's non-aligned mode forces malformed boxes to at least 1x1.
    roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
  return (y1, roi_h / out_hw[0], roi_h), (x1, roi_w / out_hw[1], roi_w)


def _adaptive_count(roi, out):
  """torchvision's ceil(roi / out), with empty (<= 0, or NaN) boxes at 0."""
  q = roi / out
  # The cap only keeps the int cast defined (inf); callers clip far lower.
  q = jnp.where(q > 0, jnp.minimum(q, 2.0**30), 0.0)
  return jnp.ceil(q).astype(jnp.int32)


def adaptive_grid(boxes, output_size, spatial_scale=1.0, aligned=True):
  """Per-box sample grid (g_y, g_x) [N, 2] that torchvision's adaptive mode uses.

  Empty boxes give 0. Compare with the bound of `roi_align` (`max_samples`).
  """
  out_hw = _pair(output_size, "output_size")
  boxes = jnp.asarray(boxes, jnp.float32)
  (_, _, roi_h), (_, _, roi_w) = _roi_geometry(boxes, spatial_scale, aligned, out_hw)
  return jnp.stack([_adaptive_count(roi_h, out_hw[0]), _adaptive_count(roi_w, out_hw[1])],
                   axis=-1)


def _axis_matrix(start, bin_size, grid, max_grid, out, size, dtype):
  """[N, out, size]: per bin, the summed bilinear weights of its samples on one axis."""
  p = jnp.arange(out, dtype=dtype)[None, :, None]
  i = jnp.arange(max_grid, dtype=dtype)[None, None, :]
  g = jnp.maximum(grid, 1).astype(dtype)[:, None, None]
  b = bin_size[:, None, None]
  coord = start[:, None, None] + p * b + (i + 0.5) * b / g  # [N, out, G]
  # Written as "in range" so that NaN coordinates count as outside.
  keep = (coord >= -1.0) & (coord <= size) & (i < grid[:, None, None])
  # Clamping to [0, size - 1] reproduces torchvision's border rules; the tent
  # 1 - |pixel - coord| is then exactly the two-pixel bilinear weight.
  c = jnp.clip(jnp.where(keep, coord, 0.0), 0.0, size - 1.0)
  pix = jnp.arange(size, dtype=dtype)
  w = jnp.maximum(1.0 - jnp.abs(pix - c[..., None]), 0.0)  # [N, out, G, size]
  return jnp.sum(jnp.where(keep[..., None], w, 0.0), axis=2)


def roi_align(features: jax.Array,
              boxes: jax.Array,
              output_size: int | Sequence[int],
              spatial_scale: float = 1.0,
              sampling_ratio: int = -1,
              aligned: bool = True,
              max_samples: int | Sequence[int] | None = None,
              precision=jax.lax.Precision.HIGHEST) -> jax.Array:
  """torchvision.ops.roi_align for NHWC `features` [N, H, W, C] and one box per image.

  boxes: [N, 4] as (x1, y1, x2, y2) in input units (multiplied by
  `spatial_scale` to reach feature pixels); box n pools from image n.
  sampling_ratio <= 0 selects torchvision's adaptive grid, bounded per axis by
  `max_samples` (default ceil(H / out_h), ceil(W / out_w); see the module
  docstring). Returns [N, out_h, out_w, C] in the features' dtype.
  """
  if features.ndim != 4:
    raise ValueError(f"features must be [N, H, W, C], got shape {features.shape}")
  n, height, width, _ = features.shape
  if boxes.shape != (n, 4):
    raise ValueError(f"boxes must be [N, 4] = [{n}, 4], got shape {boxes.shape}")
  out_hw = _pair(output_size, "output_size")
  dtype = jnp.promote_types(features.dtype, jnp.float32)
  # torchvision defines no gradient for the boxes.
  boxes = jax.lax.stop_gradient(boxes).astype(dtype)
  (y0, bin_h, roi_h), (x0, bin_w, roi_w) = _roi_geometry(boxes, spatial_scale, aligned, out_hw)

  if sampling_ratio > 0:
    max_gy = max_gx = int(sampling_ratio)
    gy = gx = jnp.full((n,), sampling_ratio, jnp.int32)
  else:
    if max_samples is None:
      max_gy, max_gx = math.ceil(height / out_hw[0]), math.ceil(width / out_hw[1])
    else:
      max_gy, max_gx = _pair(max_samples, "max_samples")
    gy = jnp.minimum(_adaptive_count(roi_h, out_hw[0]), max_gy)
    gx = jnp.minimum(_adaptive_count(roi_w, out_hw[1]), max_gx)

  a_y = _axis_matrix(y0, bin_h, gy, max_gy, out_hw[0], height, dtype)  # [N, out_h, H]
  a_x = _axis_matrix(x0, bin_w, gx, max_gx, out_hw[1], width, dtype)  # [N, out_w, W]
  count = jnp.maximum(gy * gx, 1).astype(dtype)[:, None, None, None]
  f = features.astype(dtype)
  rows = jnp.einsum("nph,nhwc->npwc", a_y, f, precision=precision)
  out = jnp.einsum("nqw,npwc->npqc", a_x, rows, precision=precision)
  return (out / count).astype(features.dtype)
