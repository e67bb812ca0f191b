"""`--mode=pseudo_labels`: a segmenting method's maps of a whole data set,
written as a user-folder data set that any method trains on unchanged:

    WORKDIR/pseudo_labels/classes.txt                 the segments' names
    WORKDIR/pseudo_labels/{train,validation}/images/NNNNNN.png
    WORKDIR/pseudo_labels/{train,validation}/labels/NNNNNN.png

(the config's train and evaluation splits, in their order). Images are the
views the method segmented (centred squares at `data.image_size`, or whole
frames at `data.eval_frame`), so every label map lies exactly on its image.
The folder appears whole or not at all: it is written beside and renamed into
place (a failed run leaves the previous one).

    python -m sgc_jax.data.folder WORKDIR/pseudo_labels --data_dir DATA

prepares it (`folder:...` is the data.name to train on).
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np
import PIL.Image
import tqdm

from sgc_jax.config_lib import ConfigError
from sgc_jax.core import loop
from sgc_jax.data import pipeline
from sgc_jax.modes import train
from sgc_jax.runtime import sharding
from sgc_jax.utils import run_output

FOLDERS = (("train_split", "train"), ("eval_split", "validation"))


def write_pseudo_labels(config, workdir: str, directory: str | None = None) -> str:
  """WORKDIR's latest checkpoint segments both splits -> a folder data set."""
  directory = directory or os.path.join(workdir, "pseudo_labels")
  main = jax.process_index() == 0
  if main:
    # Before the restore and the segmentation: a workdir that is a file, or an
    # output folder that cannot be written, is one line, not a traceback later.
    run_output.check_workdir(workdir)
    run_output.check_output_folder(directory)
  dataset, method, state, _ = train.restore_latest(config, workdir)
  names = method.segment_names()
  if not names:
    raise ConfigError(f"config.method={method.name!r}: the method does not segment images, "
                      "so it makes no pseudo-labels")
  if len(names) > 255:
    raise ConfigError(f"{method.name}: {len(names)} segments do not fit 8-bit label maps "
                      "(at most 255; 255 is 'ignore')")
  variables = loop.prediction_variables(method, state, dataset, config)
  segment = jax.jit(method.segment)
  # Only process 0 writes; every process segments its share of each batch.
  with run_output.replacing_folder(directory) if main else contextlib.nullcontext() as partial:
    for field, folder in FOLDERS:
      source = dataset.split(config.data[field])
      batches = pipeline.evaluation_pipeline(source, config, method.mesh)
      written = 0
      for batch in tqdm.tqdm(batches, total=batches.num_batches, unit="batch",
                             desc=f"pseudo-labels of {folder} ({len(source)} images)",
                             disable=not main, mininterval=2.0):
        images, labels = sharding.gather_examples(
            batch["mask"], (batch["image"][:, 0], segment(variables, batch["image"][:, 0])))
        if main:
          _write(os.path.join(partial, folder), written, images, labels,
                 config.data.get("normalization", "symmetric"))
        written += len(labels)
    if main:
      with open(os.path.join(partial, "classes.txt"), "w") as f:
        f.write("".join(name + "\n" for name in names))
  return directory


def _write(directory: str, first: int, images, labels, normalization: str) -> None:
  for sub in ("images", "labels"):
    os.makedirs(os.path.join(directory, sub), exist_ok=True)
  pixels = _to_uint8(images, normalization)
  for offset, (image, label) in enumerate(zip(pixels, labels)):
    name = f"{first + offset:06d}.png"
    PIL.Image.fromarray(image).save(os.path.join(directory, "images", name))
    PIL.Image.fromarray(label.astype(np.uint8), mode="L").save(
        os.path.join(directory, "labels", name))


def _to_uint8(images, normalization: str) -> np.ndarray:
  """Model inputs back to the uint8 pixels they were made from (exact: the
  normalisation is affine and the pixels were integers)."""
  symmetric = pipeline.to_symmetric(np.asarray(images, np.float32), normalization)
  return np.clip(np.round((symmetric + 1.0) * 127.5), 0, 255).astype(np.uint8)

