"""Command lines around an inference bundle.

    sgc-tokenize IMAGES_DIR --bundle B --out OUT    # OUT/NAME.npz (+ NAME_semantic.png)
                 [--max_side 512]
    sgc-detokenize TOKENS_DIR --bundle B --out OUT  # OUT/NAME.png
    sgc-segment IMAGES_DIR --bundle B --out OUT [--classes "sky,water,..."]
                                                    # OUT/NAME.png, NAME_classes.png

An SGC-VQGAN bundle of any-size functions (`inference.Tokenizer.any_size`)
tokenizes each photo at about its own size, aspect kept: a photo longer than
--max_side pixels is scaled down to it first (what bounds the memory), then
each side is resized to the nearest multiple of the bundle's factor (pixels
per token: at 4, a 480x360 photo stays 480x360, a 481x361 one becomes 480x360).
Photos of one size share a batch. `sgc-detokenize` writes each image back at
its photo's size, resized where tokenizing changed it. Other bundles (fixed-size
SGC-VQGAN bundles of earlier releases, PAT, SlotCon, ACSeg) take images resized
(shorter side to the bundle's size, bicubic) and centre-cropped.

The token files, what `sgc-detokenize` reads back:
  one-grid bundle (SGC-VQGAN)  NAME.npz: `indices` [h, w] and, for a semantic
                               bundle, `semantic` [h, w] (class per token);
                               any-size: `original_size` [height, width], the
                               photo's; fixed-size: h = w = the bundle's grid
  pyramid bundle (PAT)         NAME.npz: each level's indices, `indices_0`
                               [g_0, g_0] (the finest) to `indices_{L-1}`
`sgc-segment` writes each pixel's class: a PAT bundle's classes (its own, or
any names with --classes), a SlotCon bundle's prototypes or an ACSeg bundle's
clusters (`prototype_k` / `cluster_k` in classes.txt); NAME_classes.png is 8-bit
up to 256 classes, 16-bit past that. A bundle without the function a command
needs (a SlotCon bundle has no decoder) is refused in one line.

A file that is not an image, tokens of the wrong grid or range, two inputs
that would write the same output or a directory that is not a bundle stop the
command with a one-line error naming the file, before it writes anything (an
image whose pixel data, past its header, is damaged stops it where it is met).

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
from typing import Sequence

import numpy as np
import PIL.Image
import tqdm

from sgc_jax.bundle import inference
from sgc_jax.models import clip_tokenizer
from sgc_jax.utils import run_output, tree_io, viz

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_ASPECT = 64  # Long side : short side; why 64, see the module docstring.
MAX_SIDE = 512  # --max_side's default: an any-size bundle's photos, longer side in pixels.
MAX_CLASSES = 2 ** 16  # What a 16-bit class PNG holds.


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


def _rgb(path: str) -> PIL.Image.Image:
  with _open(path) as image:
    try:
      return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
      raise InputError(f"{path}: not a readable image ({error})") from error


def _symmetric(image: PIL.Image.Image) -> np.ndarray:
  return np.asarray(image, np.float32) / 127.5 - 1.0


def read_image(path: str, size: int) -> np.ndarray:
  """An image file -> [size, size, 3] float32 in [-1, 1] (resize + centre crop)."""
  image = _rgb(path)
  scale = size / min(image.size)
  width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
  image = image.resize((width, height), PIL.Image.BICUBIC)
  left, top = (width - size) // 2, (height - size) // 2
  image = image.crop((left, top, left + size, top + size))
  return _symmetric(image)


def fitted_size(width: int, height: int, factor: int, max_side: int) -> tuple[int, int]:
  """(width, height) at which an any-size bundle encodes a `width` x `height`
  photo: scaled down to `max_side` pixels on its longer side (aspect kept),
  then each side rounded to the nearest multiple of `factor` (one at least,
  `max_side` at most)."""
  scale = min(1.0, max_side / max(width, height))
  columns, rows = (min(max(1, int(side * scale / factor + 0.5)), max_side // factor)
                   for side in (width, height))
  return columns * factor, rows * factor


def read_photo(path: str, size: tuple[int, int]) -> np.ndarray:
  """An image file -> [height, width, 3] float32 in [-1, 1] at `size`,
  (width, height): resized (bicubic) where its own size differs, never cropped."""
  image = _rgb(path)
  if image.size != size:
    image = image.resize(size, PIL.Image.BICUBIC)
  return _symmetric(image)


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


def _batches_by_shape(paths, shapes: dict, size: int) -> list[list[str]]:
  """Batches of at most `size` paths of one shape each (a batch is one array),
  each shape's in the order of its first path."""
  groups = {}
  for path in paths:
    groups.setdefault(shapes[path], []).append(path)
  return [batch for group in groups.values() for batch in _batches(group, size)]


