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
  - class-matched mIoU and token purity: where units have classes, those
    classes matched one to one to the data's (Hungarian): a model trained on
    pseudo-labels, measured against the true labels;
  - linear-probe mIoU (`--mode=eval`, or `probe_in_training`): a linear
    classifier on the frozen unit vectors of `probe_images` training images.
    A token's feature is its unit's vector, so training on every token is a
    weighted logistic regression over the K units with the [K, C] token
    counts of the training subset as weights;
  - when the probes are due and the method's predictions hold dense
    `features` [B, g, g, D] (its encoder's, before any grouping), the
    protocol of unsupervised segmentation on those features, fitted on about
    `feature_tokens` tokens drawn uniformly from the same training images and
    applied to the evaluation split: k-means of the L2-normalised features
    (first centred by the sample's mean, with `feature_centring`) into
    C clusters (cosine; the best of `kmeans_restarts` seedings by inertia),
    matched one to one to classes, no label in the fit
    (feature Hungarian mIoU and pixel accuracy), and a linear probe on the
    standardised features, trained on the tokens' labels (feature probe mIoU
    and pixel accuracy). A method and a randomly initialised copy of it compare
    on exactly this.
Leaves `unit_class` (each unit's class for semantic maps: its own, else the
matched cluster's) and `usage` for the pictures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgc_jax.config_lib import ConfigError
from sgc_jax.core.evaluation import Evaluator, predicted_shapes, split_pass
from sgc_jax.data import pipeline
from sgc_jax.evaluators.codebook import unit_usage
from sgc_jax.ops import grids, kmeans, metrics
from sgc_jax.utils import viz


def unit_pixel_sums(indices, pixel_counts, weight, num_units: int) -> dict:
  """A batch's tokens per unit ("usage" [K]) and pixels of each class under
  each unit ("pixels" [K, C]), examples weighted by `weight` [N]; `pixel_counts`
  [N, g, g, C] from `metrics.patch_class_counts`."""
  return {"usage": unit_usage(indices, weight, num_units),
          "pixels": metrics.code_class_cooccurrence(indices, pixel_counts, num_units, weight)}


def cluster_units(units, pixels: np.ndarray, usage: np.ndarray, num_classes: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The units in as many k-means clusters as classes (weighted by use): each
  unit's cluster, and the [cluster, class] pixel counts."""
  clusters = kmeans.kmeans(units.vectors, num_classes, weights=usage, seed=seed)
  return clusters, metrics.confusion_from_assignment(pixels, clusters, num_classes)


def unit_classes(units, pixels: np.ndarray, usage: np.ndarray, num_classes: int,
                 seed: int) -> np.ndarray:
  """The class each unit shows in semantic maps: its own where the method
  gives units classes, else the class Hungarian matching gives its cluster
  (`num_classes`: none)."""
  if units.classes is not None:
    return units.classes
  clusters, cluster_confusion = cluster_units(units, pixels, usage, num_classes, seed)
  matching = metrics.hungarian_match(cluster_confusion)
  return np.where(matching[clusters] >= 0, matching[clusters], num_classes)


class Segmentation(Evaluator):
  rows = (("token_purity", "token purity (allocated class)", ".3f"),
          ("code_purity", "token purity (code's majority class)", ".3f"),
          ("zero_shot_miou", "zero-shot mIoU (nearest code's class)", ".3f"),
          ("posterior_miou", "zero-shot mIoU (argmax p(c|z))", ".3f"),
          ("class_matched_miou", "mIoU, units' classes matched to the labels", ".3f"),
          ("class_matched_token_purity", "token purity, classes matched to the labels",
           ".3f"),
          ("hungarian_miou", "Hungarian mIoU", ".3f"),
          ("hungarian_pixel_accuracy", "Hungarian pixel accuracy", ".3f"),
          ("majority_miou", "many-to-one mIoU (unit's majority class)", ".3f"),
          ("majority_pixel_accuracy", "many-to-one pixel accuracy", ".3f"),
          ("probe_miou", "linear-probe mIoU", ".3f"),
          ("feature_hungarian_miou", "features: k-means Hungarian mIoU", ".3f"),
          ("feature_hungarian_pixel_accuracy", "features: k-means Hungarian pixel accuracy",
           ".3f"),
          ("feature_probe_miou", "features: linear-probe mIoU", ".3f"),
          ("feature_probe_pixel_accuracy", "features: linear-probe pixel accuracy", ".3f"))
  class_columns = (("zero_shot_iou", "zero-shot IoU", ".3f"),
                   ("posterior_iou", "argmax p(c|z) IoU", ".3f"),
                   ("probe_iou", "linear-probe IoU", ".3f"),
                   ("hungarian_iou", "Hungarian IoU", ".3f"),
                   ("majority_iou", "many-to-one IoU", ".3f"),
                   ("feature_hungarian_iou", "features: Hungarian IoU", ".3f"),
                   ("feature_probe_iou", "features: probe IoU", ".3f"),
                   ("pixel_share", "share of pixels", ".1%"),
                   ("token_share", "share of tokens", ".1%"),
                   ("units", "units", ".0f"))

  def __init__(self, name: str, options: dict):
    super().__init__(name, options)
    self._dense_methods = {}  # id(method) -> whether its predictions hold `features`

  def _fits_probes(self, context) -> bool:
    return context.final or bool(self.options.get("probe_in_training"))

  def _dense(self, context) -> bool:
    method = context.method
    if id(method) not in self._dense_methods:
      self._dense_methods[id(method)] = predicted_shapes(context).features is not None
    return self._dense_methods[id(method)]

  def static(self, context):
    if context.units is None:
      raise ConfigError(f"config.evals.{self.name}: method {context.method.name!r} has no "
                        "units to evaluate segmentation with")
    if not context.method.num_classes:
      raise ConfigError(f"config.evals.{self.name}: the data set has no segmentation labels")
    return (len(context.units.vectors), context.method.num_classes,
            self.options["label_threshold"],
            self._fits_probes(context) and self._dense(context))

  def start(self, context):
    """When the probes are due: their pass over the first `probe_images`
    training images, which gives the unit probe's token counts and fits the
    dense features' k-means centres and probe."""
    if not self._fits_probes(context):
      return None
    static = self.static(context)
    fit = _ProbeFit(self, static, context.config.seed)
    train = pipeline.head(context.dataset.split(context.config.data.train_split),
                          self.options["probe_images"])
    totals = split_pass(context.method, context.variables, train, context.config,
                        [(fit, None, static)])
    return fit.result(totals[fit.name]["tokens"])

  def constants(self, state):
    return None if state is None else state.get("dense")

  def batch_sums(self, predictions, batch, constants, static, tokens_only: bool = False):
    num_units, num_classes, label_threshold, dense = static
    indices = predictions.indices
    grid = indices.shape[1:3]
    weight = batch["mask"].astype(jnp.float32)
    segmentation = batch["segmentation"][:, 0]
    labels = grids.token_labels(segmentation, grid, num_classes, label_threshold)
    token_counts = jax.nn.one_hot(labels, num_classes) * weight[:, None, None, None]
    out = {"tokens": metrics.code_class_cooccurrence(indices, token_counts, num_units)}
    if tokens_only:
      return out
    pixel_counts = metrics.patch_class_counts(segmentation, grid, num_classes)
    out.update(unit_pixel_sums(indices, pixel_counts, weight, num_units))
    if predictions.posterior is not None:  # [C predicted, C true] pixels of argmax_c p(c|z)
      out["posterior_pixels"] = metrics.code_class_cooccurrence(
          predictions.posterior, pixel_counts, num_classes, weight)
    if dense:  # the same for the feature clusters and the feature probe
      features = predictions.features.astype(jnp.float32)
      out["feature_cluster_pixels"] = metrics.code_class_cooccurrence(
          nearest_centre(features - constants["mean"], constants["centres"]), pixel_counts,
          num_classes, weight)
      out["feature_probe_pixels"] = metrics.code_class_cooccurrence(
          probe_classes(constants["probe"], features), pixel_counts, num_classes, weight)
    return out

  def finish(self, totals, state, context):
    num_classes = context.method.num_classes
    units = context.units
    pixels, tokens, usage = totals["pixels"], totals["tokens"], totals["usage"]
    labeled = max(tokens.sum(), 1.0)
    results = {"code_purity": float(tokens.max(1).sum() / labeled), "token_purity": None,
               "zero_shot_miou": None, "posterior_miou": None}
    confusions = {}  # per-class IoU name -> its [predicted, true] pixel confusion
    unit_class = units.classes
    if unit_class is not None:
      results["token_purity"] = float(tokens[np.arange(len(unit_class)), unit_class].sum()
                                      / labeled)
      confusions["zero_shot_iou"] = metrics.confusion_from_assignment(
          pixels, unit_class, num_classes)
      results["zero_shot_miou"] = metrics.mean_iou(confusions["zero_shot_iou"])
    results.update(class_matched_miou=None, class_matched_token_purity=None)
    if unit_class is not None:
      results["class_matched_miou"], results["class_matched_token_purity"] = class_matched(
          pixels, tokens, unit_class)
    if "posterior_pixels" in totals:
      confusions["posterior_iou"] = totals["posterior_pixels"]
      results["posterior_miou"] = metrics.mean_iou(totals["posterior_pixels"])
    clusters, cluster_confusion = cluster_units(units, pixels, usage, num_classes,
                                                context.config.seed)
    matched = confusions["hungarian_iou"] = metrics.matched_confusion(cluster_confusion)
    results["hungarian_miou"] = metrics.mean_iou(matched)
    results["hungarian_pixel_accuracy"] = _pixel_accuracy(matched)
    # Many-to-one: each unit predicts its majority class (by pixels).
    majority = confusions["majority_iou"] = metrics.confusion_from_assignment(
        pixels, pixels.argmax(1), num_classes)
    results["majority_miou"] = metrics.mean_iou(majority)
    results["majority_pixel_accuracy"] = _pixel_accuracy(majority)
    results.update(probe_miou=None, feature_hungarian_miou=None,
                   feature_hungarian_pixel_accuracy=None, feature_probe_miou=None,
                   feature_probe_pixel_accuracy=None)
    if state is not None:
      unit_probe = linear_probe(units.vectors, state["tokens"], self.options["probe_steps"])
      confusions["probe_iou"] = metrics.confusion_from_assignment(pixels, unit_probe,
                                                                  num_classes)
      results["probe_miou"] = metrics.mean_iou(confusions["probe_iou"])
    if "feature_cluster_pixels" in totals:
      clustered = confusions["feature_hungarian_iou"] = metrics.matched_confusion(
          totals["feature_cluster_pixels"])
      probed = confusions["feature_probe_iou"] = totals["feature_probe_pixels"]
      results.update(feature_hungarian_miou=metrics.mean_iou(clustered),
                     feature_hungarian_pixel_accuracy=_pixel_accuracy(clustered),
                     feature_probe_miou=metrics.mean_iou(probed),
                     feature_probe_pixel_accuracy=_pixel_accuracy(probed))
    per_class = class_results(confusions, pixels, usage, unit_class,
                              context.method.class_names)
    if context.final:
      labels = {key: label for key, label, _ in self.class_columns}
      context.write_image("per_class", viz.per_class_chart(
          per_class, context.method.class_names, labels=labels))
    return {**results, **flat_class_results(per_class, context.method.class_names)}


def class_results(confusions: dict, pixels: np.ndarray, usage: np.ndarray,
                  unit_class: np.ndarray | None, class_names) -> dict[str, np.ndarray]:
  """Per class, each [C]: the IoU of every confusion (NaN where a class is in
  neither truth nor prediction); its share of the labelled pixels; the share
  of the split's tokens whose unit stands for it and the number of used units
  that do (a unit stands for its own class where the method gives units
  classes, else for its majority class by pixels): a class no unit stands for
  is lost."""
  num_classes = len(class_names)
  results = {name: metrics.iou_from_confusion(confusion)[:num_classes]
             for name, confusion in confusions.items()}
  represented = unit_class if unit_class is not None else pixels.argmax(1)
  used = usage > 0
  results["pixel_share"] = pixels.sum(0) / max(pixels.sum(), 1.0)
  results["token_share"] = np.bincount(represented, weights=usage, minlength=num_classes
                                       )[:num_classes] / max(usage.sum(), 1.0)
  results["units"] = np.bincount(represented[used], minlength=num_classes
                                 )[:num_classes].astype(np.float64)
  return results


def flat_class_results(per_class: dict[str, np.ndarray], class_names) -> dict:
  """{"NAME/CLASS": value}: per-class results as scalars (None for NaN)."""
  return {f"{name}/{class_name}": (None if np.isnan(value) else float(value))
          for name, values in per_class.items()
          for class_name, value in zip(class_names, values)}


class _ProbeFit(Evaluator):
  """The probes' pass over training images: a segmentation evaluator's token
  counts and, for dense features, a uniform sample of about `feature_tokens`
  token features with their token labels, gathered on the host."""

  def __init__(self, segmentation: Segmentation, static, seed: int):
    super().__init__(segmentation.name + "/probe", segmentation.options)
    self._segmentation, self._static, self._seed = segmentation, static, seed
    self._rng = np.random.default_rng(seed)
    self._features, self._labels = [], []

  def batch_sums(self, predictions, batch, constants, static):
    return self._segmentation.batch_sums(predictions, batch, constants, static,
                                         tokens_only=True)

  def examples(self, predictions, batch, constants, static):
    _, num_classes, label_threshold, dense = static
    if not dense:
      return None
    features = predictions.features.astype(jnp.float32)
    labels = grids.token_labels(batch["segmentation"][:, 0], features.shape[1:3],
                                num_classes, label_threshold)
    return features, labels

  def add_examples(self, state, arrays) -> None:
    features, labels = arrays
    tokens_per_image = features.shape[1] * features.shape[2]
    features, labels = features.reshape(-1, features.shape[-1]), labels.reshape(-1)
    # Kept with probability feature_tokens / (all tokens the pass will see), so
    # the host holds about feature_tokens of them whatever the grid and images.
    rate = self.options["feature_tokens"] / (self.options["probe_images"] * tokens_per_image)
    keep = self._rng.random(len(features)) < rate
    self._features.append(features[keep])
    self._labels.append(labels[keep])

  def result(self, tokens: np.ndarray) -> dict:
    state = {"tokens": tokens}
    if self._static[3]:
      num_classes = self._static[1]
      features, labels = np.concatenate(self._features), np.concatenate(self._labels)
      labeled = labels >= 0
      # Centring matters for features of one sign (a ReLU backbone's), whose
      # cosines are all positive and crowd together.
      mean = (features.mean(0) if self.options.get("feature_centring")
              else np.zeros(features.shape[1])).astype(np.float32)
      state["dense"] = {
          "mean": mean,
          "centres": kmeans.kmeans_centres(
              kmeans.unit_rows(features - mean), num_classes, seed=self._seed,
              restarts=self.options.get("kmeans_restarts", 1)).astype(np.float32),
          "probe": fit_linear_probe(features[labeled],
                                    np.eye(num_classes, dtype=np.float32)[labels[labeled]],
                                    self.options["probe_steps"])}
    return state


def class_matched(pixels: np.ndarray, tokens: np.ndarray,
                  unit_class: np.ndarray) -> tuple[float, float]:
  """(mIoU, token purity) of the units' classes matched one to one to the
  data's (Hungarian, by pixels): how a model trained on other labels
  (pseudo-labels: cluster ids) does against the true ones; on its own labels,
  nearly its zero-shot numbers. pixels, tokens [K, C]: each unit's pixels and
  labelled tokens per true class; unit_class [K]."""
  predicted = metrics.confusion_from_assignment(pixels, unit_class, int(unit_class.max()) + 1)
  matched_class = metrics.hungarian_match(predicted)[unit_class]
  credited = np.where(matched_class >= 0,
                      tokens[np.arange(len(unit_class)), np.maximum(matched_class, 0)], 0)
  return (metrics.mean_iou(metrics.matched_confusion(predicted)),
          float(credited.sum() / max(tokens.sum(), 1.0)))


def nearest_centre(features: jax.Array, centres: jax.Array) -> jax.Array:
  """[..., D] features -> [...] index of the nearest of the [C, D] centres by
  cosine (the centres are of L2-normalised features)."""
  return jnp.argmax(features @ centres.T, -1).astype(jnp.int32)


def _pixel_accuracy(confusion: np.ndarray) -> float:
  """Correct pixels / labelled pixels of a [P >= C, C] confusion."""
  num_classes = confusion.shape[1]
  return float(np.trace(confusion[:num_classes]) / max(confusion.sum(), 1.0))


def fit_linear_probe(features, counts, steps: int, learning_rate: float = 0.05) -> dict:
  """A linear classifier on standardised features by weighted logistic
  regression (full batch, Adam, `steps` steps).

  features [N, D]; counts [N, C]: the weight of each class at each point
  (one-hot token labels, or a unit's token counts per class)."""
  features = jnp.asarray(features, jnp.float32)
  counts = jnp.asarray(counts, jnp.float32)
  weight = counts.sum(1, keepdims=True)
  total = jnp.maximum(weight.sum(), 1)
  mean = jnp.sum(features * weight, 0) / total
  std = jnp.sqrt(jnp.sum((features - mean) ** 2 * weight, 0) / total) + 1e-6
  standardised = (features - mean) / std
  linear = {"w": jnp.zeros((features.shape[1], counts.shape[1])),
            "b": jnp.zeros(counts.shape[1])}
  tx = optax.adam(learning_rate)

  def loss(p):
    log_p = jax.nn.log_softmax(standardised @ p["w"] + p["b"])
    return -jnp.sum(counts * log_p) / jnp.maximum(counts.sum(), 1)

  def step(carry, _):
    p, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss)(p), opt_state)
    return (optax.apply_updates(p, updates), opt_state), None

  (linear, _), _ = jax.lax.scan(step, (linear, tx.init(linear)), None, length=steps)
  return jax.device_get({"mean": mean, "std": std, **linear})


def probe_classes(probe: dict, features) -> jax.Array:
  """[..., D] features -> [...] the class a `fit_linear_probe` probe gives them."""
  logits = ((features - probe["mean"]) / probe["std"]) @ probe["w"] + probe["b"]
  return jnp.argmax(logits, -1).astype(jnp.int32)


def linear_probe(codes, token_counts, steps: int) -> np.ndarray:
  """The class a linear probe on quantized features gives each code: codes
  [K, D], token_counts [K, C] the labelled training tokens of each class
  quantized to each code (training on all those tokens)."""
  return np.asarray(probe_classes(fit_linear_probe(codes, token_counts, steps),
                                  jnp.asarray(codes, jnp.float32)))
