"""A labelled folder data set of real photographs, for tests and experiments
that must not rely on the rendered sgc_scenes.

Each image is a mosaic: a random Voronoi partition whose cells are filled with
random crops (random scale, position and flip) of real photographs shipped in
scikit-image's wheel (its `skimage/data/` files, read with PIL; nothing is
downloaded); a cell's label is the photograph it comes from. Classes are
photographs of textures and scenes whose colours overlap (three grey
textures, a cat's fur, coffee, ...), so colour alone does not give the class.

    python tests/real_textures.py OUT --train 600 --validation 200 [--size 64]
writes OUT/classes.txt, OUT/{train,validation}/{images,labels}/NAME.png, the
layout `python -m sgc_jax.data.folder` reads.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np
import PIL.Image

# class name -> file in skimage/data/
SOURCES = {
    "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png",
    "cat_fur": "chelsea.png", "coffee": "coffee.png", "astronaut": "astronaut.png",
    "nebula": "hubble_deep_field.jpg", "tissue": "ihc.png",
}


def _data_dir() -> str:
  spec = importlib.util.find_spec("skimage")
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError("scikit-image is not installed (it is in sgc_jax's test extra)")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_photographs() -> list[np.ndarray]:
  """The source photographs as uint8 RGB arrays, in the order of SOURCES."""
  directory = _data_dir()
  photos = []
  for file_name in SOURCES.values():
    with PIL.Image.open(os.path.join(directory, file_name)) as image:
      photos.append(np.asarray(image.convert("RGB")))
  return photos


def _random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  height, width = photo.shape[:2]
  side = int(min(height, width) * rng.uniform(0.15, 0.5))
  top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
  crop = PIL.Image.fromarray(photo[top:top + side, left:left + side])
  crop = np.asarray(crop.resize((size, size), PIL.Image.BICUBIC))
  return crop[:, ::-1] if rng.random() < 0.5 else crop


def mosaic(photos: list[np.ndarray], size: int, rng: np.random.Generator):
  """One image [size, size, 3] uint8 and its label map [size, size] uint8."""
  cells = rng.integers(2, 6)
  centres = rng.uniform(0, size, (cells, 2))
  yy, xx = np.mgrid[:size, :size]
  distance = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
  cell_of_pixel = np.argmin(distance, -1)
  classes = rng.integers(0, len(photos), cells)
  image = np.zeros((size, size, 3), np.uint8)
  for cell, label in enumerate(classes):
    inside = cell_of_pixel == cell
    image[inside] = _random_crop(photos[label], size, rng)[inside]
  return image, classes[cell_of_pixel].astype(np.uint8)


def write_folder(root: str, num_train: int, num_validation: int, size: int = 64,
                 seed: int = 0) -> str:
  """Writes the data set's folder; returns `root`."""
  photos = load_photographs()
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "classes.txt"), "w") as f:
    f.write("\n".join(SOURCES) + "\n")
  for split, count in (("train", num_train), ("validation", num_validation)):
    for kind in ("images", "labels"):
      os.makedirs(os.path.join(root, split, kind), exist_ok=True)
    for index in range(count):
      image, labels = mosaic(photos, size, rng)
      name = f"{index:05d}.png"
      PIL.Image.fromarray(image).save(os.path.join(root, split, "images", name))
      PIL.Image.fromarray(labels, mode="L").save(os.path.join(root, split, "labels", name))
  return root


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--train", type=int, default=600)
  parser.add_argument("--validation", type=int, default=200)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  print(write_folder(args.out, args.train, args.validation, args.size, args.seed))
