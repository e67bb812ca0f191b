"""roi_align against a NumPy loop transcription of torchvision's definition, known
values, SlotCon's flip round trip, gradients, and an 8-device batch sharding."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.models.roi_align import adaptive_grid, roi_align

H, W = 5, 7  # non-square on purpose

# (x1, y1, x2, y2) in feature pixels (spatial_scale 1).
BOXES = np.array([
    [0.0, 0.0, 7.0, 5.0],  # the full map, as SlotCon passes for identical crops
    [1.2, 0.7, 5.9, 4.4],  # inside
    [-2.3, -1.7, 4.1, 3.2],  # partly outside, top left
    [3.5, 2.2, 9.6, 7.9],  # partly outside, bottom right; taller than the map
    [2.31, 1.42, 2.36, 1.49],  # tiny
    [6.6, 4.6, 7.4, 5.3],  # straddles the far corner
    [-3.1, 1.3, -1.9, 2.2],  # entirely left of the map
    [5.0, 4.0, 2.0, 1.0],  # inverted: an empty SlotCon overlap
], np.float32)


def _bilinear(img, y, x):
  """torchvision's bilinear_interpolate on img [H, W, C]."""
  h, w = img.shape[:2]
  if not (-1.0 <= y <= h and -1.0 <= x <= w):
    return np.zeros(img.shape[2])
  y, x = max(y, 0.0), max(x, 0.0)
  y_lo, x_lo = int(y), int(x)
  if y_lo >= h - 1:
    y_hi = y_lo = h - 1
    y = float(y_lo)
  else:
    y_hi = y_lo + 1
  if x_lo >= w - 1:
    x_hi = x_lo = w - 1
    x = float(x_lo)
  else:
    x_hi = x_lo + 1
  ly, lx = y - y_lo, x - x_lo
  hy, hx = 1.0 - ly, 1.0 - lx
  return (hy * hx * img[y_lo, x_lo] + hy * lx * img[y_lo, x_hi] + ly * hx * img[y_hi, x_lo] +
          ly * lx * img[y_hi, x_hi])


def _grid(boxes, out_hw, scale, ratio, aligned):
  """torchvision's per-box sample counts (may be <= 0 for empty boxes)."""
  grids = []
  for box in np.asarray(boxes, np.float64):
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = box * scale - off
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
      rw, rh = max(rw, 1.0), max(rh, 1.0)
    grids.append((ratio, ratio) if ratio > 0 else
                 (math.ceil(rh / out_hw[0]), math.ceil(rw / out_hw[1])))
  return np.array(grids)


def ref_roi_align(feat, boxes, out_hw, scale=1.0, ratio=-1, aligned=True, max_grid=None):
  """Loop transcription of torchvision.ops.roi_align, NHWC, box n on image n."""
  feat = np.asarray(feat, np.float64)
  n, _, _, c = feat.shape
  oh, ow = out_hw
  grids = _grid(boxes, out_hw, scale, ratio, aligned)
  if max_grid is not None:
    grids = np.minimum(grids, max_grid)
  out = np.zeros((n, oh, ow, c))
  for b in range(n):
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = np.asarray(boxes[b], np.float64) * scale - off
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
      rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / oh, rw / ow
    gy, gx = grids[b]
    count = max(gy * gx, 1)
    for ph in range(oh):
      for pw in range(ow):
        acc = np.zeros(c)
        for iy in range(gy):
          y = y1 + ph * bh + (iy + 0.5) * bh / gy
          for ix in range(gx):
            x = x1 + pw * bw + (ix + 0.5) * bw / gx
            acc += _bilinear(feat[b], y, x)
        out[b, ph, pw] = acc / count
  return out


def _features(n, h=H, w=W, c=3, seed=0):
  return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32)


def _random_boxes(n, seed):
  rng = np.random.default_rng(seed)
  xs = rng.uniform(-2.0, W + 2.0, size=(n, 2))
  ys = rng.uniform(-2.0, H + 2.0, size=(n, 2))
  return np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1).astype(np.float32)