def _require(model, bundle: str, function: str, command: str, lacks: str) -> None:
  if function not in model.functions:
    raise InputError(f"{bundle}: a {model.method} bundle has no {lacks}: {command} needs "
                     f"{function} (it holds {', '.join(model.functions)})")


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _levels(model) -> list[tuple[int, int]] | None:
  """(grid, codes) of each level of a pyramid tokenizer (PAT), finest first;
  None for a one-grid one, whose fields the loader checks."""
  if "grids" not in model.description:
    return None
  path = os.path.join(model.directory, "model.json")
  fields = {name: model.description.get(name) for name in ("grids", "level_codes")}
  for name, value in fields.items():
    if not (isinstance(value, list) and value and all(map(_positive_int, value))):
      raise inference.BundleError(f"{path}: {name} is {value!r}, expected a list of "
                                  "positive integers")
  if len(fields["grids"]) != len(fields["level_codes"]):
    raise inference.BundleError(f"{path}: {len(fields['grids'])} grids, "
                                f"{len(fields['level_codes'])} level_codes")
  return list(zip(fields["grids"], fields["level_codes"]))


def _encoder(tokenizer, levels):
  """The bundle's encode as images [N, ...] -> {name in the token files: [N, ...]};
  `levels`: a pyramid's (`_levels`), None for a one-grid tokenizer."""
  if levels is None:
    def encode(images):
      indices, semantic = tokenizer.encode(images)
      return {"indices": indices, **({"semantic": semantic} if tokenizer.semantic else {})}
    return encode

  def encode_levels(images):
    outputs = tokenizer.call("encode_levels", images)
    if len(outputs) != len(levels):
      raise inference.BundleError(f"{tokenizer.directory}: encode_levels returns "
                                  f"{len(outputs)} levels, model.json describes {len(levels)}")
    return {f"indices_{level}": indices for level, indices in enumerate(outputs)}
  return encode_levels


def tokenize(images_dir: str, bundle: str, out: str, batch_size: int = 16,
             max_side: int = MAX_SIDE) -> int:
  paths = _inputs(images_dir, IMAGE_EXTENSIONS, batch_size)
  if max_side < 1:
    raise InputError(f"--max_side {max_side}: at least 1 expected")
  photo_sizes = {}  # (width, height)
  for path in paths:  # Headers only: a refused image stops the command before any work.
    with _open(path) as image:
      photo_sizes[path] = image.size
  tokenizer = inference.load(bundle)
  levels = _levels(tokenizer)
  _require(tokenizer, bundle, "encode" if levels is None else "encode_levels", "sgc-tokenize",
           "encoder")
  encode = _encoder(tokenizer, levels)
  any_size = levels is None and tokenizer.any_size
  if any_size:  # Each photo near its own size, its aspect kept.
    factor = tokenizer.factor
    if max_side < factor:
      raise InputError(f"--max_side {max_side}: under one token of the bundle ({factor} pixels)")
    sizes = {path: fitted_size(*photo_sizes[path], factor, max_side) for path in paths}
    read = lambda path: read_photo(path, sizes[path])  # noqa: E731
  else:  # The bundle's size: resized and centre-cropped.
    size = tokenizer.image_size
    sizes = dict.fromkeys(paths, (size, size))
    read = lambda path: read_image(path, size)  # noqa: E731
  batches = _batches_by_shape(paths, sizes, batch_size)
  # A first batch of zeros compiles the program before any output: damage
  # that only compilation finds stops the command with nothing written.
  width, height = sizes[batches[0][0]]
  encode(np.zeros((len(batches[0]), height, width, 3), np.float32))
  os.makedirs(out, exist_ok=True)
  num_classes = len(tokenizer.class_names)
  with tqdm.tqdm(total=len(paths), unit="image", desc="tokenize") as bar:
    for chunk in batches:
      arrays = encode(np.stack([read(p) for p in chunk]))
      for i, path in enumerate(chunk):
        name = _stem(path)
        if "semantic" in arrays:
          colours = viz.colour_classes(viz.enlarge(arrays["semantic"][i], tokenizer.factor),
                                       num_classes)
          viz.save_png(colours, os.path.join(out, f"{name}_semantic.png"))
        arrays_of_photo = {key: value[i].astype(np.int32) for key, value in arrays.items()}
        if any_size:  # What sgc-detokenize writes the image back at.
          arrays_of_photo["original_size"] = np.array(photo_sizes[path][::-1], np.int32)
        np.savez(os.path.join(out, f"{name}.npz"), **arrays_of_photo)
      bar.update(len(chunk))
  return len(paths)


