"""Photometric augmentations: definitions, Pillow parity, probabilities, determinism."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from sgc_jax.data import photometric as P


def _random_image(seed, height=37, width=53):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def _smooth_image(height=40, width=56):
  # Gradients exercise the blend and HSV rounding far more than noise does.
  y, x = np.mgrid[:height, :width]
  return np.stack([(x * 5) % 256, (y * 6) % 256, ((x + y) * 3) % 256],
                  axis=-1).astype(np.uint8)


def _pixel(rgb):
  return np.array([[rgb]], np.uint8)


# --------------------------------------------------------------------------
# The official recipe.


def test_official_view_specs():
  for spec in P.SLOTCON_VIEWS:
    assert (spec.jitter_prob, spec.brightness, spec.contrast, spec.saturation,
            spec.hue) == (0.8, 0.4, 0.4, 0.2, 0.1)
    assert spec.grayscale_prob == 0.2
    assert spec.blur_sigma == (0.1, 2.0)
    assert spec.solarize_threshold == 128
  assert (P.SLOTCON_VIEW1.blur_prob, P.SLOTCON_VIEW1.solarize_prob) == (1.0, 0.0)
  assert (P.SLOTCON_VIEW2.blur_prob, P.SLOTCON_VIEW2.solarize_prob) == (0.1, 0.2)


@pytest.mark.parametrize("bad", [dict(jitter_prob=1.5), dict(brightness=-0.1),
                                 dict(hue=0.6), dict(blur_sigma=(2.0, 0.1)),
                                 dict(blur_sigma=(0.0, 1.0))])
def test_spec_rejects_invalid_values(bad):
  with pytest.raises(ValueError):
    P.PhotometricSpec(**bad)


# --------------------------------------------------------------------------
# Each op against its definition.


def test_brightness_scales_and_truncates():
  img = np.array([[[0, 10, 100], [199, 200, 255]]], np.uint8)
  np.testing.assert_array_equal(P.adjust_brightness(img, 0.5),
                                [[[0, 5, 50], [99, 100, 127]]])
  np.testing.assert_array_equal(P.adjust_brightness(img, 1.4),
                                [[[0, 14, 140], [255, 255, 255]]])
  np.testing.assert_array_equal(P.adjust_brightness(img, 1.0), img)
  np.testing.assert_array_equal(P.adjust_brightness(img, 0.0), 0)


def test_grayscale_uses_601_luma_weights():
  np.testing.assert_array_equal(P.luma(_pixel([255, 0, 0])), [[76]])  # 76.2
  np.testing.assert_array_equal(P.luma(_pixel([0, 255, 0])), [[150]])  # 149.7
  np.testing.assert_array_equal(P.luma(_pixel([0, 0, 255])), [[29]])  # 29.1
  img = _random_image(0)
  exact = img.astype(float) @ np.array([0.299, 0.587, 0.114])
  assert np.abs(P.luma(img) - exact).max() <= 0.5 + 1e-3
  gray = P.to_grayscale(img)
  assert gray.shape == img.shape and gray.dtype == np.uint8
  np.testing.assert_array_equal(gray, np.repeat(P.luma(img)[..., None], 3, -1))


def test_saturation_zero_is_grayscale_and_one_is_identity():
  img = _random_image(1)
  np.testing.assert_array_equal(P.adjust_saturation(img, 0.0), P.to_grayscale(img))
  np.testing.assert_array_equal(P.adjust_saturation(img, 1.0), img)
  # Halfway: grey + 0.5 * (x - grey), truncated.
  grey = P.luma(img).astype(np.float32)[..., None]
  want = np.floor(grey + np.float32(0.5) * (img - grey))
  np.testing.assert_array_equal(P.adjust_saturation(img, 0.5), want)


def test_contrast_blends_with_rounded_mean_luma():
  img = _random_image(2)
  mean = int(np.floor(P.luma(img).mean() + 0.5))
  np.testing.assert_array_equal(P.adjust_contrast(img, 0.0),
                                np.full_like(img, mean))
  np.testing.assert_array_equal(P.adjust_contrast(img, 1.0), img)
  want = np.clip(np.float32(mean) + np.float32(1.5) * (img.astype(np.float32) - mean),
                 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(P.adjust_contrast(img, 1.5), want)


def test_hue_half_turn_sends_red_to_cyan():
  # Shift = trunc(0.5 * 255) = 127 of 256 steps, just short of half a turn.
  np.testing.assert_array_equal(P.adjust_hue(_pixel([255, 0, 0]), 0.5),
                                _pixel([0, 255, 252]))
  np.testing.assert_array_equal(P.adjust_hue(_pixel([255, 0, 0]), -0.5),
                                _pixel([0, 246, 255]))
  np.testing.assert_array_equal(P.adjust_hue(_pixel([255, 0, 0]), 1 / 3),
                                _pixel([0, 255, 0]))
  assert P.hue_shift_steps(0.5) == 127 and P.hue_shift_steps(-0.5) == 129
  assert P.hue_shift_steps(0.003) == 0 and P.hue_shift_steps(-0.003) == 0


def test_hue_zero_is_identity_up_to_pil_hsv_quantisation():
  exact = np.array([[[0, 0, 0], [255, 255, 255], [77, 77, 77], [255, 0, 0],
                     [0, 255, 0], [0, 0, 255], [128, 0, 0], [0, 0, 9]]], np.uint8)
  np.testing.assert_array_equal(P.adjust_hue(exact, 0.0), exact)
  # Yellow's hue, 1/6 turn, truncates to 42/255 and comes back a bit short.
  np.testing.assert_array_equal(P.adjust_hue(_pixel([255, 255, 0]), 0.0),
                                _pixel([255, 252, 0]))
  # Other colours go through PIL's 8-bit HSV and back, which costs a few
  # levels (at most 7 over all 2^24 colours); the official pipeline does too.
  img = _random_image(3)
  assert np.abs(P.adjust_hue(img, 0.0).astype(int) - img).max() <= 7


def test_hsv_agrees_with_colorsys():
  rgb = _random_image(4, 64, 64).reshape(-1, 3)
  hsv = P.rgb_to_hsv(rgb[None]).reshape(-1, 3).astype(float)
  ref = np.array([colorsys.rgb_to_hsv(*(c / 255.0)) for c in rgb]) * 255
  hue_err = np.abs(hsv[:, 0] - ref[:, 0])
  hue_err = np.minimum(hue_err, 255 - hue_err)  # around the circle
  assert hue_err.max() <= 1.0 + 1e-6
  assert np.abs(hsv[:, 1:] - ref[:, 1:]).max() <= 1.0 + 1e-6


@pytest.mark.parametrize("threshold", [0, 1, 128, 200, 255, 256])
def test_solarize_inverts_at_or_above_threshold(threshold):
  levels = np.arange(256, dtype=np.uint8)
  img = np.stack([levels, levels[::-1], levels], -1)[None]
  out = P.solarize(img, threshold).astype(int)
  img = img.astype(int)
  np.testing.assert_array_equal(out, np.where(img >= threshold, 255 - img, img))


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (17, 9), (32, 32)])
@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0, 6.0])
def test_blur_keeps_constant_images(shape, sigma):
  for value in (0, 1, 128, 254, 255):
    img = np.full(shape + (3,), value, np.uint8)
    np.testing.assert_array_equal(P.gaussian_blur(img, sigma), img)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 1.5, 2.0, 5.0])
def test_blur_kernel_is_normalised_with_variance_sigma_squared(sigma):
  k = P.blur_kernel(sigma)
  offsets = np.arange(len(k)) - len(k) // 2
  assert len(k) % 2 == 1
  np.testing.assert_allclose(k, k[::-1], atol=1e-15)
  np.testing.assert_allclose(k.sum(), 1.0, atol=1e-12)
  np.testing.assert_allclose((k * offsets**2).sum(), sigma**2, rtol=1e-5)
  if sigma >= 0.5:
    # Three extended boxes stay within 10% of the sampled Gaussian's peak.
    wide = np.arange(-30, 31)
    gauss = np.exp(-wide**2 / (2 * sigma**2))
    gauss /= gauss.sum()
    padded = np.zeros(len(wide))
    padded[30 - len(k) // 2:30 + len(k) // 2 + 1] = k
    assert np.abs(padded - gauss).max() < 0.1 * gauss.max()


@pytest.mark.parametrize("sigma,rtol", [(0.5, 0.05), (1.0, 0.05), (2.0, 0.03)])
def test_blur_of_an_impulse_is_the_kernel(sigma, rtol):
  # A vertical line is an impulse along x and constant along y, so every row
  # of the output is the 1-D impulse response.
  img = np.zeros((9, 41, 3), np.uint8)
  img[:, 20] = 255
  out = P.gaussian_blur(img, sigma)
  # All rows and channels alike.
  np.testing.assert_array_equal(out, np.broadcast_to(out[:1, :, :1], out.shape))
  profile = out[0, :, 0].astype(float)
  k = P.blur_kernel(sigma)
  want = np.zeros(41)
  want[20 - len(k) // 2:20 + len(k) // 2 + 1] = 255 * k
  assert np.abs(profile - want).max() <= 1.5  # one rounding per pass
  offsets = np.arange(41) - 20
  assert abs((profile * offsets).sum()) < 1e-9  # centred
  np.testing.assert_allclose((profile * offsets**2).sum() / profile.sum(),
                             sigma**2, rtol=rtol)
  # And a 2-D impulse keeps its mass and spreads on both axes alike.
  point = np.zeros((41, 41, 3), np.uint8)
  point[20, 20] = 255
  blurred = P.gaussian_blur(point, sigma)[..., 0].astype(float)
  assert abs(blurred.sum() - 255) <= 0.05 * 255
  var_x = (blurred.sum(0) * offsets**2).sum() / blurred.sum()
  var_y = (blurred.sum(1) * offsets**2).sum() / blurred.sum()
  np.testing.assert_allclose([var_x, var_y], sigma**2, rtol=0.15)


# --------------------------------------------------------------------------
# Bit parity with Pillow, which is what the official transforms run.


def _pil_hue(pil, factor):
  # torchvision's PIL adjust_hue, with the uint8 shift spelled out.
  h, s, v = pil.convert("HSV").split()
  np_h = np.array(h, dtype=np.uint8)
  np_h += np.uint8(int(factor * 255) % 256)
  return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


def _pil_gray(pil):
  return Image.fromarray(np.repeat(np.asarray(pil.convert("L"))[..., None], 3, -1))


_PIL_JITTER = {
    "brightness": lambda im, f: ImageEnhance.Brightness(im).enhance(f),
    "contrast": lambda im, f: ImageEnhance.Contrast(im).enhance(f),
    "saturation": lambda im, f: ImageEnhance.Color(im).enhance(f),
    "hue": _pil_hue,
}


@pytest.mark.parametrize("seed", range(6))
def test_ops_match_pillow_exactly(seed):
  rng = np.random.default_rng(100 + seed)
  img = _random_image(seed) if seed % 2 else _smooth_image()
  pil = Image.fromarray(img)
  for name, fn in _PIL_JITTER.items():
    factor = rng.uniform(-0.5, 0.5) if name == "hue" else rng.uniform(0.0, 2.0)
    np.testing.assert_array_equal(P._JITTER_FNS[name](img, factor),
                                  np.asarray(fn(pil, factor)), err_msg=name)
  np.testing.assert_array_equal(P.to_grayscale(img), np.asarray(_pil_gray(pil)))
  np.testing.assert_array_equal(P.solarize(img, 128),
                                np.asarray(ImageOps.solarize(pil, 128)))
  for sigma in (rng.uniform(0.1, 2.0), rng.uniform(2.0, 8.0), 40.0):
    np.testing.assert_array_equal(
        P.gaussian_blur(img, sigma),
        np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=sigma))),
        err_msg=f"sigma={sigma}")


def test_blur_matches_pillow_when_the_radius_exceeds_the_image():
  for shape in [(1, 1), (2, 3), (3, 1), (5, 4)]:
    img = _random_image(7, *shape)
    for sigma in (0.1, 1.3, 2.0, 9.0):
      np.testing.assert_array_equal(
          P.gaussian_blur(img, sigma),
          np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(sigma))))


def test_hsv_conversions_match_pillow():
  rng = np.random.default_rng(8)
  # All (g, b) pairs for a few reds, plus random colours.
  g, b = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
  grids = [np.stack([np.full_like(g, r), g, b], -1) for r in (0, 1, 128, 254, 255)]
  colours = np.concatenate(grids + [rng.integers(0, 256, (256, 256, 3))], 0)
  colours = colours.astype(np.uint8)
  np.testing.assert_array_equal(P.rgb_to_hsv(colours),
                                np.asarray(Image.fromarray(colours).convert("HSV")))
  # Every HSV triple read as an image, including h = 255 and s = 0.
  np.testing.assert_array_equal(
      P.hsv_to_rgb(colours),
      np.asarray(Image.fromarray(colours, "HSV").convert("RGB")))


def test_apply_params_matches_the_official_pil_chain():
  rng = np.random.default_rng(9)
  img = _smooth_image()
  for i in range(24):
    spec = P.SLOTCON_VIEWS[i % 2]
    params = P.sample_params(spec, rng)
    pil = Image.fromarray(img)
    for name, factor in params.jitter:
      pil = _PIL_JITTER[name](pil, factor)
    if params.grayscale:
      pil = _pil_gray(pil)
    if params.blur_sigma is not None:
      pil = pil.filter(ImageFilter.GaussianBlur(radius=params.blur_sigma))
    if params.solarize_threshold is not None:
      pil = ImageOps.solarize(pil, params.solarize_threshold)
    np.testing.assert_array_equal(P.apply_params(img, params), np.asarray(pil),
                                  err_msg=str(params))


# --------------------------------------------------------------------------
# Probabilities and factor ranges.


@pytest.mark.parametrize("spec", P.SLOTCON_VIEWS, ids=["view1", "view2"])
def test_sampled_rates_match_probabilities(spec):
  rng = np.random.default_rng(10)
  draws = [P.sample_params(spec, rng) for _ in range(2000)]
  tol = 0.04  # > 4 binomial standard deviations at n = 2000
  assert abs(np.mean([bool(d.jitter) for d in draws]) - spec.jitter_prob) < tol
  assert abs(np.mean([d.grayscale for d in draws]) - spec.grayscale_prob) < tol
  assert abs(np.mean([d.blur_sigma is not None for d in draws])
             - spec.blur_prob) < tol
  assert abs(np.mean([d.solarize_threshold is not None for d in draws])
             - spec.solarize_prob) < tol
  jittered = [d.jitter for d in draws if d.jitter]
  for jitter in jittered:
    assert sorted(name for name, _ in jitter) == sorted(P.JITTER_OPS)
  # Random order: each op comes first about a quarter of the time.
  firsts = [jitter[0][0] for jitter in jittered]
  for name in P.JITTER_OPS:
    assert abs(firsts.count(name) / len(firsts) - 0.25) < 0.05
  factors = {name: np.array([dict(j)[name] for j in jittered])
             for name in P.JITTER_OPS}
  for name, (lo, hi) in {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4),
                         "saturation": (0.8, 1.2), "hue": (-0.1, 0.1)}.items():
    f = factors[name]
    assert f.min() >= lo and f.max() <= hi, name
    assert abs(f.mean() - (lo + hi) / 2) < 0.05 * (hi - lo), name  # uniform
  sigmas = np.array([d.blur_sigma for d in draws if d.blur_sigma is not None])
  assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0


def test_applied_rates_match_probabilities():
  # Pixel 0 turns grey only under grayscale; pixel 1 (white) only changes under
  # solarize, so the two ops are told apart in every output.
  img = np.array([[[200, 30, 90], [255, 255, 255]]], np.uint8)
  spec = P.PhotometricSpec(jitter_prob=0.0, grayscale_prob=0.3, blur_prob=0.0,
                           solarize_prob=0.2)
  rng = np.random.default_rng(11)
  outs = np.stack([P.apply(img, spec, rng) for _ in range(2000)])
  gray = (outs[:, 0, 0, 0] == outs[:, 0, 0, 1]) & (outs[:, 0, 0, 1] == outs[:, 0, 0, 2])
  solarized = outs[:, 0, 1, 0] == 0
  assert set(np.unique(outs[:, 0, 1, 0])) <= {0, 255}
  assert abs(gray.mean() - 0.3) < 0.04
  assert abs(solarized.mean() - 0.2) < 0.04


def test_zero_probabilities_and_strengths_disable_ops():
  spec = P.PhotometricSpec(jitter_prob=1.0, brightness=0.0, contrast=0.5,
                           saturation=0.0, hue=0.0, grayscale_prob=0.0,
                           blur_prob=0.0, solarize_prob=1.0)
  rng = np.random.default_rng(12)
  for _ in range(50):
    params = P.sample_params(spec, rng)
    assert [name for name, _ in params.jitter] == ["contrast"]
    assert not params.grayscale and params.blur_sigma is None
    assert params.solarize_threshold == 128


# --------------------------------------------------------------------------
# Determinism, dtype and shape.


@pytest.mark.parametrize("spec", P.SLOTCON_VIEWS, ids=["view1", "view2"])
def test_same_seed_same_output_and_shape_dtype_preserved(spec):
  img = _random_image(13, 31, 45)
  before = img.copy()
  outs = [P.apply(img, spec, np.random.default_rng(seed)) for seed in (5, 5, 6)]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])
  for out in outs:
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out.flags.c_contiguous
  np.testing.assert_array_equal(img, before)  # the input is never written to


def test_apply_returns_a_fresh_array_even_when_nothing_runs():
  spec = P.PhotometricSpec(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
  img = _random_image(14)
  out = P.apply(img, spec, np.random.default_rng(0))
  np.testing.assert_array_equal(out, img)
  assert not np.shares_memory(out, img)


def test_rejects_non_uint8_rgb():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError):
    P.apply(np.zeros((4, 4, 3), np.float32), P.SLOTCON_VIEW1, rng)
  with pytest.raises(ValueError):
    P.apply(np.zeros((4, 4), np.uint8), P.SLOTCON_VIEW1, rng)
