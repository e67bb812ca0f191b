"""Command lines around an inference bundle.

    sgc-tokenize IMAGES_DIR --bundle B --out OUT    # OUT/NAME.npz (+ NAME_semantic.png)
    sgc-detokenize TOKENS_DIR --bundle B --out OUT  # OUT/NAME.png
    sgc-segment IMAGES_DIR --bundle B --out OUT [--classes "sky,water,..."]
                                                    # OUT/NAME.png, NAME_classes.png

Images of any size are resized (shorter side to the bundle's size, bicubic)
and centre-cropped. Each .npz holds `indices` [g, g] and, for a semantic
bundle, `semantic` [g, g] (class per token). A file that is not an image,
tokens of the wrong grid or range, two inputs that would write the same output
or a directory that is not a bundle stop the command with a one-line error
naming the file, before it writes anything (an image whose pixel data, past its
header, is damaged stops it where it is met).

Images are refused past Pillow's decompression-bomb limit (`MAX_IMAGE_PIXELS`,
which Pillow only warns about below twice that) and past an aspect ratio of
`MAX_ASPECT`:1: the centre crop would keep under 1/MAX_ASPECT of the image, and
the resized image before the crop is MAX_ASPECT x the bundle's size at most.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import PIL.Image
import tqdm

from sgc_jax import inference, viz

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_ASPECT = 64  # Long side : short side; why 64, see the module docstring.


class InputError(ValueError):
  pass


def _open(path: str) -> PIL.Image.Image:
  """The image file, its header read and checked, its pixels not yet decoded."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
      image = PIL.Image.open(path)
  except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
    raise InputError(f"{path}: refused ({error})") from None
  except (OSError, SyntaxError, ValueError) as error:
    raise InputError(f"{path}: not a readable image ({error})") from error
  width, height = image.size
  if max(width, height) > MAX_ASPECT * min(width, height):
    image.close()
    raise InputError(f"{path}: {width}x{height} pixels, an aspect ratio past "
                     f"{MAX_ASPECT}:1 (its centre crop would keep under 1/{MAX_ASPECT})")
  return image


def read_image(path: str, size: int) -> np.ndarray:
  """An image file -> [size, size, 3] float32 in [-1, 1] (resize + centre crop)."""
  with _open(path) as image:
    try:
      image = image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
      raise InputError(f"{path}: not a readable image ({error})") from error
  scale = size / min(image.size)
  width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
  image = image.resize((width, height), PIL.Image.BICUBIC)
  left, top = (width - size) // 2, (height - size) // 2
  image = image.crop((left, top, left + size, top + size))
  return np.asarray(image, np.float32) / 127.5 - 1.0


def _inputs(directory: str, extensions, batch_size: int) -> list[str]:
  """A command's input files; a batch size below 1 or two inputs that would
  write the same output are refused before any work."""
  if batch_size < 1:
    raise InputError(f"--batch_size {batch_size}: at least 1 expected")
  if not os.path.isdir(directory):
    raise InputError(f"{directory}: no such directory")
  names = sorted(n for n in os.listdir(directory) if n.lower().endswith(extensions))
  if not names:
    raise InputError(f"{directory}: no {'/'.join(extensions)} files")
  stems = {}
  for name in names:
    other = stems.setdefault(_stem(name), name)
    if other != name:
      raise InputError(f"{os.path.join(directory, other)} and {os.path.join(directory, name)}: "
                       f"both would write {_stem(name)}.* (rename one)")
  return [os.path.join(directory, n) for n in names]


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _batches(items, size):
  for start in range(0, len(items), size):
    yield items[start:start + size]


def tokenize(images_dir: str, bundle: str, out: str, batch_size: int = 16) -> int:
  paths = _inputs(images_dir, IMAGE_EXTENSIONS, batch_size)
  for path in paths:  # Headers only: a refused image stops the command before any work.
    _open(path).close()
  tokenizer = inference.load(bundle)
  size = tokenizer.image_size
  # A first batch of zeros compiles the program before any output: damage
  # that only compilation finds stops the command with nothing written.
  tokenizer.encode(np.zeros((min(batch_size, len(paths)), size, size, 3), np.float32))
  os.makedirs(out, exist_ok=True)
  factor = tokenizer.image_size // tokenizer.grid
  num_classes = len(tokenizer.class_names)
  with tqdm.tqdm(total=len(paths), unit="image", desc="tokenize") as bar:
    for chunk in _batches(paths, batch_size):
      images = np.stack([read_image(p, size) for p in chunk])
      indices, semantic = tokenizer.encode(images)
      for path, idx, sem in zip(chunk, indices, semantic):
        name = _stem(path)
        arrays = {"indices": idx.astype(np.int32)}
        if tokenizer.semantic:
          arrays["semantic"] = sem.astype(np.int32)
          colours = viz.colour_classes(viz.enlarge(sem, factor), num_classes)
          viz.save_png(colours, os.path.join(out, f"{name}_semantic.png"))
        np.savez(os.path.join(out, f"{name}.npz"), **arrays)
      bar.update(len(chunk))
  return len(paths)