def _read_npz(path: str, keys, optional=()) -> dict[str, np.ndarray]:
  """The arrays `keys` of an .npz file, and those of `optional` it holds."""
  try:
    with tree_io.NpzFile(path) as data:  # headers checked before anything is inflated
      for key in keys:
        if key not in data:
          raise InputError(f"{path}: no {key!r} array (holds {sorted(data.files)})")
      return {key: np.asarray(data[key]) for key in [*keys, *optional] if key in data}
  except InputError:
    raise
  except tree_io.NpzError as error:  # refused from its headers: the message names the file
    raise InputError(str(error)) from None
  except Exception as error:  # np.load raises whatever a damaged file trips over.
    raise InputError(f"{path}: not a readable .npz ({inference.describe(error)})") from None


def _checked_tokens(path: str, indices: np.ndarray, grid: int | None, num_codes: int | None,
                    what: str = "") -> np.ndarray:
  """`indices` against the bundle's grid (None: an any-size bundle's, any
  (h, w) grid) and codes; `what` names the array in a file of several."""
  if grid is None:
    if indices.ndim != 2 or indices.size == 0:
      raise InputError(f"{path}: {what}token grid {indices.shape}, the bundle decodes (h, w) "
                       "grids with h, w > 0")
  elif indices.shape != (grid, grid):
    raise InputError(f"{path}: {what}token grid {indices.shape}, the bundle decodes "
                     f"({grid}, {grid})")
  if not np.issubdtype(indices.dtype, np.integer):
    raise InputError(f"{path}: {what}token indices of dtype {indices.dtype}, integers expected")
  if num_codes is not None and (indices.min() < 0 or indices.max() >= num_codes):
    raise InputError(f"{path}: {what}token indices in [{indices.min()}, {indices.max()}], the "
                     f"bundle has {num_codes} codes")
  return indices


def read_tokens(path: str, grid: int | None, num_codes: int | None = None) -> np.ndarray:
  """`indices` of a token file, checked against the bundle's grid (None: any
  grid) and codes."""
  return _checked_tokens(path, _read_npz(path, ["indices"])["indices"], grid, num_codes)


def read_original_size(path: str) -> tuple[int, int] | None:
  """The size (width, height) of the photo a token file was made from, as
  `original_size` [height, width] (an any-size bundle's files) gives it; None
  where the file holds none. Sizes past Pillow's decompression-bomb limit,
  photos sgc-tokenize refuses, are refused."""
  size = _read_npz(path, [], ["original_size"]).get("original_size")
  if size is None:
    return None
  if size.shape != (2,) or not np.issubdtype(size.dtype, np.integer):
    raise InputError(f"{path}: original_size of {size.dtype}{list(size.shape)}, expected "
                     "[height, width], integers")
  height, width = map(int, size)
  limit = PIL.Image.MAX_IMAGE_PIXELS
  if min(height, width) < 1 or (limit is not None and height * width > limit):
    raise InputError(f"{path}: original_size [{height}, {width}], expected positive sides "
                     f"of {limit} pixels at most")
  return width, height


def read_levels(path: str, levels) -> tuple[np.ndarray, ...]:
  """`indices_0` ... of a pyramid's token file, each checked against its
  level's (grid, codes)."""
  keys = [f"indices_{level}" for level in range(len(levels))]
  arrays = _read_npz(path, keys)
  return tuple(_checked_tokens(path, arrays[key], grid, codes, f"{key}: ")
               for key, (grid, codes) in zip(keys, levels))


