"""Command lines around an inference bundle.

    sgc-tokenize IMAGES_DIR --bundle B --out OUT    # OUT/NAME.npz (+ NAME_semantic.png)
    sgc-detokenize TOKENS_DIR --bundle B --out OUT  # OUT/NAME.png

Images of any size are resized (shorter side to the bundle's size, bicubic)
and centre-cropped. Each .npz holds `indices` [g, g] and, for a semantic
bundle, `semantic` [g, g] (class per token). A file that is not an image,
tokens of the wrong grid or a directory that is not a bundle stop the command
with an error naming the file.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import PIL.Image
import tqdm

from sgc_jax import inference, viz

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class InputError(ValueError):
  pass


def read_image(path: str, size: int) -> np.ndarray:
  """An image file -> [size, size, 3] float32 in [-1, 1] (resize + centre crop)."""
  try:
    with PIL.Image.open(path) as image:
      image = image.convert("RGB")
  except (OSError, SyntaxError, ValueError) as error:
    raise InputError(f"{path}: not a readable image ({error})") from error
  scale = size / min(image.size)
  width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
  image = image.resize((width, height), PIL.Image.BICUBIC)
  left, top = (width - size) // 2, (height - size) // 2
  image = image.crop((left, top, left + size, top + size))
  return np.asarray(image, np.float32) / 127.5 - 1.0


def _files(directory: str, extensions) -> list[str]:
  if not os.path.isdir(directory):
    raise InputError(f"{directory}: no such directory")
  names = sorted(n for n in os.listdir(directory) if n.lower().endswith(extensions))
  if not names:
    raise InputError(f"{directory}: no {'/'.join(extensions)} files")
  return [os.path.join(directory, n) for n in names]


def _batches(items, size):
  for start in range(0, len(items), size):
    yield items[start:start + size]


def tokenize(images_dir: str, bundle: str, out: str, batch_size: int = 16) -> int:
  tokenizer = inference.load(bundle)
  paths = _files(images_dir, IMAGE_EXTENSIONS)
  os.makedirs(out, exist_ok=True)
  factor = tokenizer.image_size // tokenizer.grid
  num_classes = len(tokenizer.class_names)
  with tqdm.tqdm(total=len(paths), unit="image", desc="tokenize") as bar:
    for chunk in _batches(paths, batch_size):
      images = np.stack([read_image(p, tokenizer.image_size) for p in chunk])
      indices, semantic = tokenizer.encode(images)
      for path, idx, sem in zip(chunk, indices, semantic):
        name = os.path.splitext(os.path.basename(path))[0]
        arrays = {"indices": idx.astype(np.int32)}
        if tokenizer.semantic:
          arrays["semantic"] = sem.astype(np.int32)
          colours = viz.colour_classes(np.kron(sem, np.ones((factor, factor), sem.dtype)),
                                       num_classes)
          viz.save_png(colours, os.path.join(out, f"{name}_semantic.png"))
        np.savez(os.path.join(out, f"{name}.npz"), **arrays)
      bar.update(len(chunk))
  return len(paths)


def read_tokens(path: str, grid: int) -> np.ndarray:
  try:
    with np.load(path) as data:
      if "indices" not in data:
        raise InputError(f"{path}: no 'indices' array (holds {sorted(data.files)})")
      indices = np.asarray(data["indices"])
  except (OSError, ValueError) as error:
    if isinstance(error, InputError):
      raise
    raise InputError(f"{path}: not a readable .npz ({error})") from error
  if indices.shape != (grid, grid):
    raise InputError(f"{path}: token grid {indices.shape}, the bundle decodes ({grid}, {grid})")
  return indices


def detokenize(tokens_dir: str, bundle: str, out: str, batch_size: int = 16) -> int:
  tokenizer = inference.load(bundle)
  paths = _files(tokens_dir, (".npz",))
  os.makedirs(out, exist_ok=True)
  with tqdm.tqdm(total=len(paths), unit="image", desc="detokenize") as bar:
    for chunk in _batches(paths, batch_size):
      tokens = np.stack([read_tokens(p, tokenizer.grid) for p in chunk])
      try:
        images = tokenizer.decode(tokens)
      except inference.BundleError as error:
        raise InputError(f"{chunk[0]}..{os.path.basename(chunk[-1])}: {error}") from error
      for path, image in zip(chunk, images):
        name = os.path.splitext(os.path.basename(path))[0]
        viz.save_png(viz.to_uint8(image), os.path.join(out, f"{name}.png"))
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
    sys.exit(f"error: {error}")
  print(f"wrote {count} files to {args[2]}")


def tokenize_main(argv=None):
  args = _parser("Images -> tokens (.npz) and semantic maps (.png).", "images_dir").parse_args(argv)
  _run(tokenize, (args.images_dir, args.bundle, args.out, args.batch_size))


def detokenize_main(argv=None):
  args = _parser("Tokens (.npz) -> images (.png).", "tokens_dir").parse_args(argv)
  _run(detokenize, (args.tokens_dir, args.bundle, args.out, args.batch_size))