def read_tokens(path: str, grid: int, num_codes: int | None = None) -> np.ndarray:
  """`indices` of a token file, checked against the bundle's grid and codes."""
  try:
    with np.load(path) as data:
      if "indices" not in data:
        raise InputError(f"{path}: no 'indices' array (holds {sorted(data.files)})")
      indices = np.asarray(data["indices"])
  except InputError:
    raise
  except Exception as error:  # np.load raises whatever a damaged file trips over.
    raise InputError(f"{path}: not a readable .npz ({inference.describe(error)})") from None
  if indices.shape != (grid, grid):
    raise InputError(f"{path}: token grid {indices.shape}, the bundle decodes ({grid}, {grid})")
  if not np.issubdtype(indices.dtype, np.integer):
    raise InputError(f"{path}: token indices of dtype {indices.dtype}, integers expected")
  if num_codes is not None and (indices.min() < 0 or indices.max() >= num_codes):
    raise InputError(f"{path}: token indices in [{indices.min()}, {indices.max()}], the "
                     f"bundle has {num_codes} codes")
  return indices


def detokenize(tokens_dir: str, bundle: str, out: str, batch_size: int = 16) -> int:
  paths = _inputs(tokens_dir, (".npz",), batch_size)
  tokenizer = inference.load(bundle)
  read = lambda path: read_tokens(path, tokenizer.grid, tokenizer.num_codes)  # noqa: E731
  for path in paths:  # Token files are small: all checked before any is decoded.
    read(path)
  tokenizer.decode(np.zeros((min(batch_size, len(paths)), tokenizer.grid, tokenizer.grid),
                            np.int32))  # Compiled before any output, as in `tokenize`.
  os.makedirs(out, exist_ok=True)
  with tqdm.tqdm(total=len(paths), unit="image", desc="detokenize") as bar:
    for chunk in _batches(paths, batch_size):
      images = tokenizer.decode(np.stack([read(p) for p in chunk]))
      for path, image in zip(chunk, images):
        viz.save_png(viz.to_uint8(image), os.path.join(out, f"{_stem(path)}.png"))
      bar.update(len(chunk))
  return len(paths)


def class_embeddings(model, classes: str | None) -> tuple[list[str], np.ndarray]:
  """(class names, their unit embeddings [C, E]) for `sgc-segment`: the
  bundle's own classes without `classes`; else the comma-separated names,
  embedded by the bundle's text tower where it holds one (CLIP), or, for a
  closed vocabulary, looked up among the bundle's classes."""
  own = np.asarray(model.variables["text"], np.float32)
  if classes is None:
    return list(model.class_names), own
  names = [n.strip() for n in classes.split(",")]
  if not all(names) or len(set(names)) != len(names):
    raise InputError(f"--classes {classes!r}: comma-separated, non-empty, distinct names")
  if "embed_text" in model.functions:
    from sgc_jax.models import clip_text
    return names, clip_text.embed_with_bundle(model, names)
  unknown = [n for n in names if n not in model.class_names]
  if unknown:
    raise InputError(f"--classes: {', '.join(map(repr, unknown))} not among the classes of "
                     f"this closed-vocabulary bundle ({', '.join(model.class_names)}); a "
                     "bundle with a text tower (CLIP) takes any names")
  return names, own[[model.class_names.index(n) for n in names]]


def segment(images_dir: str, bundle: str, out: str, batch_size: int = 16,
            classes: str | None = None) -> int:
  paths = _inputs(images_dir, IMAGE_EXTENSIONS, batch_size)
  for path in paths:
    _open(path).close()
  model = inference.load(bundle)
  if "segment" not in model.functions:
    raise InputError(f"{bundle}: a {model.method} bundle, with no segment function (it holds "
                     f"{', '.join(model.functions)})")
  names, text = class_embeddings(model, classes)
  if len(names) > 255:
    raise InputError(f"--classes: {len(names)} classes; the class PNGs hold at most 255")
  size = model.image_size
  model.call("segment", (np.zeros((min(batch_size, len(paths)), size, size, 3), np.float32),
                         text))  # Compiled before any output, as in `tokenize`.
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "classes.txt"), "w") as f:
    f.write("".join(f"{n}\n" for n in names))
  with tqdm.tqdm(total=len(paths), unit="image", desc="segment") as bar:
    for chunk in _batches(paths, batch_size):
      maps = model.call("segment", (np.stack([read_image(p, size) for p in chunk]), text))
      for path, classes_map in zip(chunk, maps):
        name = _stem(path)
        viz.save_png(classes_map.astype(np.uint8), os.path.join(out, f"{name}_classes.png"))
        viz.save_png(viz.colour_classes(classes_map, len(names)),
                     os.path.join(out, f"{name}.png"))
      bar.update(len(chunk))
  return len(paths)


def _parser(description: str, source: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument(source)
  parser.add_argument("--bundle", required=True, help="an inference bundle (--mode=export)")
  parser.add_argument("--out", required=True)
  parser.add_argument("--batch_size", type=int, default=16)
  return parser


def _run(function, args) -> None:
  try:
    count = function(*args)
  except (InputError, inference.BundleError) as error:
    sys.exit("error: " + " ".join(str(error).splitlines()))  # One line, whatever it quotes.
  print(f"wrote {count} files to {args[2]}")


def tokenize_main(argv=None):
  args = _parser("Images -> tokens (.npz) and semantic maps (.png).", "images_dir").parse_args(argv)
  _run(tokenize, (args.images_dir, args.bundle, args.out, args.batch_size))


def segment_main(argv=None):
  parser = _parser("Images -> class maps (.png) of a PAT bundle, for any class names.",
                   "images_dir")
  parser.add_argument("--classes", help="comma-separated class names (default: the "
                      "bundle's own classes)")
  args = parser.parse_args(argv)
  _run(segment, (args.images_dir, args.bundle, args.out, args.batch_size, args.classes))


def detokenize_main(argv=None):
  args = _parser("Tokens (.npz) -> images (.png).", "tokens_dir").parse_args(argv)
  _run(detokenize, (args.tokens_dir, args.bundle, args.out, args.batch_size))
