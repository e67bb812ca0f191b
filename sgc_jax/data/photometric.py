"""SlotCon's photometric augmentations, per example on host uint8 images.

The official SlotCon pipeline (CVMI-Lab/SlotCon, `data/transforms.py`) runs
torchvision transforms on PIL images, so what a view really gets is PIL's
arithmetic: `ImageEnhance` blends for brightness / contrast / saturation, PIL's
8-bit HSV for hue, PIL's "L" conversion for grayscale, PIL's extended-box
`GaussianBlur` and `ImageOps.solarize`. This module re-implements those in
vectorised NumPy on [H, W, 3] uint8 arrays and matches Pillow bit for bit
(checked against the installed Pillow in the tests), assuming IEEE float32
without excess precision or fused multiply-add, as in Pillow's x86-64 builds.

What is not reproduced: the random streams. The official code draws from
Python's `random` and torch's generator; here every draw comes from the
`np.random.Generator` passed in, with the same distributions.

The per-view recipe (BYOL-style asymmetric views), read from the official
`CustomDataAugmentation`:
  both views: ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8, then grayscale p=0.2;
  view 1: Gaussian blur (sigma ~ U[0.1, 2.0]) with p=1.0, no solarize;
  view 2: Gaussian blur with p=0.1, then solarize (threshold 128) with p=0.2.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

# ColorJitter's four ops, indexed as torchvision's `fn_idx` permutation does.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclasses.dataclass(frozen=True)
class PhotometricSpec:
  """Probabilities and strengths of one view's photometric augmentations.

  Defaults are the official view 1; `SLOTCON_VIEW2` changes blur and solarize.
  A strength of 0 disables that jitter op, as torchvision's `None` does.
  """
  jitter_prob: float = 0.8
  brightness: float = 0.4  # factor ~ U[max(0, 1 - b), 1 + b]
  contrast: float = 0.4  # factor ~ U[max(0, 1 - c), 1 + c]
  saturation: float = 0.2  # factor ~ U[max(0, 1 - s), 1 + s]
  hue: float = 0.1  # shift ~ U[-h, h] of a full turn
  grayscale_prob: float = 0.2
  blur_prob: float = 1.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  solarize_prob: float = 0.0
  solarize_threshold: int = 128  # values >= threshold are inverted

  def __post_init__(self):
    for name in ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
    for name in ("brightness", "contrast", "saturation"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if not 0.0 <= self.hue <= 0.5:
      raise ValueError(f"hue must lie in [0, 0.5], got {self.hue}")
    lo, hi = self.blur_sigma
    if not 0.0 < lo <= hi:
      raise ValueError(
          f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
    if not 0 <= self.solarize_threshold <= 256:
      raise ValueError(f"solarize_threshold must lie in [0, 256], "
                       f"got {self.solarize_threshold}")


SLOTCON_VIEW1 = PhotometricSpec()
SLOTCON_VIEW2 = PhotometricSpec(blur_prob=0.1, solarize_prob=0.2)
SLOTCON_VIEWS = (SLOTCON_VIEW1, SLOTCON_VIEW2)


@dataclasses.dataclass(frozen=True)
class PhotometricParams:
  """One draw of a spec: what `apply_params` does, in order."""
  jitter: tuple[tuple[str, float], ...] = ()  # (op, factor) in application order
  grayscale: bool = False
  blur_sigma: float | None = None
  solarize_threshold: int | None = None


def sample_params(spec: PhotometricSpec,
                  rng: np.random.Generator) -> PhotometricParams:
  """Draws which ops run and their factors, in the official order."""
  jitter = ()
  # Every coin is drawn even when p is 0 or 1, so the number of draws per
  # example does not depend on the spec's probabilities.
  if rng.random() < spec.jitter_prob:
    order = rng.permutation(len(JITTER_OPS))
    # Like torchvision's ColorJitter.get_params: all factors first, then the
    # permutation decides the order in which they are applied.
    factors = {}
    for name in ("brightness", "contrast", "saturation"):
      strength = getattr(spec, name)
      if strength > 0:
        factors[name] = float(
            rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))
    if spec.hue > 0:
      factors["hue"] = float(rng.uniform(-spec.hue, spec.hue))
    jitter = tuple((JITTER_OPS[i], factors[JITTER_OPS[i]]) for i in order
                   if JITTER_OPS[i] in factors)
  grayscale = bool(rng.random() < spec.grayscale_prob)
  blur_sigma = None
  if rng.random() < spec.blur_prob:
    blur_sigma = float(rng.uniform(*spec.blur_sigma))
  solarize_threshold = None
  if rng.random() < spec.solarize_prob:
    solarize_threshold = spec.solarize_threshold
  return PhotometricParams(jitter, grayscale, blur_sigma, solarize_threshold)


def apply_params(image: np.ndarray, params: PhotometricParams) -> np.ndarray:
  """Applies a drawn set of ops: jitter, grayscale, blur, solarize."""
  _check_image(image)
  out = image
  for name, factor in params.jitter:
    out = _JITTER_FNS[name](out, factor)
  if params.grayscale:
    out = to_grayscale(out)
  if params.blur_sigma is not None:
    out = gaussian_blur(out, params.blur_sigma)
  if params.solarize_threshold is not None:
    out = solarize(out, params.solarize_threshold)
  # Always a fresh array: callers may write into the result.
  return out.copy() if out is image else out


def apply(image: np.ndarray, spec: PhotometricSpec,
          rng: np.random.Generator) -> np.ndarray:
  """One view's photometric augmentation of a uint8 [H, W, 3] image."""
  return apply_params(image, sample_params(spec, rng))


