"""Semantic quality of the method's units over the evaluation split, from the
pixel classes under every unit (a [K, C] co-occurrence matrix; no second pass):
  - token purity: tokens whose unit's class is the majority class of their
    patch (`token_purity`: the class the unit stands for, e.g. an SGC code's
    allocated class; `code_purity`: the unit's own majority class);
  - zero-shot mIoU: each unit predicts its class (`zero_shot_miou`), and the
    same with the method's `posterior` prediction, argmax_c p(c|z) where a
    method gives it (`posterior_miou`; a [C, C] confusion from the same pass);
  - Hungarian mIoU and pixel accuracy: the units k-means-clustered into C
    groups (by their vectors, weighted by use; no labels), groups matched one
    to one to classes;
  - many-to-one mIoU and pixel accuracy: each unit predicts its majority class;
  - linear-probe mIoU (`--mode=eval`, or `probe_in_training`): a linear
    classifier on the frozen unit vectors of `probe_images` training images.
    A token's feature is its unit's vector, so training on every token is a
    weighted logistic regression over the K units with the [K, C] token
    counts of the training subset as weights.
Leaves `unit_class` (each unit's class for semantic maps: its own, else the
matched cluster's) and `usage` for the pictures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgc_jax import metrics
from sgc_jax.config_lib import ConfigError
from sgc_jax.data import pipeline
from sgc_jax.evaluators.base import Evaluator, split_pass
from sgc_jax.evaluators.codebook import unit_usage
from sgc_jax.models import codebook as codebook_lib


class Segmentation(Evaluator):

  def static(self, context):
    if context.units is None:
      raise ConfigError(f"config.evals.{self.name}: method {context.method.name!r} has no "
                        "units to evaluate segmentation with")
    if not context.method.num_classes:
      raise ConfigError(f"config.evals.{self.name}: the data set has no segmentation labels")
    return (len(context.units.vectors), context.method.num_classes,
            self.options["label_threshold"])

  def batch_sums(self, predictions, batch, constants, static, tokens_only: bool = False):
    num_units, num_classes, label_threshold = static
    indices = predictions["indices"]
    grid = indices.shape[1]
    weight = batch["mask"].astype(jnp.float32)
    segmentation = batch["segmentation"][:, 0]
    labels = codebook_lib.token_labels(segmentation, grid, num_classes, label_threshold)
    token_counts = jax.nn.one_hot(labels, num_classes) * weight[:, None, None, None]
    out = {"tokens": metrics.code_class_cooccurrence(indices, token_counts, num_units)}
    if tokens_only:
      return out
    pixel_counts = metrics.patch_class_counts(segmentation, grid, num_classes)
    out["usage"] = unit_usage(indices, weight, num_units)
    out["pixels"] = metrics.code_class_cooccurrence(indices, pixel_counts, num_units, weight)
    if "posterior" in predictions:  # [C predicted, C true] pixels of argmax_c p(c|z)
      out["posterior_pixels"] = metrics.code_class_cooccurrence(
          predictions["posterior"], pixel_counts, num_classes, weight)
    return out

  def finish(self, totals, state, context):
    num_classes = context.method.num_classes
    units = context.units
    pixels, tokens, usage = totals["pixels"], totals["tokens"], totals["usage"]
    labeled = max(tokens.sum(), 1.0)
    results = {"code_purity": float(tokens.max(1).sum() / labeled), "token_purity": None,
               "zero_shot_miou": None, "posterior_miou": None}
    unit_class = units.classes
    if unit_class is not None:
      results["token_purity"] = float(tokens[np.arange(len(unit_class)), unit_class].sum()
                                      / labeled)
      results["zero_shot_miou"] = metrics.mean_iou(
          metrics.confusion_from_assignment(pixels, unit_class, num_classes))
    if "posterior_pixels" in totals:
      results["posterior_miou"] = metrics.mean_iou(totals["posterior_pixels"])
    clusters = metrics.kmeans(units.vectors, num_classes, weights=usage,
                              seed=context.config.seed)
    cluster_confusion = metrics.confusion_from_assignment(pixels, clusters, num_classes)
    matched = metrics.matched_confusion(cluster_confusion)
    results["hungarian_miou"] = metrics.mean_iou(matched)
    results["hungarian_pixel_accuracy"] = _pixel_accuracy(matched)
    # Many-to-one: each unit predicts its majority class (by pixels).
    majority = metrics.confusion_from_assignment(pixels, pixels.argmax(1), num_classes)
    results["majority_miou"] = metrics.mean_iou(majority)
    results["majority_pixel_accuracy"] = _pixel_accuracy(majority)
    if unit_class is None:  # semantic maps of units without a class: the matched clusters
      matching = metrics.hungarian_match(cluster_confusion)
      unit_class = np.where(matching[clusters] >= 0, matching[clusters], num_classes)
    results["probe_miou"] = None
    if context.final or self.options.get("probe_in_training"):
      results["probe_miou"] = metrics.mean_iou(metrics.confusion_from_assignment(
          pixels, self._probe(context), num_classes))
    context.shared.update(unit_class=unit_class, usage=usage)
    return results

  def _probe(self, context) -> np.ndarray:
    """The class a linear probe gives each unit, trained on the tokens of the
    first `probe_images` training images."""
    config = context.config
    train = pipeline.head(context.dataset.split(config.data.train_split),
                          self.options["probe_images"])
    static = self.static(context)
    tokens_only = _TokensOnly(self)
    totals = split_pass(context.method, context.variables, train, config,
                        [(tokens_only, None, static)])
    return linear_probe(context.units.vectors, totals[tokens_only.name]["tokens"],
                        self.options["probe_steps"])


class _TokensOnly(Evaluator):
  """The probe's pass: the token counts of a segmentation evaluator only."""

  def __init__(self, segmentation: Segmentation):
    super().__init__(segmentation.name + "/probe", segmentation.options)
    self._segmentation = segmentation

  def batch_sums(self, predictions, batch, constants, static):
    return self._segmentation.batch_sums(predictions, batch, constants, static,
                                         tokens_only=True)


