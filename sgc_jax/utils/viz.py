"""Pictures people would rather see than read: class maps, image grids with
column captions, legends, the codebook-usage chart (NumPy and PIL alone)."""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

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


def grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2,
         captions: Sequence[str] | None = None) -> np.ndarray:
  """Tiles rows of equally sized uint8 [H, W, 3] tiles with white gaps;
  `captions`: one per column (at most), written in a header row above them."""
  height, width = rows[0][0].shape[:2]
  columns = max(len(r) for r in rows)
  out = np.full((len(rows) * (height + pad) + pad, columns * (width + pad) + pad, 3),
                255, np.uint8)
  for i, row in enumerate(rows):
    for j, tile in enumerate(row):
      y, x = pad + i * (height + pad), pad + j * (width + pad)
      out[y:y + height, x:x + width] = tile
  if captions is None:
    return out
  if len(captions) > columns:
    raise ValueError(f"{len(captions)} captions for {columns} columns: {list(captions)}")
  return np.concatenate([caption_row(captions, width, out.shape[1], pad), out], 0)


CAPTION_LINE_HEIGHT = 12  # PIL's default font (10 px) and a little air


def _fit_lines(draw: PIL.ImageDraw.ImageDraw, text: str, width: float, font) -> list[str]:
  """`text` on lines of at most `width` pixels, broken between words; a word
  longer than a line is cut short ("reconstr.")."""
  length = lambda t: draw.textlength(t, font=font)  # noqa: E731
  lines: list[str] = []
  for word in text.split():
    if length(word) > width:
      while len(word) > 1 and length(word + ".") > width:
        word = word[:-1]
      word += "."
    if lines and length(f"{lines[-1]} {word}") <= width:
      lines[-1] = f"{lines[-1]} {word}"
    else:
      lines.append(word)
  return lines or [""]


def _caption_font(draw: PIL.ImageDraw.ImageDraw, words: Sequence[str], width: float):
  """PIL's default font at 10 px, or at 9 or 8 where that fits every word in
  `width` pixels (without FreeType: the bitmap default)."""
  try:
    fonts = [PIL.ImageFont.load_default(size) for size in (10, 9, 8)]
  except ImportError:  # no FreeType: one size
    return PIL.ImageFont.load_default()
  for font in fonts:
    if all(draw.textlength(word, font=font) <= width for word in words):
      return font
  return fonts[0]


def caption_row(captions: Sequence[str], tile_width: int, width: int, pad: int = 2) -> np.ndarray:
  """The header row of `grid`: each caption centred over its column (tiles of
  `tile_width` with `pad` gaps), wrapped to the column, in a smaller font
  where a word would not fit; `width` pixels wide. Height: pad +
  CAPTION_LINE_HEIGHT per line of the longest caption."""
  draw = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
  font = _caption_font(draw, [w for caption in captions for w in caption.split()], tile_width)
  wrapped = [_fit_lines(draw, caption, tile_width, font) for caption in captions]
  lines = max((len(w) for w in wrapped), default=1)
  image = PIL.Image.new("RGB", (width, pad + lines * CAPTION_LINE_HEIGHT), "white")
  draw = PIL.ImageDraw.Draw(image)
  for j, caption_lines in enumerate(wrapped):
    left = pad + j * (tile_width + pad)
    for n, line in enumerate(caption_lines):
      x = left + max(0.0, (tile_width - draw.textlength(line, font=font)) / 2)
      draw.text((x, pad + n * CAPTION_LINE_HEIGHT), line, fill="black", font=font)
  return np.asarray(image)