def _jit_roi(**kw):
  return jax.jit(functools.partial(roi_align, **kw))


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("out_hw,ratio", [
    ((H, W), -1),  # SlotCon: output size = map size, adaptive sampling
    ((3, 4), -1),
    ((2, 2), 0),  # 0 is adaptive too
    ((3, 4), 2),
    ((H, W), 3),
])
def test_matches_torchvision_definition(aligned, out_hw, ratio):
  boxes = np.concatenate([BOXES, _random_boxes(8, seed=1)])
  feat = _features(len(boxes))
  want = ref_roi_align(feat, boxes, out_hw, ratio=ratio, aligned=aligned)
  kw = dict(output_size=out_hw, sampling_ratio=ratio, aligned=aligned)
  if ratio <= 0:
    grids = _grid(boxes, out_hw, 1.0, ratio, aligned)
    np.testing.assert_array_equal(adaptive_grid(boxes, out_hw, aligned=aligned),
                                  np.maximum(grids, 0))
    kw["max_samples"] = tuple(int(g) for g in np.maximum(grids.max(0), 1))
  got = _jit_roi(**kw)(feat, boxes)
  assert got.shape == (len(boxes), *out_hw, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  if aligned and ratio <= 0:
    # Under torchvision's adaptive rule an empty (inverted) box pools nothing.
    np.testing.assert_array_equal(got[7], 0.0)


def test_spatial_scale():
  feat = _features(len(BOXES), seed=2)
  boxes = BOXES * 16.0  # image pixels; the map has stride 16
  for ratio in (-1, 2):
    want = ref_roi_align(feat, boxes, (3, 4), scale=1 / 16, ratio=ratio)
    got = _jit_roi(output_size=(3, 4), spatial_scale=1 / 16, sampling_ratio=ratio,
                   max_samples=2)(feat, boxes)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_default_bound_exact_inside_and_clipped_beyond():
  feat = _features(len(BOXES), seed=3)
  inside = [0, 1, 4, 5, 7]  # boxes within the map (or empty)
  for out_hw in [(H, W), (2, 3)]:
    want = ref_roi_align(feat[inside], BOXES[inside], out_hw)
    got = _jit_roi(output_size=out_hw)(feat[inside], BOXES[inside])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # Box 3 is taller than the map: at output (H, W) it needs 2 rows of samples
  # per bin, the default bound is 1, so it is sampled like torchvision with 1.
  assert tuple(adaptive_grid(BOXES[3:4], (H, W))[0]) == (2, 1)
  got = _jit_roi(output_size=(H, W))(feat, BOXES)
  clipped = ref_roi_align(feat, BOXES, (H, W), max_grid=(1, 1))
  exact = ref_roi_align(feat, BOXES, (H, W))
  np.testing.assert_allclose(got, clipped, atol=1e-5, rtol=0)
  assert np.abs(clipped[3] - exact[3]).max() > 1e-2  # the bound did matter


@pytest.mark.parametrize("ratio", [-1, 1, 2, 3])
def test_linear_map_gives_bin_centre_values(ratio):
  h, w = 6, 9
  coef = np.array([[0.3, -1.1, 2.0], [0.7, 0.25, -0.5]], np.float32)  # (a, b, c) per channel
  ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  # Value at pixel (i, j) is a + b * j + c * i: pixel centres sit at index coordinates.
  feat = coef[:, 0] + coef[:, 1] * jj[..., None] + coef[:, 2] * ii[..., None]
  # Boxes inside [0.5, w - 0.5] x [0.5, h - 0.5]: every sample lies between pixel
  # centres, where bilinear interpolation of a linear function is exact.
  boxes = np.array([[0.5, 0.5, 8.5, 5.5], [1.3, 0.9, 6.2, 4.7], [2.0, 2.0, 2.5, 2.25],
                    [7.9, 5.1, 3.3, 1.7]], np.float32)
  feats = np.repeat(feat[None], len(boxes), 0).astype(np.float32)
  for out_hw in [(h, w), (3, 4)]:
    got = np.asarray(_jit_roi(output_size=out_hw, sampling_ratio=ratio,
                              max_samples=3)(feats, boxes))
    oh, ow = out_hw
    for b, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
      if ratio <= 0 and (x2 <= x1 or y2 <= y1):
        np.testing.assert_array_equal(got[b], 0.0)
        continue
      yc = y1 + (np.arange(oh) + 0.5) * (y2 - y1) / oh - 0.5  # bin centres, index coords
      xc = x1 + (np.arange(ow) + 0.5) * (x2 - x1) / ow - 0.5
      want = (coef[:, 0] + coef[:, 1] * xc[None, :, None] + coef[:, 2] * yc[:, None, None])
      np.testing.assert_allclose(got[b], want, atol=1e-5, rtol=0)


def test_flip_round_trip_as_slotcon_uses_it():
  """Aligning a flipped view with the mirrored box, then flipping back, equals
  aligning the unflipped view: SlotCon's invaug relies on this."""
  feat = _features(len(BOXES), seed=4)
  mirrored = BOXES.copy()
  mirrored[:, 0], mirrored[:, 2] = W - BOXES[:, 2], W - BOXES[:, 0]
  for ratio in (-1, 2):
    f = _jit_roi(output_size=(H, W), sampling_ratio=ratio, max_samples=2)
    plain = f(feat, BOXES)
    flipped = f(feat[:, :, ::-1], mirrored)[:, :, ::-1]
    np.testing.assert_allclose(flipped, plain, atol=1e-5, rtol=0)
  # Without the half-pixel offset the round trip is off by a pixel.
  g = _jit_roi(output_size=(H, W), aligned=False, max_samples=2)
  assert np.abs(g(feat[:, :, ::-1], mirrored)[:, :, ::-1] - g(feat, BOXES)).max() > 1e-2


def test_jit_and_gradients():
  boxes = BOXES
  n = len(boxes)
  feat = _features(n, seed=5)
  out_hw = (3, 4)
  ct = np.random.default_rng(6).normal(size=(n, *out_hw, 3)).astype(np.float32)
  f = _jit_roi(output_size=out_hw, sampling_ratio=2)
  np.testing.assert_allclose(f(feat, boxes), roi_align(jnp.asarray(feat), jnp.asarray(boxes),
                                                       out_hw, sampling_ratio=2), atol=1e-6)

  def loss(x, b):
    return jnp.sum(f(x, b) * ct)

  g_feat, g_box = jax.jit(jax.grad(loss, argnums=(0, 1)))(feat, boxes)
  assert np.all(np.isfinite(g_feat))
  np.testing.assert_array_equal(g_box, 0.0)  # as torchvision: no gradient to boxes
  # The op is linear in the features: pooling one-hot maps (one channel per
  # pixel) with the reference gives its weights, hence the exact gradient.
  eye = np.eye(H * W).reshape(1, H, W, H * W).repeat(n, 0)
  weights = ref_roi_align(eye, boxes, out_hw, ratio=2).reshape(n, *out_hw, H, W)
  want = np.einsum("npqc,npqhw->nhwc", ct, weights)
  np.testing.assert_allclose(g_feat, want, atol=1e-5, rtol=0)
  sampled = np.abs(weights).sum((1, 2)) > 0
  assert sampled[0].all()  # the full-map box touches every pixel
  assert not sampled[6].any()  # the box left of the map samples nothing
  assert np.all(np.abs(g_feat).sum(-1)[sampled] > 0)
  np.testing.assert_array_equal(g_feat[~sampled], 0.0)


def test_batch_sharded_over_8_devices_matches_one_device():
  assert jax.device_count() >= 8, "tests/conftest.py should provide 8 CPU devices"
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("batch",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  boxes = np.concatenate([BOXES, _random_boxes(8, seed=7)])
  feat = _features(len(boxes), c=4, seed=8)
  f = _jit_roi(output_size=(H, W), max_samples=2)
  one = jax.devices()[0]
  want = f(jax.device_put(feat, one), jax.device_put(boxes, one))
  xs, bs = jax.device_put(feat, batch), jax.device_put(boxes, batch)
  got = f(xs, bs)
  assert got.sharding.is_equivalent_to(batch, got.ndim)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  # Each image is pooled where it lives: no cross-device traffic.
  hlo = f.lower(xs, bs).compile().as_text()
  for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
    assert op not in hlo