def detokenize(tokens_dir: str, bundle: str, out: str, batch_size: int = 16) -> int:
  paths = _inputs(tokens_dir, (".npz",), batch_size)
  tokenizer = inference.load(bundle)
  levels = _levels(tokenizer)
  _require(tokenizer, bundle, "decode" if levels is None else "decode_levels",
           "sgc-detokenize", "decoder")
  any_size = levels is None and tokenizer.any_size
  if levels is None:
    grid = None if any_size else tokenizer.grid
    read = lambda path: read_tokens(path, grid, tokenizer.num_codes)  # noqa: E731
    decode = lambda tokens: tokenizer.decode(np.stack(tokens))  # noqa: E731
    zeros = lambda shape: np.zeros(shape, np.int32)  # noqa: E731
  else:
    read = lambda path: read_levels(path, levels)  # noqa: E731
    decode = lambda tokens: tokenizer.call("decode_levels", tuple(  # noqa: E731
        np.stack(level).astype(np.int32) for level in zip(*tokens)))
    zeros = lambda shape: tuple(np.zeros((g, g), np.int32) for g, _ in levels)  # noqa: E731
  shapes, photo_sizes = {}, {}  # photo_sizes: (width, height), where a file names one
  for path in paths:  # Token files are small: all checked before any is decoded.
    tokens = read(path)
    shapes[path] = np.shape(tokens) if levels is None else None  # a pyramid's: one shape
    if any_size:
      photo_sizes[path] = read_original_size(path)
  batches = _batches_by_shape(paths, shapes, batch_size)
  # Compiled before any output, as in `tokenize`.
  decode([zeros(shapes[batches[0][0]])] * len(batches[0]))
  os.makedirs(out, exist_ok=True)
  with tqdm.tqdm(total=len(paths), unit="image", desc="detokenize") as bar:
    for chunk in batches:
      images = decode([read(p) for p in chunk])
      for path, image in zip(chunk, images):
        image = viz.to_uint8(image)
        size = photo_sizes.get(path)
        # Back at the photo's size where sgc-tokenize changed it (rounded to
        # whole tokens, or scaled down to --max_side).
        if size is not None and size != (image.shape[1], image.shape[0]):
          image = np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.BICUBIC))
        viz.save_png(image, os.path.join(out, f"{_stem(path)}.png"))
      bar.update(len(chunk))
  return len(paths)


def embed_with_bundle(model, names: Sequence[str]) -> np.ndarray:
  """Unit embeddings [C, E] of any class names, by a bundle's text tower
  (`embed_text`, with the prompts model.json's `text_prompts` describes)."""
  text = model.description.get("text_prompts")
  if not (isinstance(text, dict) and _positive_int(text.get("context_length"))
          and isinstance(text.get("templates"), list) and text["templates"]
          and all(isinstance(t, str) and t.count("{}") == 1 for t in text["templates"])):
    raise inference.BundleError(
        f"{os.path.join(model.directory, 'model.json')}: text_prompts is {text!r}, expected "
        "{context_length: a positive integer, templates: prompts with one {} each} (a bundle "
        "of an older sgc_jax: export it again)")
  path = model.file(inference.VOCABULARY_FILE)
  try:
    bpe = clip_tokenizer.Tokenizer(path)
  except ValueError as error:
    raise inference.BundleError(f"the bundle's vocabulary: {error}") from None
  return clip_tokenizer.ensemble(lambda ids: model.call("embed_text", ids), bpe,
                                 text["context_length"], text["templates"], names)


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
    return names, embed_with_bundle(model, names)
  unknown = [n for n in names if n not in model.class_names]
  if unknown:
    raise InputError(f"--classes: {', '.join(map(repr, unknown))} not among the classes of "
                     f"this closed-vocabulary bundle ({', '.join(model.class_names)}); a "
                     "bundle with a text tower (CLIP) takes any names")
  return names, own[[model.class_names.index(n) for n in names]]


def segment_names(model, classes: str | None) -> list[str]:
  """The names of what a bundle's `segment` returns (model.json's
  `segment_names`: SlotCon's prototypes, ACSeg's clusters ...); such a bundle
  takes no class names."""
  names = model.description.get("segment_names")
  if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
    raise inference.BundleError(
        f"{os.path.join(model.directory, 'model.json')}: segment_names is {names!r}, expected "
        "a list of names (a bundle of an older sgc_jax: export it again)")
  if classes is not None:
    raise InputError(f"--classes: a {model.method} bundle segments into its own "
                     f"{len(names)} segments ({names[0]}, ...), not into named classes "
                     "(only a bundle with class embeddings takes names)")
  return names


