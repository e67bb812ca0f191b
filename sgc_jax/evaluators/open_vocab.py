"""Open-vocabulary segmentation over the evaluation split: for each class map
the method predicts (`class_maps`: PAT's fused prediction, its semantic branch
alone, the baseline alone), mIoU over all classes, over the classes seen in
training and over those held out (the method's `unseen_class_ids`), and pixel
accuracy, and each class's IoU ("NAME_map_iou/CLASS"). Pixels labelled 255
are not counted; a class absent from both the labels and the predictions does
not enter its mean (its IoU is None)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sgc_jax.config_lib import ConfigError
from sgc_jax.core.evaluation import Evaluator, predicted_shapes
from sgc_jax.evaluators.segmentation import flat_class_results
from sgc_jax.ops import metrics

CLASS_IOU = "_map_iou"


def confusion(predicted, labels, weight, num_classes: int):
  """[predicted, true] pixel counts [C, C] of [B, H, W] maps, examples weighted."""
  valid = (labels < num_classes).astype(jnp.float32) * weight[:, None, None]
  index = predicted.reshape(-1) * num_classes + jnp.where(labels < num_classes, labels,
                                                         0).reshape(-1)
  return jnp.zeros(num_classes * num_classes, jnp.float32).at[index].add(
      valid.reshape(-1)).reshape(num_classes, num_classes)


def class_subset_miou(confusion_matrix: np.ndarray, classes) -> float | None:
  """Mean IoU over `classes` (those with any pixel in labels or predictions)."""
  if not len(classes):
    return None
  iou = metrics.iou_from_confusion(confusion_matrix)[list(classes)]
  return float(np.nanmean(iou)) if np.isfinite(iou).any() else None


class OpenVocab(Evaluator):

  @classmethod
  def table_rows(cls, results):
    """Per class map, named by the method (`NAME_miou_seen` and
    `NAME_miou_unseen`: the open-vocabulary metrics no other evaluator reports)."""
    maps = dict.fromkeys(key.rsplit("_miou_", 1)[0] for key in results
                         if key.endswith(("_miou_seen", "_miou_unseen")))
    return [(f"{name}_{key}", f"{name} map: {label}", ".3f") for name in maps
            for key, label in (("miou", "mIoU"), ("miou_seen", "mIoU, seen classes"),
                               ("miou_unseen", "mIoU, held-out classes"),
                               ("pixel_accuracy", "pixel accuracy"))
            if f"{name}_{key}" in results]

  @classmethod
  def class_columns_of(cls, results):
    """Each class map's IoU per class, in the order the results hold them."""
    maps = dict.fromkeys(key.split("/", 1)[0] for key in results
                         if key.split("/", 1)[0].endswith(CLASS_IOU))
    return tuple((key, f"{key[:-len(CLASS_IOU)]} map IoU", ".3f") for key in maps)

  def static(self, context):
    if not context.method.num_classes:
      raise ConfigError(f"config.evals.{self.name}: the data set has no segmentation labels")
    predictions = predicted_shapes(context)
    if predictions.class_maps is None:
      raise ConfigError(f"config.evals.{self.name}: method {context.method.name!r} predicts "
                        "no class maps")
    return context.method.num_classes, tuple(sorted(predictions.class_maps))

  def batch_sums(self, predictions, batch, constants, static):
    num_classes, names = static
    labels = batch["segmentation"][:, 0].astype(jnp.int32)
    weight = batch["mask"].astype(jnp.float32)
    return {name: confusion(predictions.class_maps[name], labels, weight, num_classes)
            for name in names}

  def finish(self, totals, state, context):
    method = context.method
    unseen = method.unseen_class_ids
    seen = tuple(i for i in range(method.num_classes) if i not in unseen)
    results = {}
    for name, matrix in totals.items():
      results[f"{name}_miou"] = metrics.mean_iou(matrix)
      results[f"{name}_miou_seen"] = class_subset_miou(matrix, seen)
      results[f"{name}_miou_unseen"] = class_subset_miou(matrix, unseen)
      results[f"{name}_pixel_accuracy"] = float(np.trace(matrix) / max(matrix.sum(), 1.0))
      results.update(flat_class_results(
          {name + CLASS_IOU: metrics.iou_from_confusion(matrix)[:method.num_classes]},
          method.class_names))
    return results