# --------------------------------------------------------------------------
# Colour ops (torchvision's PIL path: ImageEnhance blends and PIL HSV).


def _check_image(image: np.ndarray) -> None:
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} "
                     f"{image.shape}")


def luma(image: np.ndarray) -> np.ndarray:
  """PIL's RGB -> "L": ITU-R 601-2 weights 0.299/0.587/0.114, rounded.

  The weights are Pillow's 16-bit fixed-point ones (19595, 38470, 7471) / 2^16
  with round-half-up, so the result is PIL's exactly. Returns uint8 [H, W].
  """
  rgb = image.astype(np.int32)
  y = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
  return (y >> 16).astype(np.uint8)


def _blend(degenerate: np.ndarray | int, image: np.ndarray,
           factor: float) -> np.ndarray:
  """PIL's Image.blend(degenerate, image, factor) for uint8 images.

  Pillow computes `d + alpha * (x - d)` in float32 and truncates toward zero
  after clipping to [0, 255] (not rounding), which is reproduced here.
  """
  alpha = np.float32(factor)
  if alpha == 0:
    return np.broadcast_to(np.asarray(degenerate, np.uint8), image.shape).copy()
  if alpha == 1:
    return image.copy()
  d = np.asarray(degenerate, np.int32)
  diff = (image.astype(np.int32) - d).astype(np.float32)
  temp = d.astype(np.float32) + alpha * diff
  return np.clip(temp, 0.0, 255.0).astype(np.uint8)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
  """Blend with black: floor(clip(factor * x)), as ImageEnhance.Brightness."""
  return _blend(0, image, factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
  """Blend with the image's mean luma, as ImageEnhance.Contrast.

  PIL rounds the mean of the "L" image to an integer grey before blending.
  """
  y = luma(image)
  mean = int(np.sum(y, dtype=np.int64) / y.size + 0.5)
  return _blend(mean, image, factor)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
  """Blend with the image's own luma, as ImageEnhance.Color."""
  return _blend(luma(image)[..., None], image, factor)


def to_grayscale(image: np.ndarray) -> np.ndarray:
  """Luma replicated to 3 channels, as RandomGrayscale on an RGB image."""
  return np.repeat(luma(image)[..., None], 3, axis=-1)


def _round_half_away(x: np.ndarray) -> np.ndarray:
  """C's round() for non-negative doubles; np.round would round half to even."""
  floor = np.floor(x)
  return floor + (x - floor >= 0.5)


# Pillow's HSV conversions, tabulated. Each quantity below depends on only two
# 8-bit numbers, so a 256 x 256 table computed once with Pillow's exact
# float32/float64 sequence replaces per-pixel float work (~4x faster).


@functools.cache
def _hsv_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(hue[case, d1, d2], sat[chroma, max], coef[h, s, rgb]), flattened.

  The hue case is which channel is the maximum (red, green, blue; the first
  wins ties), as in Pillow's branch order.
  """
  f32, f64 = np.float32, np.float64
  d1, d2 = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
  # d1, d2: distances of the two other channels below the maximum; their
  # larger one is the chroma. Zero chroma (grey) gets hue 0; 1 keeps it finite.
  chroma = np.maximum(d1, d2)
  cr = np.where(chroma == 0, 1, chroma).astype(f32)
  x1 = d1.astype(f32) / cr
  x2 = d2.astype(f32) / cr
  hues = [
      x2 - x1,  # red max: d1 = max - green, d2 = max - blue
      (2.0 + x1.astype(f64) - x2.astype(f64)).astype(f32),  # green: red, blue
      (4.0 + x1.astype(f64) - x2.astype(f64)).astype(f32),  # blue: green, red
  ]
  hue = []
  for h in hues:
    h = np.fmod(h.astype(f64) / 6.0 + 1.0, 1.0).astype(f32)
    uh = np.clip(np.trunc(h.astype(f64) * 255.0), 0, 255)
    hue.append(np.where(chroma == 0, 0, uh).astype(np.uint8).ravel())
  # Saturation from (chroma, max); max = 0 only happens with chroma = 0.
  c, m = d1, d2
  s = c.astype(f32) / np.where(m == 0, 1, m).astype(f32)
  sat = np.clip(np.trunc(s.astype(f64) * 255.0), 0, 255)
  sat = np.where((c == 0) | (c > m), 0, sat).astype(np.uint8).ravel()
  # HSV -> RGB: every output channel is round(v * coef(h, s)), with coef 1 for
  # the channel equal to v and Pillow's p, q, t factors for the others.
  h, s = d1, d2
  sector = h.astype(f64) * 6.0 / 255.0
  i = np.floor(sector)
  f = (sector - i).astype(f32)
  fs = (s.astype(f64) / 255.0).astype(f32)
  one = np.ones_like(sector)
  p = 1.0 - fs.astype(f64)
  q = 1.0 - (fs * f).astype(f64)
  t = 1.0 - fs.astype(f64) * (1.0 - f.astype(f64))
  # h = 255 lands in sector 6, which wraps to sector 0 as in Pillow.
  cases = [i.astype(np.int64) % 6 == k for k in range(6)]
  coef = np.stack([
      np.select(cases, [one, q, p, p, t, one]),
      np.select(cases, [t, one, one, q, p, p]),
      np.select(cases, [p, p, t, one, one, q]),
  ], axis=-1)
  return np.concatenate(hue), sat, coef.reshape(-1, 3)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
  """PIL's RGB -> "HSV": all three channels quantised to uint8.

  Hue is a full turn over [0, 256) truncated, saturation is (max - min) / max
  truncated, value is max; bit-exact with Pillow.
  """
  hue, sat, _ = _hsv_tables()
  r, g, b = (image[..., k].astype(np.intp) for k in range(3))
  maxc = np.maximum(np.maximum(r, g), b)
  minc = np.minimum(np.minimum(r, g), b)
  red_max = r == maxc
  green_max = ~red_max & (g == maxc)
  case = np.where(red_max, 0, np.where(green_max, 1, 2))
  d1 = maxc - np.where(green_max, r, g)
  d2 = maxc - np.where(red_max | green_max, b, r)
  h = hue[(case * 256 + d1) * 256 + d2]
  s = sat[(maxc - minc) * 256 + maxc]
  return np.stack([h, s, maxc.astype(np.uint8)], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """PIL's "HSV" -> RGB for uint8 HSV images (inverse of `rgb_to_hsv`)."""
  _, _, coef = _hsv_tables()
  idx = hsv[..., 0].astype(np.intp) * 256 + hsv[..., 1]
  value = hsv[..., 2:3].astype(np.float64)
  return np.clip(_round_half_away(value * coef[idx]), 0, 255).astype(np.uint8)


def hue_shift_steps(factor: float) -> int:
  """The uint8 hue rotation torchvision's PIL path adds for a hue factor.

  torchvision adds `np.uint8(factor * 255)` to PIL's uint8 hue with wrap-around.
  The cast truncates toward zero; for negative factors it is C's out-of-range
  float cast, which on x86 wraps modulo 256 (the intended rotation) and is what
  we use everywhere.
  """
  if not -0.5 <= factor <= 0.5:
    raise ValueError(f"hue factor must lie in [-0.5, 0.5], got {factor}")
  return int(math.trunc(factor * 255)) % 256


def adjust_hue(image: np.ndarray, factor: float) -> np.ndarray:
  """Rotate hue by `factor` of a turn through PIL's 8-bit HSV.

  Like torchvision's PIL path this always round-trips through HSV, so even a
  zero shift re-quantises colours by up to 7 levels (1.5 on average over all
  colours); greys and pure reds, greens and blues survive exactly.
  """
  hsv = rgb_to_hsv(image)
  shift = np.uint8(hue_shift_steps(factor))
  hsv[..., 0] += shift  # uint8 addition wraps around the hue circle
  return hsv_to_rgb(hsv)


_JITTER_FNS = {
    "brightness": adjust_brightness,
    "contrast": adjust_contrast,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
}


# --------------------------------------------------------------------------
# Gaussian blur (PIL ImageFilter.GaussianBlur, radius = sigma).


def box_blur_radius(sigma: float, passes: int = 3) -> float:
  """Fractional box radius whose `passes`-fold box blur has variance sigma^2.

  Pillow's choice (Gwosdek et al., "Theoretical foundations of Gaussian
  convolution by extended box filtering", 2011), in Pillow's float precision.
  """
  f32 = np.float32
  s = f32(sigma)
  sigma2 = s * s / f32(passes)
  big_l = f32(math.sqrt(12.0 * float(sigma2) + 1.0))
  small_l = f32(math.floor((float(big_l) - 1.0) / 2.0))
  one = f32(1)
  a = (f32(2) * small_l + one) * (small_l * (small_l + one) - f32(3) * sigma2)
  a = a / (f32(6) * (sigma2 - (small_l + one) * (small_l + one)))
  return float(f32(small_l + a))


def _box_weights(radius: float) -> tuple[int, int, int]:
  """Integer radius and Pillow's 24-bit fixed-point inner / outer tap weights."""
  whole = int(radius)
  f32 = np.float32
  inner = int(f32(1 << 24) / (f32(radius) * f32(2) + f32(1)))
  outer = ((1 << 24) - (2 * whole + 1) * inner) // 2
  return whole, inner, outer


def _box_pass(x: np.ndarray, whole: int, inner: int, outer: int) -> np.ndarray:
  """One extended-box pass along the last axis of a uint32 array.

  Each output is (sum of the 2r+1 nearest inputs) * inner + (the two next ones)
  * outer, rounded back to 8 bits; edges repeat the border pixel. Everything
  fits in uint32, as in Pillow's own accumulator.
  """
  n = x.shape[-1]
  edge = whole + 1
  padded = np.concatenate([np.repeat(x[..., :1], edge, axis=-1), x,
                           np.repeat(x[..., -1:], edge, axis=-1)], axis=-1)
  if whole <= 8:
    # Sigma <= 2 gives r <= 1: a few shifted adds beat a cumulative sum.
    window = padded[..., 1:1 + n].copy()
    for j in range(2, 2 * whole + 2):
      window += padded[..., j:j + n]
  else:
    csum = np.cumsum(padded, axis=-1, dtype=np.uint32)
    window = csum[..., 2 * whole + 1:2 * whole + 1 + n] - csum[..., :n]
  far = padded[..., :n] + padded[..., 2 * whole + 2:2 * whole + 2 + n]
  window *= np.uint32(inner)
  far *= np.uint32(outer)
  window += far
  window += np.uint32(1 << 23)
  window >>= 24
  return window


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """PIL's GaussianBlur(radius=sigma) on a uint8 [H, W, 3] image, bit-exact.

  Pillow approximates the Gaussian by three passes of an extended box filter
  along x, then three along y, each rounded to 8 bits, with replicated edges;
  that is what the official code runs, so it is reproduced here rather than a
  sampled Gaussian (which would differ by about a level). `blur_kernel` is the
  combined per-axis kernel: variance exactly sigma^2, close to a Gaussian.
  """
  _check_image(image)
  if sigma == 0:
    return image.copy()
  whole, inner, outer = _box_weights(box_blur_radius(sigma))
  # Channels first, so that every pass runs along the contiguous last axis.
  x = image.transpose(2, 0, 1).astype(np.uint32)
  for _ in range(3):
    x = _box_pass(x, whole, inner, outer)
  x = x.transpose(0, 2, 1)
  for _ in range(3):
    x = _box_pass(x, whole, inner, outer)
  return x.transpose(2, 1, 0).astype(np.uint8, order="C")


def blur_kernel(sigma: float, passes: int = 3) -> np.ndarray:
  """The 1-D kernel `gaussian_blur` applies per axis, before 8-bit rounding.

  The `passes`-fold self-convolution of the extended box (inner taps 1, the two
  outer taps the radius' fractional part, normalised); centred, odd length,
  sums to 1, variance sigma^2.
  """
  radius = box_blur_radius(sigma, passes)
  whole = int(radius)
  box = np.ones(2 * whole + 3)
  box[0] = box[-1] = radius - whole
  box /= 2 * radius + 1
  kernel = np.ones(1)
  for _ in range(passes):
    kernel = np.convolve(kernel, box)
  return kernel


# --------------------------------------------------------------------------
# Solarize (PIL ImageOps.solarize).


def solarize(image: np.ndarray, threshold: int = 128) -> np.ndarray:
  """Inverts values >= threshold (255 - x), keeps the rest, per channel.

  `>=` as in ImageOps.solarize's code (its docstring says "above").
  """
  levels = np.arange(256)
  lut = np.where(levels >= threshold, 255 - levels, levels).astype(np.uint8)
  return lut[image]