def legend(class_names: Sequence[str], width: int, row_height: int = 14,
           unclassed: str | None = None) -> np.ndarray:
  """A strip naming the colour of every class, wrapped to `width` pixels;
  `unclassed`: the name of a last entry for the "ignore" colour."""
  palette = class_palette(len(class_names))
  entries = [(tuple(int(c) for c in palette[k]), name) for k, name in enumerate(class_names)]
  if unclassed is not None:
    entries.append((IGNORE_COLOUR, unclassed))
  per_row = max(1, width // 110)
  rows = (len(entries) + per_row - 1) // per_row
  image = PIL.Image.new("RGB", (width, rows * row_height + 4), "white")
  draw = PIL.ImageDraw.Draw(image)
  for n, (colour, name) in enumerate(entries):
    x, y = (n % per_row) * 110 + 4, (n // per_row) * row_height + 2
    draw.rectangle([x, y + 1, x + 10, y + 11], fill=colour)
    draw.text((x + 14, y), name[:14], fill="black")
  return np.asarray(image)


def save_png(array: np.ndarray, path: str) -> None:
  PIL.Image.fromarray(array).save(path)


def colour_codes(indices: np.ndarray, code_class: np.ndarray, num_classes: int) -> np.ndarray:
  """[..., g, g] code indices -> [..., g, g, 3] uint8: the hue of the code's
  class, each code of a class its own shade (lighter or darker), so that
  regions of one class show which codes tile them."""
  shade = 0.55 + 0.45 * ((np.asarray(indices) * 0.618034) % 1.0)
  return np.rint(colour_classes(code_class[indices], num_classes) * shade[..., None]
                 ).astype(np.uint8)


def reconstruction_grid(images, reconstructions, segmentation, token_classes,
                        num_classes: int, class_names: Sequence[str],
                        codes: np.ndarray | None = None) -> np.ndarray:
  """Rows of input | reconstruction | true classes | semantic map (the token
  classes) | codes coloured by class (`codes`: [N, g, g, 3] of
  `colour_codes`), under a row of captions and above a legend of the classes
  (no reconstruction or codes column where they are None)."""
  height = images.shape[1]
  rows = []
  for i, (x, seg, tokens) in enumerate(zip(images, segmentation, token_classes)):
    factor = height // tokens.shape[0]
    token_map = enlarge(tokens, factor)
    rows.append([to_uint8(x)]
                + ([] if reconstructions is None else [to_uint8(reconstructions[i])])
                + [colour_classes(seg, num_classes), colour_classes(token_map, num_classes)]
                + ([] if codes is None else [enlarge(codes[i], height // codes.shape[1])]))
  captions = (["input"] + ([] if reconstructions is None else ["reconstruction"])
              + ["true classes", "semantic map"]
              + ([] if codes is None else ["codes (hue: class, shade: code)"]))
  tiles = grid(rows, captions=captions)
  return np.concatenate([tiles, legend(class_names, tiles.shape[1])], 0)


def level_captions(num_levels: int, with_reconstruction: bool) -> list[str]:
  """The captions of a pyramid's rows: input | level 1 .. n | reconstruction."""
  return (["input"] + [f"level {n + 1}" for n in range(num_levels)]
          + (["reconstruction"] if with_reconstruction else []))


def usage_summary(usage: np.ndarray) -> tuple[int, int, float]:
  """(K, codes used, perplexity) of per-code token counts [K]; perplexity: exp
  of the entropy of the usage distribution, computed as in
  metrics.codebook_statistics (whose `codebook_usage` is used / K)."""
  usage = np.asarray(usage, np.float64)
  p = usage / max(usage.sum(), 1e-12)
  nonzero = p[p > 0]
  entropy = float(-(nonzero * np.log(nonzero)).sum())
  return int(usage.shape[0]), int((usage > 0).sum()), float(np.exp(entropy))


def usage_title(usage: np.ndarray) -> str:
  """The title of `usage_histogram`: K, usage (the share of codes used) and perplexity."""
  num_codes, used, perplexity = usage_summary(usage)
  return (f"K={num_codes} codes, usage {used / max(num_codes, 1):.1%} ({used} used), "
          f"perplexity {perplexity:.2f}")


def _share_label(exponent: int) -> str:
  """10 ** exponent as a percentage: 100%, 10%, 1%, 0.1%, 0.01%, ..."""
  return f"{10.0 ** (exponent + 2):.{max(0, -(exponent + 2))}f}%"


def _nice_step(span: float) -> int:
  """The least of 1, 2, 5, 10, 20, 50, ... that is at least `span`."""
  power = 1
  while True:
    for multiple in (1, 2, 5):
      if power * multiple >= span:
        return power * multiple
    power *= 10


def usage_histogram(usage: np.ndarray, code_class: np.ndarray, num_classes: int,
                    class_names: Sequence[str] | None = None, height: int = 200,
                    bar_width: int = 2) -> np.ndarray:
  """A bar chart of the share of tokens per code: x, the code's rank (codes
  sorted by use, most used first); y, its share of the tokens on a log axis
  (whole decades), so that rarely used codes stay visible (unused codes have no
  bar); bars coloured by the class each code stands for (black: none), with a
  legend of `class_names` below; title: `usage_title`. The plot is
  `bar_width` pixels per code, between 360 and 1024 pixels wide: with more
  codes than pixels, each pixel column shows the most used code of its ranks."""
  usage = np.asarray(usage, np.float64)
  code_class = np.asarray(code_class)
  num_codes = usage.shape[0]
  if class_names is None:
    class_names = [f"class {k}" for k in range(num_classes)]
  order = np.argsort(-usage, kind="stable")
  share = usage[order] / max(usage.sum(), 1e-12)
  classes = code_class[order]
  known = (classes >= 0) & (classes < num_classes)
  colours = class_palette(num_classes)[np.where(known, classes, num_classes)]
  used = share[share > 0]
  low = int(np.floor(np.log10(used.min()))) if used.size else -2
  high = max(int(np.ceil(np.log10(used.max()))) if used.size else 0, low + 1)
  with np.errstate(divide="ignore"):
    level = np.clip((np.log10(share) - low) / (high - low), 0.0, 1.0)
  bar = np.where(share > 0, np.maximum(1, np.rint(level * height)), 0).astype(np.int64)

  plot_width = int(np.clip(num_codes * bar_width, 360, 1024))
  column = np.arange(plot_width)
  rank = column * num_codes // plot_width  # the code each pixel column shows
  heights = bar[rank]
  if plot_width >= 4 * num_codes:  # wide bars: a white gap after each
    heights = np.where((column + 1) * num_codes // plot_width != rank, 0, heights)

  line = CAPTION_LINE_HEIGHT
  measure = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
  y_labels = {e: _share_label(e) for e in range(low, high + 1)}
  left = int(max(measure.textlength(label) for label in y_labels.values())) + 10
  top = 4 + 2 * line + 6  # title, the y axis's name, room for its top label
  width = left + plot_width + 16
  axis = top + height  # the row of the x axis, under the bars
  image = PIL.Image.new("RGB", (width, axis + 6 + 2 * line + 4), "white")
  draw = PIL.ImageDraw.Draw(image)
  y_of = lambda e: round(axis - (e - low) / (high - low) * height)  # noqa: E731
  for e in y_labels:
    draw.line([(left, y_of(e)), (left + plot_width - 1, y_of(e))], fill=(225, 225, 225))
  canvas = np.array(image)
  filled = np.arange(height)[:, None] >= height - heights[None, :]
  plot = canvas[top:axis, left:left + plot_width]
  plot[filled] = np.broadcast_to(colours[rank], plot.shape)[filled]
  image = PIL.Image.fromarray(canvas)
  draw = PIL.ImageDraw.Draw(image)

  draw.line([(left - 1, top), (left - 1, axis)], fill="black")
  draw.line([(left - 1, axis), (left + plot_width, axis)], fill="black")
  for e, label in y_labels.items():
    draw.line([(left - 4, y_of(e)), (left - 1, y_of(e))], fill="black")
    draw.text((left - 6 - draw.textlength(label), y_of(e) - 6), label, fill="black")
  step = _nice_step(num_codes / 6)
  right_end = -np.inf
  for r in [1] + [r for r in range(step, num_codes + 1, step) if r > 1]:
    x = left + (r - 0.5) * plot_width / num_codes
    label = str(r)
    half = draw.textlength(label) / 2
    if x - half < right_end + 6:  # no labels on top of each other
      continue
    draw.line([(x, axis), (x, axis + 3)], fill="black")
    draw.text((x - half, axis + 4), label, fill="black")
    right_end = x + half
  title = usage_title(usage)
  draw.text((max(4, (width - draw.textlength(title)) / 2), 4), title, fill="black")
  draw.text((4, 4 + line), "share of tokens (log scale)", fill="black")
  x_name = "code rank (codes sorted by share of tokens)"
  draw.text((left + max(0, (plot_width - draw.textlength(x_name)) / 2), axis + 4 + line),
            x_name, fill="black")
  strip = legend(class_names, width, unclassed=None if known.all() else "no class")
  return np.concatenate([np.asarray(image), strip], 0)


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


# Colours of the per-class chart's metrics, in the order they are drawn.
_METRIC_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                   (148, 103, 189), (140, 86, 75), (227, 119, 194))


def per_class_chart(per_class: dict[str, np.ndarray], class_names: Sequence[str],
                    labels: dict[str, str] | None = None, bar_length: int = 300) -> np.ndarray:
  """One row per class (its colour and name on the left): grouped bars of
  every per-class IoU (x: IoU, 0 to 1; a key ending in `_iou`, coloured as in
  the legend on top; no bar where the class is absent), then the class's share
  of the labelled pixels (grey) against the share of tokens its units take
  (black), on one axis (0 to the largest share), and how many units stand
  for it, so that a class the tokenizer lost reads at a glance (no black bar,
  0 units). `labels`: the legend's text of each key."""
  labels = labels or {}
  ious = [key for key in per_class if key.endswith("_iou")]
  line = CAPTION_LINE_HEIGHT
  bar, gap = 6, 6
  row_height = max(line, bar * len(ious)) + gap
  measure = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
  name_width = int(max(measure.textlength(name) for name in class_names)) + 22
  share_length = 160
  iou_left = name_width + 8
  share_left = iou_left + bar_length + 30
  units_left = share_left + share_length + 12
  width = units_left + 70
  entries = [(_METRIC_COLOURS[n % len(_METRIC_COLOURS)], labels.get(key, key))
             for n, key in enumerate(ious)]
  entries += [((170, 170, 170), "share of labelled pixels"),
              ((0, 0, 0), "share of tokens of its units")]
  legend_rows, x = [[]], 4
  for colour, text in entries:  # wrapped to the chart's width
    entry_width = 28 + measure.textlength(text)
    if legend_rows[-1] and x + entry_width > width:
      legend_rows.append([])
      x = 4
    legend_rows[-1].append((colour, text))
    x += entry_width
  top = 4 + line * (1 + len(legend_rows)) + 8
  axis = top + row_height * len(class_names)
  image = PIL.Image.new("RGB", (width, axis + 2 * line + 8), "white")
  draw = PIL.ImageDraw.Draw(image)
  draw.text((4, 4), "per class: IoU of each prediction | pixels and tokens | units",
            fill="black")
  for r, entries in enumerate(legend_rows):
    x = 4
    for colour, text in entries:
      y = 4 + line * (1 + r)
      draw.rectangle([x, y + 2, x + 10, y + 10], fill=colour)
      draw.text((x + 14, y), text, fill="black")
      x += 14 + draw.textlength(text) + 14
  shares = np.concatenate([per_class.get("pixel_share", np.zeros(1)),
                           per_class.get("token_share", np.zeros(1))])
  share_top = max(float(np.nanmax(shares)), 1e-6)
  for tick in np.linspace(0, 1, 6):  # IoU grid and ticks
    x = iou_left + tick * bar_length
    draw.line([(x, top), (x, axis)], fill=(225, 225, 225))
    draw.text((x - draw.textlength(f"{tick:.1f}") / 2, axis + 3), f"{tick:.1f}", fill="black")
  for tick in (0.0, share_top):
    x = share_left + tick / share_top * share_length
    text = f"{tick:.0%}" if tick >= 0.01 or tick == 0 else f"{tick:.1%}"
    draw.text((x - draw.textlength(text) / 2, axis + 3), text, fill="black")
  draw.text((iou_left + bar_length / 2 - 10, axis + 3 + line), "IoU", fill="black")
  draw.text((share_left + 10, axis + 3 + line), "share", fill="black")
  palette = class_palette(len(class_names))
  for c, name in enumerate(class_names):
    y = top + c * row_height
    draw.rectangle([4, y + 2, 14, y + 12], fill=tuple(int(v) for v in palette[c]))
    draw.text((18, y), name, fill="black")
    for n, key in enumerate(ious):
      value = per_class[key][c]
      if np.isfinite(value):
        colour = _METRIC_COLOURS[n % len(_METRIC_COLOURS)]
        draw.rectangle([iou_left, y + n * bar, iou_left + max(1, value * bar_length),
                        y + (n + 1) * bar - 2], fill=colour)
    for n, (key, colour) in enumerate((("pixel_share", (170, 170, 170)),
                                       ("token_share", (0, 0, 0)))):
      if key in per_class:
        length = per_class[key][c] / share_top * share_length
        draw.rectangle([share_left, y + n * 7, share_left + max(1, length), y + n * 7 + 5],
                       fill=colour)
    if "units" in per_class:
      draw.text((units_left, y), f"{int(per_class['units'][c])} units", fill="black")
  for x in (iou_left, share_left):
    draw.line([(x - 1, top), (x - 1, axis)], fill="black")
  draw.line([(iou_left - 1, axis), (iou_left + bar_length, axis)], fill="black")
  draw.line([(share_left - 1, axis), (share_left + share_length, axis)], fill="black")
  return np.asarray(image)
