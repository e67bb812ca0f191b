"""Pictures people would rather see than read: class maps, image grids, legends."""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw

IGNORE_COLOUR = (0, 0, 0)


def class_palette(num_classes: int) -> np.ndarray:
  """Distinct, fixed colours: [num_classes + 1, 3] uint8; the last is "ignore"."""
  colours = []
  for k in range(num_classes):
    hue = (k * 0.618034) % 1.0  # golden-ratio steps keep neighbours apart
    value = 0.95 if k % 2 == 0 else 0.7
    colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, value)])
  return np.asarray(colours + [list(IGNORE_COLOUR)], np.uint8)


def colour_classes(class_map: np.ndarray, num_classes: int) -> np.ndarray:
  """[..., H, W] integer classes -> [..., H, W, 3] uint8; out-of-range is black."""
  palette = class_palette(num_classes)
  index = np.where((class_map >= 0) & (class_map < num_classes), class_map, num_classes)
  return palette[index]


def enlarge(array: np.ndarray, factor: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
  """Nearest-neighbour enlargement along two axes: a token map at its image's
  size (each token repeated over its factor x factor patch)."""
  for axis in axes:
    array = np.repeat(array, factor, axis)
  return array


def to_uint8(image: np.ndarray) -> np.ndarray:
  """A [-1, 1] float image (or uint8) -> uint8."""
  if image.dtype == np.uint8:
    return image
  return np.clip(np.rint((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
  """Tiles rows of equally sized uint8 [H, W, 3] tiles with white gaps."""
  height, width = rows[0][0].shape[:2]
  columns = max(len(r) for r in rows)
  out = np.full((len(rows) * (height + pad) + pad, columns * (width + pad) + pad, 3),
                255, np.uint8)
  for i, row in enumerate(rows):
    for j, tile in enumerate(row):
      y, x = pad + i * (height + pad), pad + j * (width + pad)
      out[y:y + height, x:x + width] = tile
  return out


def legend(class_names: Sequence[str], width: int, row_height: int = 14) -> np.ndarray:
  """A strip naming the colour of every class, wrapped to `width` pixels."""
  palette = class_palette(len(class_names))
  entries = list(enumerate(class_names))
  per_row = max(1, width // 110)
  rows = (len(entries) + per_row - 1) // per_row
  image = PIL.Image.new("RGB", (width, rows * row_height + 4), "white")
  draw = PIL.ImageDraw.Draw(image)
  for n, (k, name) in enumerate(entries):
    x, y = (n % per_row) * 110 + 4, (n // per_row) * row_height + 2
    draw.rectangle([x, y + 1, x + 10, y + 11], fill=tuple(int(c) for c in palette[k]))
    draw.text((x + 14, y), name[:14], fill="black")
  return np.asarray(image)


def save_png(array: np.ndarray, path: str) -> None:
  PIL.Image.fromarray(array).save(path)


def usage_histogram(usage: np.ndarray, code_class: np.ndarray, num_classes: int,
                    height: int = 200, bar_width: int = 2) -> np.ndarray:
  """Tokens per code, codes sorted by use, bars coloured by the code's class;
  log scale, so that rarely used codes stay visible."""
  order = np.argsort(-usage, kind="stable")
  values = np.log1p(np.asarray(usage, np.float64)[order])
  values = values / max(values.max(), 1e-12)
  palette = class_palette(num_classes)
  colours = palette[np.where(code_class[order] < num_classes, code_class[order], num_classes)]
  max_width = 1024
  step = max(1, int(np.ceil(len(order) * bar_width / max_width)))
  bars = range(0, len(order), step)
  image = np.full((height, len(bars) * bar_width, 3), 255, np.uint8)
  for n, start in enumerate(bars):
    bar = int(round(values[start] * (height - 1)))
    image[height - bar:, n * bar_width:(n + 1) * bar_width] = colours[start]
  return image


UNUSED_COLOUR = (200, 200, 200)


def scatter(points: np.ndarray, classes: np.ndarray, num_classes: int,
            size: int = 400, radius: int = 3) -> np.ndarray:
  """A 2-D scatter plot of points coloured by class; points of no class
  (out of range) are light grey and drawn first."""
  points = np.asarray(points, np.float64)
  low, high = points.min(0), points.max(0)
  scaled = (points - low) / np.maximum(high - low, 1e-12) * (size - 4 * radius) + 2 * radius
  palette = class_palette(num_classes)
  image = PIL.Image.new("RGB", (size, size), "white")
  draw = PIL.ImageDraw.Draw(image)
  order = np.argsort((classes >= 0) & (classes < num_classes), kind="stable")
  for (x, y), k in zip(scaled[order], classes[order]):
    colour = tuple(int(c) for c in palette[k]) if 0 <= k < num_classes else UNUSED_COLOUR
    draw.ellipse([x - radius, size - y - radius, x + radius, size - y + radius], fill=colour)
  return np.asarray(image)
