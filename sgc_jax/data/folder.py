"""User data: a folder of images with optional label maps, prepared as a TFDS data set.

Layout of the folder (label maps are the saved results of a segmentation model):

    SRC/classes.txt            one class name per line; label k is line k (with labels)
    SRC/images/NAME.{png,jpg,jpeg,bmp,webp}
    SRC/labels/NAME.png        optional: single-channel (L or P), same size as
                               the image, values < number of classes or 255
or the same under SRC/train/ and SRC/validation/ for two splits.

    python -m sgc_jax.data.folder SRC --data_dir DIR [--name NAME] [--skip_bad]

prints `folder:<prepared dir>`, the `data.name` to train on it. The data set is
named after the folder unless `--name` (letters, digits, `_`, `-`, `.`) is given;
one name holds one source folder: an unchanged source is reused, a changed one
rebuilt, and another folder under a taken name is refused. Images of any
size are kept as they are; grayscale and RGBA become RGB (alpha is dropped). A
file that cannot be used stops the build with its name and the problem; with
`--skip_bad` the build goes on without the bad files, lists them on stderr and
records them in the data set's metadata (`skipped_files`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import sys

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from absl import app, flags

from sgc_jax.data.sgc_scenes import encode_png
from sgc_jax.data.sources import DataError, FOLDER_VERSION, IGNORE_LABEL, check_label_range
from sgc_jax.utils import logs

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# One directory name under data_dir/seg_folder: never a path that leaves it.
_PLAIN_NAME = re.compile(r"[\w.-]+")


@dataclasses.dataclass(kw_only=True)
class SegFolderConfig(tfds.core.BuilderConfig):
  source_dir: str = ""
  skip_bad: bool = False


def read_class_names(source_dir: str) -> list[str]:
  path = os.path.join(source_dir, "classes.txt")
  if not os.path.isfile(path):
    raise DataError(f"{path}: missing; it must list one class name per line")
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as error:
    raise DataError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None
  # Label k is line k: a skipped blank line would shift every later class onto
  # the wrong label, so only the newline that ends the last line is let go.
  names = [line.strip() for line in text.removesuffix("\n").split("\n")]
  if not any(names):
    raise DataError(f"{path}: 0 classes; 1 to {IGNORE_LABEL} are supported")
  first_line: dict[str, int] = {}
  for number, name in enumerate(names, 1):
    if not name:
      raise DataError(f"{path}: line {number} is blank; line k names label k, so "
                      "every line must name a class")
    if name in first_line:
      raise DataError(f"{path}: line {number} repeats {name!r} (line "
                      f"{first_line[name]}); every label needs its own class name")
    first_line[name] = number
  if len(names) > IGNORE_LABEL:
    raise DataError(f"{path}: {len(names)} classes; 1 to {IGNORE_LABEL} are supported")
  return names


def split_dirs(source_dir: str) -> dict[str, str]:
  found = {split: os.path.join(source_dir, split)
           for split in ("train", "validation")
           if os.path.isdir(os.path.join(source_dir, split, "images"))}
  if found:
    return found
  if os.path.isdir(os.path.join(source_dir, "images")):
    return {"train": source_dir}
  raise DataError(f"{source_dir}: no images/ folder (nor train/images, "
                  "validation/images)")


def _to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
  """16- and 32-bit integer images scaled to 8 bits (PIL's convert clips them)."""
  if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
    return image
  array = np.asarray(image).astype(np.float64)
  bits = 16 if image.mode.startswith("I;16") or array.max(initial=0) <= 65535 else 32
  scaled = np.round(np.clip(array, 0, 2 ** bits - 1) * (255 / (2 ** bits - 1)))
  return PIL.Image.fromarray(scaled.astype(np.uint8), "L")


def load_image(path: str) -> np.ndarray:
  try:
    with PIL.Image.open(path) as image:
      image.load()
      return np.asarray(_to_8bit(image).convert("RGB"))
  except Exception as error:
    raise DataError(f"{path}: not a readable image ({error})") from error


def load_label_map(path: str, image_shape, num_classes: int) -> np.ndarray:
  if not os.path.isfile(path):
    raise DataError(f"{path}: label map missing (the folder has labels/, so "
                    "every image needs one)")
  try:
    with PIL.Image.open(path) as label:
      label.load()
      mode, array = label.mode, np.asarray(label)
  except Exception as error:
    raise DataError(f"{path}: not a readable PNG label map ({error})") from error
  if mode not in ("L", "P"):
    raise DataError(f"{path}: label map must be single-channel (mode L or P), "
                    f"got mode {mode}")
  if array.shape != tuple(image_shape[:2]):
    raise DataError(f"{path}: label map is {array.shape[1]}x{array.shape[0]}, its "
                    f"image is {image_shape[1]}x{image_shape[0]}")
  check_label_range(array, num_classes, path)
  return array.astype(np.uint8)


class SegFolder(tfds.core.GeneratorBasedBuilder):
  """Images (and label maps) from a local folder."""

  VERSION = tfds.core.Version(FOLDER_VERSION)
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _has_labels(self) -> bool:
    return any(os.path.isdir(os.path.join(d, "labels"))
               for d in split_dirs(self.builder_config.source_dir).values())

  def _info(self) -> tfds.core.DatasetInfo:
    source_dir = self.builder_config.source_dir
    features = {
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "file_name": tfds.features.Text(),
    }
    if self._has_labels():
      features["segmentation"] = tfds.features.Image(shape=(None, None, 1),
                                                     encoding_format="png")
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Images and label maps from {source_dir}",
        features=tfds.features.FeaturesDict(features),
        # Unlabelled folders need no classes.txt: SlotCon, ACSeg train on them.
        metadata=tfds.core.MetadataDict(class_names=read_class_names(source_dir)
                                        if self._has_labels() else [],
                                        ignore_label=IGNORE_LABEL,
                                        source_dir=os.path.abspath(source_dir),
                                        skipped_files=[], source_fingerprint=""),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    config = self.builder_config
    with_labels = self._has_labels()
    num_classes = len(read_class_names(config.source_dir)) if with_labels else 0
    splits, problems = {}, []
    for split, directory in split_dirs(config.source_dir).items():
      good = []
      image_dir = os.path.join(directory, "images")
      names = sorted(n for n in os.listdir(image_dir)
                     if n.lower().endswith(IMAGE_EXTENSIONS))
      if not names:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
      _check_stems(image_dir, names)
      orphans = _orphan_label_maps(directory, names)
      if orphans and not config.skip_bad:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DataError(orphans[0] + more)
      problems.extend(orphans)
      for name in names:
        try:
          self._read(directory, name, num_classes, with_labels)
          good.append(name)
        except DataError as error:
          problems.append(str(error))
      splits[split] = (directory, good)
    if problems:
      report = "\n  ".join(problems)
      if not config.skip_bad:
        raise DataError(f"{len(problems)} bad file(s) in {config.source_dir} "
                        f"(pass skip_bad to build without them):\n  {report}")
      print(f"skipped {len(problems)} bad file(s):\n  {report}", file=sys.stderr)
      self.info.metadata["skipped_files"] = problems
    self.info.metadata["source_fingerprint"] = source_fingerprint(config.source_dir)
    return {split: self._generate_examples(directory, names, num_classes, with_labels)
            for split, (directory, names) in splits.items()}

  @staticmethod
  def _read(directory, name, num_classes, with_labels):
    path = os.path.join(directory, "images", name)
    try:
      name.encode("utf-8")
    except UnicodeEncodeError:
      raise DataError(f"{path.encode('utf-8', 'replace').decode()}: the file name is not "
                      "valid UTF-8; rename it") from None
    image = load_image(path)
    example = {"image": encode_png(image), "file_name": name}
    if with_labels:
      label_path = os.path.join(directory, "labels", os.path.splitext(name)[0] + ".png")
      label = load_label_map(label_path, image.shape, num_classes)
      example["segmentation"] = encode_png(label)
    return example

  def _generate_examples(self, directory, names, num_classes, with_labels):
    for name in names:
      yield name, self._read(directory, name, num_classes, with_labels)


def _check_stems(image_dir: str, names: list[str]) -> None:
  """Two images with one stem (a.png, a.jpg) would take the same label map."""
  by_stem: dict[str, list[str]] = {}
  for name in names:
    by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
  clashes = [files for files in by_stem.values() if len(files) > 1]
  if clashes:
    raise DataError(f"{image_dir}: images share a name without extension, so they would "
                    f"share a label map: {', '.join(' and '.join(c) for c in clashes[:5])}")


def _orphan_label_maps(directory: str, image_names: list[str]) -> list[str]:
  """Label maps whose image is missing (deleted, renamed, or in a format not read).

  They would silently go unused, and usually mean the images and label maps no
  longer pair up as their owner thinks."""
  label_dir = os.path.join(directory, "labels")
  if not os.path.isdir(label_dir):
    return []
  stems = {os.path.splitext(name)[0] for name in image_names}
  image_dir = os.path.join(directory, "images")
  orphans = []
  for name in sorted(os.listdir(label_dir)):
    stem, extension = os.path.splitext(name)
    if extension.lower() == ".png" and stem not in stems:
      expected = ", ".join(stem + e for e in IMAGE_EXTENSIONS)
      orphans.append(f"{os.path.join(label_dir, name)}: label map without an image "
                     f"(no {expected} in {image_dir})")
  return orphans


def check_name(name: str) -> None:
  """A data-set name is one directory under data_dir/seg_folder, never a path."""
  if not _PLAIN_NAME.fullmatch(name) or name == "." or ".." in name:
    raise DataError(f"--name {name!r}: not a plain data-set name (letters, digits, "
                    "_, - and .; no / nor ..)")


def source_fingerprint(source_dir: str) -> str:
  """A hash of every file's path, size and modification time under `source_dir`."""
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(source_dir):
    dirs.sort()
    for name in sorted(files):
      stat = os.stat(os.path.join(root, name))
      relative = os.path.relpath(os.path.join(root, name), source_dir)
      digest.update(f"{relative!r} {stat.st_size} {stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def prepare(source_dir: str, data_dir: str, name: str | None = None,
            skip_bad: bool = False) -> str:
  """Prepares the folder as a data set; returns the directory to read it from.

  A build whose source has changed since (files added, removed, resized or
  rewritten) is rebuilt, never silently reused. A build of another source folder
  under the same name is refused, never replaced: something may train on it."""
  if name is None:
    # The absolute path's last part, so that "." and ".." name the folder itself
    # (a folder's own name may hold spaces; it is one directory either way).
    name = os.path.basename(os.path.abspath(source_dir))
    if not name:
      raise DataError(f"{source_dir}: a folder without a name; pass --name=NAME")
  else:
    check_name(name)
  config = SegFolderConfig(name=name, source_dir=source_dir, skip_bad=skip_bad)
  builder = SegFolder(config=config, data_dir=data_dir)
  built_from = (builder.info.metadata.get("source_dir")
                if os.path.isdir(builder.data_path) else None)
  # realpath: the same folder reached by a relative path or a symbolic link.
  if built_from and os.path.realpath(built_from) != os.path.realpath(source_dir):
    source = os.path.abspath(source_dir)
    raise DataError(f"{builder.data_path} holds the data set built from {built_from}, "
                    f"not {source}; pass --name=OTHER_NAME to prepare {source} as "
                    "another data set")
  if os.path.isdir(builder.data_path) and (builder.info.metadata.get("source_fingerprint")
                                           != source_fingerprint(source_dir)):
    print(f"{source_dir} changed since it was built into {builder.data_path}: rebuilding",
          file=sys.stderr)
    shutil.rmtree(builder.data_path)
    builder = SegFolder(config=config, data_dir=data_dir)
  builder.download_and_prepare(file_format="array_record")
  return str(builder.data_path)


_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Build without bad files, listing them.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to write the data set.",
                                required=True)
_NAME = flags.DEFINE_string("name", None, "Data set name (default: folder name).")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m sgc_jax.data.folder SRC --data_dir DIR")
  logs.quiet_libraries()
  try:
    path = prepare(argv[1], _DATA_DIR.value, _NAME.value, _SKIP_BAD.value)
  except (DataError, OSError) as error:  # e.g. a data_dir that cannot be written
    sys.exit(f"error: {error}")
  print(f"folder:{path}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