def _pixel_accuracy(confusion: np.ndarray) -> float:
  """Correct pixels / labelled pixels of a [P >= C, C] confusion."""
  num_classes = confusion.shape[1]
  return float(np.trace(confusion[:num_classes]) / max(confusion.sum(), 1.0))


def linear_probe(codes: np.ndarray, token_counts: np.ndarray, steps: int,
                 learning_rate: float = 0.05) -> np.ndarray:
  """The class a linear classifier on quantized features gives each code.

  codes [K, D]; token_counts [K, C]: labeled training tokens of each class
  quantized to each code. The classifier is trained on all of those tokens
  (full batch, Adam, `steps` steps) on standardised features.
  """
  codes = jnp.asarray(codes, jnp.float32)
  counts = jnp.asarray(token_counts, jnp.float32)
  weight = counts.sum(1, keepdims=True)
  mean = jnp.sum(codes * weight, 0) / jnp.maximum(weight.sum(), 1)
  std = jnp.sqrt(jnp.sum((codes - mean) ** 2 * weight, 0) / jnp.maximum(weight.sum(), 1)) + 1e-6
  features = (codes - mean) / std
  probe = {"w": jnp.zeros((codes.shape[1], counts.shape[1])), "b": jnp.zeros(counts.shape[1])}
  tx = optax.adam(learning_rate)

  def loss(p):
    log_p = jax.nn.log_softmax(features @ p["w"] + p["b"])
    return -jnp.sum(counts * log_p) / jnp.maximum(counts.sum(), 1)

  def step(carry, _):
    p, opt_state = carry
    grads = jax.grad(loss)(p)
    updates, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(p, updates), opt_state), None

  (probe, _), _ = jax.lax.scan(step, (probe, tx.init(probe)), None, length=steps)
  return np.asarray(jnp.argmax(features @ probe["w"] + probe["b"], -1))