def segment(images_dir: str, bundle: str, out: str, batch_size: int = 16,
            classes: str | None = None) -> int:
  paths = _inputs(images_dir, IMAGE_EXTENSIONS, batch_size)
  for path in paths:
    _open(path).close()
  model = inference.load(bundle)
  _require(model, bundle, "segment", "sgc-segment", "segment function")
  # A bundle holding class embeddings segments into the classes of the
  # embeddings it is given (`segment_with_text`); `segment` takes images alone.
  if "segment_with_text" in model.functions:
    names, text = class_embeddings(model, classes)
    run = lambda images: model.call("segment_with_text", (images, text))  # noqa: E731
  else:
    names = segment_names(model, classes)
    run = lambda images: model.call("segment", images)  # noqa: E731
  if len(names) > MAX_CLASSES:
    raise InputError(f"--classes: {len(names)} classes; the class PNGs hold at most "
                     f"{MAX_CLASSES}")
  # 8-bit PNGs where the classes fit (0..255), 16-bit past that.
  class_dtype = np.uint8 if len(names) <= 256 else np.uint16
  size = model.image_size
  # Compiled before any output, as in `tokenize`.
  run(np.zeros((min(batch_size, len(paths)), size, size, 3), np.float32))
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "classes.txt"), "w") as f:
    f.write("".join(f"{n}\n" for n in names))
  with tqdm.tqdm(total=len(paths), unit="image", desc="segment") as bar:
    for chunk in _batches(paths, batch_size):
      maps = run(np.stack([read_image(p, size) for p in chunk]))
      for path, classes_map in zip(chunk, maps):
        name = _stem(path)
        viz.save_png(classes_map.astype(class_dtype), os.path.join(out, f"{name}_classes.png"))
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
    run_output.check_folder(args[2])  # --out: before any work (a file there, read-only ...)
    count = function(*args)
  except (InputError, inference.BundleError, OSError) as error:
    sys.exit("error: " + " ".join(str(error).splitlines()))  # One line, whatever it quotes.
  print(f"wrote {count} files to {args[2]}")


def tokenize_main(argv=None):
  parser = _parser(
      "Images -> tokens: OUT/NAME.npz per image. An SGC-VQGAN bundle's holds `indices` "
      "[h, w] (and, for a semantic bundle, `semantic` [h, w], drawn in NAME_semantic.png) "
      "and the photo's `original_size` [height, width]: each photo keeps its aspect, its "
      "sides rounded to whole tokens (bundles of fixed-size functions: [g, g] of the photo "
      "resized and centre-cropped). A PAT bundle's holds every level's indices, `indices_0` "
      "(the finest level) to `indices_{L-1}`. Bundles without encode (SlotCon, ACSeg) are "
      "refused.", "images_dir")
  parser.add_argument("--max_side", type=int, default=MAX_SIDE,
                      help="an any-size bundle's photos are scaled down to this many pixels on "
                      "their longer side first, aspect kept (bounds the memory)")
  args = parser.parse_args(argv)
  _run(tokenize, (args.images_dir, args.bundle, args.out, args.batch_size, args.max_side))


def segment_main(argv=None):
  parser = _parser(
      "Images -> class maps: OUT/NAME.png (colours), NAME_classes.png (each pixel's class, "
      "8-bit up to 256 classes, 16-bit past that) and classes.txt. A PAT bundle's classes "
      "(any names with --classes), a SlotCon bundle's prototypes or an ACSeg bundle's "
      "clusters.", "images_dir")
  parser.add_argument("--classes", help="comma-separated class names (default: the "
                      "bundle's own classes; PAT bundles only)")
  args = parser.parse_args(argv)
  _run(segment, (args.images_dir, args.bundle, args.out, args.batch_size, args.classes))


def detokenize_main(argv=None):
  args = _parser(
      "Tokens (.npz, as sgc-tokenize writes them for the same kind of bundle) -> images: "
      "OUT/NAME.png. Bundles without decode (SlotCon, ACSeg) are refused.",
      "tokens_dir").parse_args(argv)
  _run(detokenize, (args.tokens_dir, args.bundle, args.out, args.batch_size))
