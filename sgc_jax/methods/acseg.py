"""ACSeg (arXiv 2210.05944), as docs/design.md#acseg defines it (no official code):
unsupervised segmentation over a frozen backbone's features.

Training: the Adaptive Concept Generator turns `num_prototypes` learnable
prototypes into each image's concepts; pixels are softly assigned to concepts
(softmax of cosine / τ) and the loss is minus the soft Newman modularity of
the pixels' affinity graph under that assignment (`models/acseg.py`). The
backbone is a frozen state field of its own: it gets no gradient and has no
optimizer state.

Classifying concepts without labels: after training (and before every
evaluation, export and pseudo-labelling: the core's `fit` hook) a vector per
concept of `classifier_images` training images, each weighted by the share of
its image's pixels it wins, is k-means-clustered (cosine) into `num_clusters`
clusters; a pixel takes the cluster of its concept. The vector is the concept
itself (`classifier_input="concepts"`, docs/design.md#concept-classifier) or
the mean backbone feature of the pixels it wins ("regions": the region the concept stands for, in the
space the baseline clusters), optionally less the vectors' weighted mean
(`classifier_centring`). The evaluators match clusters to classes
(Hungarian); the predictions' `features` are the backbone's, whose k-means
with the same matching (and the same centring:
`evals.segmentation.feature_centring`) is the baseline ACSeg must beat.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from sgc_jax import config_lib
from sgc_jax.core import backbones, optim
from sgc_jax.core.method import Method, Prediction, Units
from sgc_jax.models import acseg as parts
from sgc_jax.ops import kmeans
from sgc_jax.runtime import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # the concept generator's
  opt_state: Any
  backbone: Any  # frozen


def _generator(m) -> parts.ConceptGenerator:
  return parts.ConceptGenerator(m.num_prototypes, m.num_blocks, m.num_heads, m.mlp_ratio,
                                jnp.dtype(m.dtype))


class ACSegNet:
  """Backbone -> concepts -> assignment, and the fitted cluster of each concept."""

  def __init__(self, backbone: backbones.Backbone, generator: parts.ConceptGenerator,
               temperature: float, classifier_input: str = "concepts"):
    self.backbone, self.generator, self.temperature = backbone, generator, temperature
    self.classifier_input = classifier_input

  def concepts(self, variables, images):
    """(features [B, h, w, D], concepts [B, P, D], logits [B, h, w, P])."""
    features = self.backbone.features(variables["backbone"], images)
    b, h, w, d = features.shape
    pixels = features.reshape(b, h * w, d)
    concepts = self.generator.apply({"params": variables["generator"]}, pixels)
    logits = parts.concept_logits(pixels, concepts, self.temperature)
    return features, concepts, logits.reshape(b, h, w, -1)

  def classified(self, variables, images):
    """(features, logits, the vector the classifier clusters for each concept
    [B, P, D], the share of its image's tokens each concept wins [B, P])."""
    features, concepts, logits = self.concepts(variables, images)
    won = jax.nn.one_hot(jnp.argmax(logits, -1), concepts.shape[1])  # [B, h, w, P]
    count = jnp.sum(won, axis=(1, 2))
    shares = count / (won.shape[1] * won.shape[2])
    if self.classifier_input == "regions":
      vectors = (jnp.einsum("bhwp,bhwd->bpd", won, features.astype(jnp.float32))
                 / jnp.maximum(count, 1)[..., None])
    else:
      vectors = concepts
    return features, logits, vectors, shares

  def clusters(self, variables, images):
    """(features, each token's cluster [B, h, w], per-image concept logits,
    each concept's cluster [B, P])."""
    features, logits, vectors, _ = self.classified(variables, images)
    classifier = variables["classifier"]
    # Bundles exported before centring have no mean: theirs is zero.
    vectors = vectors - classifier.get("mean", 0.0)
    concept_cluster = jnp.argmax(parts.l2_normalize(vectors) @ classifier["centres"].T, -1)
    winner = jnp.argmax(logits, -1)
    tokens = jnp.take_along_axis(concept_cluster[:, None, :],
                                 winner.reshape(winner.shape[0], 1, -1), -1)
    return features, tokens.reshape(winner.shape).astype(jnp.int32), logits, concept_cluster

  def segment(self, variables, images):
    """Each pixel's cluster [B, H, W]: the concept logits upsampled (bilinear)
    to the image, argmax, the concept's cluster."""
    _, _, logits, concept_cluster = self.clusters(variables, images)
    logits = jax.image.resize(logits, images.shape[:3] + logits.shape[3:], "bilinear")
    winner = jnp.argmax(logits, -1).reshape(images.shape[0], 1, -1)
    return jnp.take_along_axis(concept_cluster[:, None, :], winner, -1).reshape(
        images.shape[:3]).astype(jnp.int32)


class ACSegMethod(Method):
  name = "acseg"
  state_fields = ("model",)
  # The model fields the state's tree depends on; the others (temperature,
  # the classifier's, the backbone file's path) may change on resume.
  state_keys = {"model": ("backbone.kind", "backbone.arch", "backbone.patch_size",
                          "num_prototypes", "num_blocks", "num_heads", "mlp_ratio")}
  progress = {"loss": "loss/total", "used": "concepts_used"}

  def __init__(self, config, mesh, class_names=()):
    super().__init__(config, mesh)
    self.class_names = tuple(class_names)
    m = config.model
    self.backbone = backbones.build(m.backbone, config.data.image_size)
    self.net = ACSegNet(self.backbone, _generator(m), m.temperature, m.classifier_input)
    self.num_clusters = m.num_clusters or len(self.class_names)
    self.tx = optim.create(config.optimizer, config.optimizer.learning_rate, config.total_steps)

  @classmethod
  def build(cls, config, mesh, dataset) -> "ACSegMethod":
    """Labels are not used to train; where the data has them, evaluators read them."""
    return cls(config, mesh, dataset.class_names)

  @classmethod
  def validate(cls, config) -> None:
    m = config.model
    config_lib.check_positive(config, "model.num_prototypes", "model.num_blocks",
                              "model.num_heads", "model.mlp_ratio", "model.temperature",
                              "model.classifier_images", "model.classifier_restarts",
                              "optimizer.learning_rate")
    if m.num_clusters is not None and m.num_clusters < 1:
      raise config_lib.ConfigError(f"config.model.num_clusters={m.num_clusters}: must be >= 1 "
                                   "(or None: the data set's number of classes)")
    config_lib.check_choice(config, "model.affinity", ("cosine", "centred"))
    config_lib.check_choice(config, "model.classifier_input", ("concepts", "regions"))
    if config.data.num_views != 1:
      raise config_lib.ConfigError(f"config.data.num_views={config.data.num_views}: ACSeg "
                                   "trains on one view of each image")
    backbones.validate(m.backbone)
    optim.validate(config.optimizer)

  @classmethod
  def validate_data(cls, config, dataset) -> None:
    if config.model.num_clusters is None and not dataset.class_names:
      raise config_lib.ConfigError(
          f"config.model.num_clusters: the data set {config.data.name} has no classes to "
          "take the number of clusters from; set it")
    backbone = backbones.build(config.model.backbone, config.data.image_size)
    if backbone.normalization != config.data.normalization:
      raise config_lib.ConfigError(
          f"config.data.normalization={config.data.normalization!r}: the backbone "
          f"({config.model.backbone.kind}) was trained on {backbone.normalization!r} inputs")
    dim = _feature_shape(backbone, config.data.image_size)[-1]
    if dim % config.model.num_heads:
      raise config_lib.ConfigError(
          f"config.model.num_heads={config.model.num_heads}: must divide the backbone's "
          f"feature dimension {dim}")

  # ------------------------------------------------------------ state

  def trained_params(self, state):
    return state.params

  def init(self, key) -> TrainState:
    params = self.net.generator.init(key, _pixels(self.backbone,
                                                  self.config.data.image_size))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), backbone=self.backbone.init())

  def initial_state(self, state: TrainState) -> TrainState:
    """The backbone's weights (a new run; a resumed one restores them)."""
    from sgc_jax.utils import logs
    weights = jax.device_put(self.backbone.load(), self.state_shardings.backbone)
    if self.backbone.weights:
      logs.note(f"ACSeg backbone ({self.backbone.kind}) from {self.backbone.weights}")
    return state.replace(backbone=weights)

  # ------------------------------------------------------------ step

  def train_step(self, state: TrainState, batch: dict, phase=None):
    del phase
    m = self.config.model
    images = self.constrain(batch["image"][:, 0], ("batch", "height", "width", "channels"))
    features = self.backbone.features(state.backbone, images)
    b, h, w, d = features.shape
    pixels = features.reshape(b, h * w, d)

    def loss_fn(params):
      concepts = self.net.generator.apply({"params": params}, pixels)
      assignment = jax.nn.softmax(parts.concept_logits(pixels, concepts, m.temperature), -1)
      return parts.modularity_loss(pixels, assignment, m.affinity == "centred"), assignment

    (loss, assignment), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    won = jax.nn.one_hot(jnp.argmax(assignment, -1), m.num_prototypes).max(1)  # [B, P]
    metrics_ = {"loss/total": loss, "modularity": -loss,
                "concepts_used": jnp.mean(jnp.sum(won, -1)),
                "assignment_confidence": jnp.mean(jnp.max(assignment, -1))}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics_

  # ------------------------------------------------------------ the concept classifier

  def eval_variables(self, state: TrainState) -> dict:
    return {"backbone": state.backbone, "generator": state.params}

  def fit_images(self) -> int:
    return self.config.model.classifier_images

  def fit(self, variables, batches) -> dict:
    """The concept classifier: k-means (cosine) of the concepts' vectors of the
    batches' images, each weighted by the share of its image's pixels it wins."""
    vectors, shares = [], []
    for batch in tqdm.tqdm(batches, total=batches.num_batches, unit="batch", leave=False,
                           desc="fit the concept classifier", mininterval=2.0,
                           disable=jax.process_index() != 0):
      found = sharding.gather_examples(batch["mask"],
                                       self._classifier_inputs(variables, batch["image"][:, 0]))
      vectors.append(found[0].reshape(-1, found[0].shape[-1]))
      shares.append(found[1].reshape(-1))
    m = self.config.model
    mean, centres = fit_classifier(np.concatenate(vectors), np.concatenate(shares),
                                   self.num_clusters, m.classifier_centring, self.config.seed,
                                   m.classifier_restarts)
    return {**variables, "classifier": {"centres": jnp.asarray(centres, jnp.float32),
                                        "mean": jnp.asarray(mean)}}

  def fitted_shapes(self, variables) -> dict:
    size = self.config.data.image_size
    vectors, _ = jax.eval_shape(self._classifier_inputs, variables,
                                jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    dim = vectors.shape[-1]
    return {**variables, "classifier": {
        "centres": jax.ShapeDtypeStruct((self.num_clusters, dim), jnp.float32),
        "mean": jax.ShapeDtypeStruct((dim,), jnp.float32)}}

  @functools.partial(jax.jit, static_argnums=0)
  def _classifier_inputs(self, variables, images):
    """Each image's concept vectors [B, P, D] and the share of its pixels each wins [B, P]."""
    _, _, vectors, shares = self.net.classified(variables, images)
    return vectors.astype(jnp.float32), shares

  def predict(self, variables, images) -> Prediction:
    features, tokens, _, _ = self.net.clusters(variables, images)
    return Prediction(tokens, features=features)

  def units(self, variables) -> Units | None:
    """The clusters (their centres): one unit per cluster, so the evaluators'
    Hungarian matching of units is ACSeg's matching of clusters to classes."""
    if "classifier" not in variables:
      return None
    return Units(np.asarray(jax.device_get(variables["classifier"]["centres"])))

  def segment(self, variables, images) -> jax.Array:
    return self.net.segment(variables, images)

  def segment_names(self) -> list[str]:
    return [f"cluster_{k}" for k in range(self.num_clusters)]

  # ------------------------------------------------------------ export

  def export_functions(self):
    return _functions(self.net, self.config.data.image_size)

  def bundle_fields(self) -> dict:
    m = self.config.model.to_dict()
    m["backbone"] = self.backbone.description()
    return {"image_size": self.config.data.image_size,
            "normalization": self.config.data.normalization,
            "num_clusters": self.num_clusters, "acseg": m}

  @classmethod
  def functions_from_bundle(cls, description: dict):
    m = ml_collections.ConfigDict(description["acseg"])
    size = description["image_size"]
    backbone = backbones.from_description(description["acseg"]["backbone"], size)
    # Bundles exported before the classifier's inputs were a choice: concepts,
    # not centred (no mean stored).
    net = ACSegNet(backbone, _generator(m), m.temperature,
                   m.get("classifier_input", "concepts"))
    pixels = _pixels(backbone, size)
    classifier = {"centres": jax.ShapeDtypeStruct(
        (description["num_clusters"], pixels.shape[-1]), jnp.float32)}
    if "classifier_input" in m:
      classifier["mean"] = jax.ShapeDtypeStruct(pixels.shape[-1:], jnp.float32)
    abstract = {"backbone": jax.eval_shape(backbone.init),
                "generator": jax.eval_shape(net.generator.init, jax.random.PRNGKey(0),
                                            pixels)["params"],
                "classifier": classifier}
    return {name: fn for name, (fn, _) in _functions(net, size).items()}, abstract


def fit_classifier(vectors: np.ndarray, shares: np.ndarray, num_clusters: int,
                   centring: bool, seed: int, restarts: int):
  """(mean [D], unit centres [num_clusters, D]): the cosine k-means of the
  vectors [V, D] of concepts that win a share > 0 of their image, weighted by
  that share, less their weighted mean if `centring`. Zero rows pad the
  centres when fewer concepts win than clusters."""
  won = shares > 0
  vectors, weights = vectors[won], shares[won]
  mean = np.zeros(vectors.shape[1], np.float32)
  if centring:
    mean = (weights @ vectors / weights.sum()).astype(np.float32)
  centres = kmeans.unit_rows(kmeans.kmeans_centres(
      kmeans.unit_rows(vectors - mean), num_clusters, weights=weights, seed=seed,
      restarts=restarts))
  if len(centres) < num_clusters:
    centres = np.concatenate([centres, np.zeros((num_clusters - len(centres),
                                                 centres.shape[1]))])
  return mean, centres


def _feature_shape(backbone: backbones.Backbone, size: int) -> tuple[int, ...]:
  """[1, h, w, D] of the backbone's features of one image."""
  return jax.eval_shape(backbone.features, jax.eval_shape(backbone.init),
                        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)).shape


def _pixels(backbone: backbones.Backbone, size: int) -> jax.Array:
  """A zero [1, h w, D] input of the concept generator."""
  _, h, w, d = _feature_shape(backbone, size)
  return jnp.zeros((1, h * w, d))


def _functions(net: ACSegNet, size: int):
  batch, = jax.export.symbolic_shape("b")
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)

  def features(variables, x):
    return net.backbone.features(variables["backbone"], x)

  def concepts(variables, x):
    """Each image's concepts [B, P, D] and its tokens' concept [B, h, w]."""
    _, found, logits = net.concepts(variables, x)
    return found, jnp.argmax(logits, -1).astype(jnp.int32)

  return {"features": (features, images), "concepts": (concepts, images),
          "segment": (net.segment, images)}
