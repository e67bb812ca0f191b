"""Pictures people read: the codebook-usage chart (title, bars in rank order)
and image grids with a row of column captions."""

from __future__ import annotations

import numpy as np
import pytest

from sgc_jax.ops import metrics
from sgc_jax.utils import viz


def test_the_usage_title_gives_k_usage_and_perplexity():
  usage = np.array([3, 1, 0, 0])
  num_codes, used, perplexity = viz.usage_summary(usage)
  p = np.array([0.75, 0.25])
  assert (num_codes, used) == (4, 2)
  assert perplexity == pytest.approx(np.exp(-(p * np.log(p)).sum()))  # 1.7548
  assert viz.usage_title(usage) == "K=4 codes, usage 50.0% (2 used), perplexity 1.75"
  # The numbers of the codebook evaluator (eval.json), computed alike.
  stats = metrics.codebook_statistics(usage)
  assert stats["codebook_usage"] == used / num_codes
  assert stats["perplexity"] == perplexity


def test_the_usage_title_of_no_tokens():
  assert viz.usage_title(np.zeros(8)) == "K=8 codes, usage 0.0% (0 used), perplexity 1.00"


def _bars(image, colour):
  """Per pixel column, the number of pixels of `colour`: (tallest column, its count)."""
  counts = np.all(image == np.asarray(colour, np.uint8), axis=-1).sum(0)
  return int(np.argmax(counts)), int(counts.max())


def test_the_usage_histogram_sorts_the_bars_by_use():
  # Code k stands for class k: each bar has its own colour.
  usage = np.array([1, 0, 3, 2])
  image = viz.usage_histogram(usage, np.arange(4), 4, ["a", "b", "c", "d"])
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  palette = viz.class_palette(4)
  (x2, h2), (x3, h3), (x0, h0) = (_bars(image, palette[k]) for k in (2, 3, 0))
  swatch = 11  # the legend's colour squares
  assert x2 < x3 < x0  # most used leftmost
  assert h2 > h3 > h0 > swatch  # and tallest
  assert _bars(image, palette[1])[1] <= swatch  # unused: no bar, only its legend entry


def test_the_usage_histogram_of_many_codes_and_codes_of_no_class():
  rng = np.random.default_rng(0)
  usage = np.floor(rng.pareto(1.0, 5000) * 5)
  classes = rng.integers(-1, 4, 5000)  # -1: no class (black, "no class" in the legend)
  image = viz.usage_histogram(usage, classes, 3)
  assert image.shape[1] <= 1024 + 100
  # No tokens at all: no bars, still a chart.
  assert viz.usage_histogram(np.zeros(16), np.zeros(16, int), 2).ndim == 3


def test_grid_captions_add_a_header_row_above_the_tiles():
  tile = np.zeros((64, 64, 3), np.uint8)
  rows = [[tile] * 3] * 2
  pad = 2
  plain = viz.grid(rows, pad=pad)
  assert plain.shape == (2 * (64 + pad) + pad, 3 * (64 + pad) + pad, 3)
  captioned = viz.grid(rows, pad=pad, captions=["input", "level 1", "level 2"])
  header = pad + viz.CAPTION_LINE_HEIGHT  # short captions: one line
  assert captioned.shape == (header + plain.shape[0], plain.shape[1], 3)
  np.testing.assert_array_equal(captioned[header:], plain)
  assert (captioned[:header] < 128).any()  # text, on white
  # Captions wider than a column wrap onto more lines of the header.
  narrow = viz.grid([[tile[:32, :32]] * 2], pad=pad, captions=["true classes", "input"])
  assert narrow.shape[0] == pad + 2 * viz.CAPTION_LINE_HEIGHT + (32 + 2 * pad)
  with pytest.raises(ValueError, match="3 captions for 2 columns"):
    viz.grid([[tile] * 2], captions=["a", "b", "c"])


def test_the_reconstruction_grid_has_captions_tiles_and_a_legend():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  segmentation = rng.integers(0, 3, (2, 64, 64))
  tokens = rng.integers(0, 3, (2, 8, 8))
  names = ["sky", "grass", "road"]
  with_reconstruction = viz.reconstruction_grid(images, images, segmentation, tokens, 3, names)
  without = viz.reconstruction_grid(images, None, segmentation, tokens, 3, names)
  tiles = 2 * (64 + 2) + 2
  # The header: one line ("reconstruction" is cut short to fit its 64-pixel column).
  header = 2 + viz.CAPTION_LINE_HEIGHT
  legend = viz.legend(names, with_reconstruction.shape[1]).shape[0]
  assert with_reconstruction.shape == (header + tiles + legend, 4 * (64 + 2) + 2, 3)
  assert without.shape[1] == 3 * (64 + 2) + 2
  # The first tile: the input image, under the header.
  np.testing.assert_array_equal(with_reconstruction[header + 2:header + 66, 2:66],
                                viz.to_uint8(images[0]))


def test_level_captions():
  assert viz.level_captions(2, True) == ["input", "level 1", "level 2", "reconstruction"]
  assert viz.level_captions(1, False) == ["input", "level 1"]
