"""PNGs of the first `num_examples` evaluation images (with `spaced`, evenly
spaced over the split), every `every` steps:
rows of input | reconstruction (methods that reconstruct) | true classes | the
method's semantic map; for methods that do not reconstruct, `unit_maps` too
(each token coloured by its unit: SlotCon's slot maps). In `--mode=eval` also
the units' usage histogram and a PCA of the unit vectors, coloured by class.
A pyramid tokenizer (PAT) also gets rows of input | each level's own picture
| the reconstruction. Semantic maps: the method's `semantic` prediction, else the
units' classes: their own (`Units.classes`) or, in `--mode=eval`, those Hungarian
matching gives their k-means clusters over the evaluation split, as the
segmentation evaluator matches them (this evaluator counts them itself)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from sgc_jax.core.evaluation import Evaluator
from sgc_jax.data import pipeline
from sgc_jax.evaluators import segmentation
from sgc_jax.ops import metrics
from sgc_jax.runtime import compiler
from sgc_jax.utils import viz


class Pictures(Evaluator):

  def reads_split(self, context) -> bool:
    """In --mode=eval, for the usage histogram and the units' classes."""
    return (context.final and context.units is not None
            and bool(context.method.num_classes))

  def static(self, context):
    return len(context.units.vectors), context.method.num_classes

  def batch_sums(self, predictions, batch, constants, static):
    num_units, num_classes = static
    pixel_counts = metrics.patch_class_counts(batch["segmentation"][:, 0],
                                              predictions.indices.shape[1:3], num_classes)
    return segmentation.unit_pixel_sums(predictions.indices, pixel_counts,
                                        batch["mask"].astype(jnp.float32), num_units)

  def finish(self, totals, state, context):
    method, dataset, config = context.method, context.dataset, context.config
    num_classes = method.num_classes
    normalization = config.data.get("normalization", "symmetric")
    records = pipeline.centred_examples(dataset.split(config.data.eval_split),
                                        self.options["num_examples"], config.data.image_size,
                                        normalization, pipeline.eval_frame(config),
                                        spaced=bool(self.options.get("spaced")))
    images = np.stack([r["image"][0] for r in records])
    # Every process computes them: the model may be sharded over processes.
    predictions = multihost_utils.process_allgather(
        _predict(method)(context.variables, images), tiled=True)
    images = pipeline.to_symmetric(images, normalization)
    usage = unit_class = None
    if totals is not None:
      usage = totals["usage"]
      unit_class = segmentation.unit_classes(context.units, totals["pixels"], usage,
                                             num_classes, config.seed)
    elif context.units is not None:
      unit_class = context.units.classes
    if predictions.semantic is not None:
      semantic = np.asarray(predictions.semantic)
    elif unit_class is not None:
      semantic = unit_class[np.asarray(predictions.indices)]
    else:  # no class for the tokens
      semantic = np.full(np.shape(predictions.indices), num_classes)
    reconstructions = predictions.reconstruction
    name = "reconstructions" if reconstructions is not None else "segments"
    pictures = {name: viz.reconstruction_grid(
        images, (np.asarray(pipeline.to_symmetric(reconstructions, normalization))
                 if reconstructions is not None else None),
        np.stack([r["segmentation"][0] for r in records]), semantic, num_classes,
        method.class_names,
        codes=(viz.colour_codes(np.asarray(predictions.indices), unit_class, num_classes)
               if unit_class is not None and reconstructions is not None else None))}
    if predictions.levels is not None:  # a pyramid tokenizer: each level's own picture
      pictures["levels"] = _level_rows(images, predictions.levels.pictures, reconstructions,
                                       normalization)
    if usage is not None:
      used = usage > 0
      vectors = context.units.vectors
      pictures["codebook_usage"] = viz.usage_histogram(usage, unit_class, num_classes,
                                                       method.class_names)
      pictures["codes_pca"] = np.concatenate([
          viz.caption_row([f"the {len(vectors)} units on their first two principal axes "
                           "(1st: right, 2nd: up), coloured by class; grey: unused"], 396, 400),
          viz.scatter(_pca(vectors, used), np.where(used, unit_class, -1), num_classes),
          viz.legend(method.class_names, 400)])
    if context.units is not None and reconstructions is None:
      # Slot maps: each token coloured by its unit (prototype), as SlotCon shows them.
      indices = np.asarray(predictions.indices)
      factor = images.shape[1] // indices.shape[1]
      maps = viz.enlarge(indices, factor, axes=(1, 2))
      pictures["unit_maps"] = viz.grid([[viz.to_uint8(x), viz.colour_classes(m, len(
          context.units.vectors))] for x, m in zip(images, maps)], captions=("input", "slot map"))
    for name, image in pictures.items():
      context.write_image(name, image)
    return {}


def _level_rows(images, level_pictures, reconstructions, normalization) -> np.ndarray:
  """Rows of input | each level's picture (finest first, shown at the image's
  size) | the whole pyramid's reconstruction."""
  size = images.shape[1]
  rows = []
  for i, image in enumerate(images):
    row = [viz.to_uint8(image)]
    for pictures in level_pictures:
      picture = np.asarray(pictures[i])
      factor = size // picture.shape[0]
      row.append(viz.to_uint8(viz.enlarge(picture, factor)))
    if reconstructions is not None:
      row.append(viz.to_uint8(pipeline.to_symmetric(np.asarray(reconstructions[i]),
                                                    normalization)))
    rows.append(row)
  return viz.grid(rows, captions=viz.level_captions(len(level_pictures),
                                                    reconstructions is not None))


@functools.cache
def _predict(method):
  return compiler.jit(method.predict)


def _pca(points: np.ndarray, fit: np.ndarray) -> np.ndarray:
  """2-D projection of all points on the principal axes of points[fit]."""
  mean = points[fit].mean(0)
  _, _, vt = np.linalg.svd(points[fit] - mean, full_matrices=False)
  return (points - mean) @ vt[:2].T
