"""PAT (arXiv 2412.14145), as docs/design.md#pat defines it (no official code):
feature-pyramid tokenization of a frozen backbone, with a pixel branch and an
open-vocabulary semantic branch.

One train step, on images in [-1, 1] (the backbone gets them in its own
normalisation):
  * every level's codebook (`ema`, `sgc` or `vq`; `sgc` clusters under the
    training classes' labels at the level's grid) quantizes its tokens;
  * pixel branch: L1 of the full-size reconstruction (+ LPIPS and the hinge
    GAN term under the adaptive weight, where enabled: `core/gan.py`), and
    `level_weight` x the mean L1 of every level's own picture against the image
    area-averaged to its grid;
  * semantic branch: the per-pixel embedding's cosine with the class
    embeddings / `semantic_temperature`, upsampled (bilinear) to the labels,
    cross-entropy over the training classes; `unseen_classes` are held out
    (their pixels ignored, their names unseen until evaluation).
The backbone is a frozen state field of its own (no gradient, no optimizer
state), as ACSeg's.

Class embeddings (`model.text.kind`): `clip` (CLIP's text tower over prompt
templates, with the user's BPE vocabulary), `file` (a .npz of name -> vector),
both fixed; or `learned`: closed vocabulary, one learned vector per class, and
then no class may be held out. Prediction: the branch's logits; where the
backbone gives dense features in the text space (CLIP), the baseline
open-vocabulary segmenter's (their cosine with the same class embeddings /
`baseline_temperature`) plus `fusion_weight` x the branch's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgc_jax import config_lib
from sgc_jax.bundle import inference
from sgc_jax.convert import clip as clip_convert
from sgc_jax.convert import lpips as lpips_weights
from sgc_jax.core import backbones, class_embeddings, gan, optim
from sgc_jax.core.method import Levels, Method, Prediction, Units
from sgc_jax.data import pipeline, sources
from sgc_jax.models import codebook as codebook_lib
from sgc_jax.models import lpips as lpips_lib
from sgc_jax.models.pat import PAT, PATConfig
from sgc_jax.ops import grids, losses
from sgc_jax.ops.vectors import divide_by_norm
from sgc_jax.runtime import sharding
from sgc_jax.utils import logs

IGNORE = 255
# The class maps predict gives: the fused prediction, the semantic branch
# alone, and the baseline alone (where the backbone has one).
CLASS_MAPS = ("pat", "branch", "baseline")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # {"net": PAT's, "class_vectors": learned class embeddings (closed vocabulary)}
  opt_state: Any
  codebook: Any
  backbone: Any  # frozen
  disc_params: Any
  disc_stats: Any
  disc_opt_state: Any
  key: jax.Array


def pat_config(config, num_train_classes: int,
               class_frequency: np.ndarray | None = None) -> PATConfig:
  """The networks' config (`class_frequency`: of the training classes' pixels,
  for the semantic loss's class weights); ValueError naming a bad field."""
  m = config.model
  shared = {k: v for k, v in m.codebook.to_dict().items()
            if k not in ("alpha", "min_codes", "label_threshold", "class_balance")}
  weights = codebook_lib.class_weights(class_frequency, m.codebook.get("class_balance", "none"),
                                      num_train_classes)
  codebooks = tuple(codebook_lib.CodebookConfig(**dict(
      shared, num_codes=k, dim_sem=m.dim, dim_det=0,
      num_classes=num_train_classes if shared["mode"] == "sgc" else 1,
      class_weights=weights if shared["mode"] == "sgc" else ()))
      for k in m.num_codes)
  net = PATConfig(image_size=config.data.image_size, strides=tuple(m.strides), dim=m.dim,
                  codebooks=codebooks, decoder_ch=m.decoder_ch,
                  upsample_ch=tuple(m.upsample_ch), fuse_ch=m.fuse_ch,
                  text_dim=m.text.dim, dtype=m.dtype)
  net.validate()
  return net


def pat_config_from_dict(fields: dict) -> PATConfig:
  fields = dict(fields)
  codebooks = tuple(codebook_lib.CodebookConfig.from_dict(c) for c in fields.pop("codebooks"))
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return PATConfig(codebooks=codebooks, **fields)


class PATNet:
  """The backbone, the PAT networks and the class embeddings: what predict
  and export compute, from variables {params, codebook, backbone, text}."""

  def __init__(self, backbone: backbones.Backbone, net: PATConfig, normalization: str,
               semantic_temperature: float, baseline_temperature: float,
               fusion_weight: float):
    self.backbone, self.config, self.normalization = backbone, net, normalization
    self.model = PAT(net)
    self.semantic_temperature = semantic_temperature
    self.baseline_temperature = baseline_temperature
    self.fusion_weight = fusion_weight

  def maps(self, variables, images):
    """The backbone's pyramid of [-1, 1] images."""
    return self.backbone.pyramid(variables["backbone"],
                                 pipeline.from_symmetric(images, self.normalization))

  def _apply(self, variables, *args, method):
    return self.model.apply({"params": variables["params"]["net"],
                             "codebook": variables["codebook"]}, *args, method=method)

  def encode(self, variables, images):
    """Every level's token indices, finest first."""
    return self._apply(variables, self.maps(variables, images), images.shape[1:3],
                       method=PAT.nearest)

  def decode(self, variables, indices):
    return self._apply(variables, tuple(indices), method=PAT.decode)

  def class_logits(self, variables, images, text, indices=None) -> dict[str, jax.Array]:
    """{"pat", "branch"[, "baseline"]: logits [B, H, W, C]} against unit class
    embeddings `text` [C, E]."""
    if indices is None:
      indices = self.encode(variables, images)
    embedding = self._apply(variables, self._apply(variables, indices, method=PAT.lookup),
                            method=PAT.semantic)
    out = {"branch": _upsample(embedding @ text.T / self.semantic_temperature, images.shape)}
    out["pat"] = out["branch"]
    if self.backbone.has_dense:
      dense = self.backbone.dense(variables["backbone"],
                                  pipeline.from_symmetric(images, self.normalization))
      dense = divide_by_norm(dense)
      out["baseline"] = _upsample(dense @ text.T / self.baseline_temperature, images.shape)
      out["pat"] = out["baseline"] + self.fusion_weight * out["branch"]
    return out

  def segment(self, variables, images, text):
    """Each pixel's class [B, H, W] among the rows of `text` (any class names)."""
    text = divide_by_norm(text)
    return jnp.argmax(self.class_logits(variables, images, text)["pat"], -1).astype(jnp.int32)


def _upsample(logits, image_shape):
  return jax.image.resize(logits, image_shape[:3] + logits.shape[3:], "bilinear")


class PATMethod(Method):
  name = "pat"
  state_fields = ("model", "disc")
  # What the state's tree depends on; weights, temperatures and the files the
  # class embeddings come from may change on resume.
  state_keys = {"model": ("backbone.kind", "backbone.arch", "backbone.patch_size",
                          "backbone.blocks", "strides", "dim", "num_codes", "decoder_ch",
                          "upsample_ch", "fuse_ch", "text.kind", "text.dim",
                          "unseen_classes", "codebook.mode")}
  progress = {"loss": "loss/total", "psnr": "psnr", "ce": "loss/semantic"}

  def __init__(self, config, mesh, class_names, class_frequency=None, text=None,
               lpips_params=None, text_tower=None):
    """`text`: the class embeddings [C, E] of every class (clip / file), None
    for learned ones; `class_frequency`: of the training classes' pixels;
    `text_tower`: CLIP's (`sgc_jax.convert.clip.text_tower`), which goes into the bundle
    so that `sgc-segment` embeds any names."""
    super().__init__(config, mesh)
    m = config.model
    self.class_names = tuple(class_names)
    self.unseen_class_ids = tuple(self.class_names.index(n) for n in m.unseen_classes)
    self.seen_class_ids = tuple(i for i in range(len(self.class_names))
                                if i not in self.unseen_class_ids)
    lut = np.full(256, IGNORE, np.int32)
    lut[list(self.seen_class_ids)] = np.arange(len(self.seen_class_ids))
    self.train_label = lut  # data label -> training class (seen) or IGNORE
    frequency = (np.ones(len(self.seen_class_ids)) if class_frequency is None
                 else np.asarray(class_frequency)[list(self.seen_class_ids)])
    self.class_frequency = frequency / max(frequency.sum(), 1e-12)
    self.net_config = pat_config(config, len(self.seen_class_ids), self.class_frequency)
    self.backbone = backbones.build(m.backbone, config.data.image_size)
    self.net = PATNet(self.backbone, self.net_config, self.backbone.normalization,
                      m.semantic_temperature, m.baseline_temperature, m.fusion_weight)
    self.model = PAT(self.net_config, token_groups=sharding.batch_shards(mesh))
    self.text = None if text is None else np.asarray(text, np.float32)
    self.text_tower = text_tower
    self.lpips_params = lpips_params
    self.lpips = lpips_lib.LPIPS() if lpips_params is not None else None
    self.tx = optim.create(config.optimizer, config.optimizer.learning_rate, config.total_steps)
    self.adversarial = gan.Adversarial(
        config.disc.ch, config.disc.num_layers, jnp.dtype(m.dtype),
        optim.create(config.optimizer, config.optimizer.disc_learning_rate, config.total_steps))

  @classmethod
  def build(cls, config, mesh, dataset) -> "PATMethod":
    cls.validate_data(config, dataset)
    frequency = sources.class_frequency(dataset.split(config.data.train_split),
                                        dataset.num_classes)
    m = config.model
    # Read once: it embeds the class names and goes into the bundle.
    tower = None
    if m.text.kind == "clip":
      tower = backbones.read_weights(clip_convert.text_tower, m.backbone.weights,
                                     "model.backbone")
    text = class_embeddings.build(m.text, dataset.class_names, tower)
    lpips_params = None
    if config.loss.lpips_weights:
      lpips_params = lpips_weights.load_params(config.loss.lpips_weights)
    return cls(config, mesh, dataset.class_names, frequency, text, lpips_params, tower)

  @classmethod
  def validate(cls, config) -> None:
    m = config.model
    config_lib.check_positive(config, "optimizer.learning_rate", "optimizer.disc_learning_rate",
                              "model.semantic_temperature", "model.baseline_temperature",
                              "model.text.dim")
    config_lib.check_choice(config, "model.codebook.mode", ("vq", "ema", "sgc"))
    config_lib.check_choice(config, "model.text.kind", class_embeddings.KINDS)
    for field in ("semantic_weight", "level_weight", "fusion_weight"):
      if not m[field] >= 0:
        raise config_lib.ConfigError(f"config.model.{field}={m[field]!r}: must be >= 0")
    if config.data.num_views != 1:
      raise config_lib.ConfigError(f"config.data.num_views={config.data.num_views}: PAT "
                                   "trains on one view of each image")
    if config.data.normalization != "symmetric":
      raise config_lib.ConfigError(
          f"config.data.normalization={config.data.normalization!r}: PAT reconstructs "
          "images in [-1, 1] ('symmetric') and gives its backbone its own normalisation")
    if m.text.kind == "learned" and m.unseen_classes:
      raise config_lib.ConfigError(
          f"config.model.unseen_classes={tuple(m.unseen_classes)}: learned class embeddings "
          "are a closed vocabulary and cannot name held-out classes (text.kind clip or file)")
    backbones.validate(m.backbone)
    class_embeddings.validate(m.text, m.backbone)
    optim.validate(config.optimizer)
    try:
      pat_config(config, 1)
    except ValueError as error:
      raise config_lib.ConfigError(f"config.{error}") from None

  @classmethod
  def validate_data(cls, config, dataset) -> None:
    m = config.model
    if not dataset.class_names:
      raise config_lib.ConfigError(
          f"config.data.name={config.data.name!r} has no segmentation labels; PAT's semantic "
          "branch trains on them")
    unknown = [n for n in m.unseen_classes if n not in dataset.class_names]
    if unknown:
      raise config_lib.ConfigError(
          f"config.model.unseen_classes: {', '.join(map(repr, unknown))} not among the data "
          f"set's classes ({', '.join(dataset.class_names)})")
    seen = len(dataset.class_names) - len(set(m.unseen_classes))
    if seen < 1:
      raise config_lib.ConfigError("config.model.unseen_classes: every class is held out")
    if m.codebook.mode == "sgc":
      try:
        for k in m.num_codes:
          codebook_lib.check_allocation(m.codebook.alpha, m.codebook.min_codes,
                                        m.codebook.label_threshold,
                                        dict(mode="sgc", num_codes=k), seen)
      except ValueError as error:
        raise config_lib.ConfigError(f"config.model.{error}") from None

  # ------------------------------------------------------------ state

  def trained_params(self, state):
    return state.params

  def init(self, key) -> TrainState:
    c = self.config
    k_params, k_class, k_disc, k_state = jax.random.split(key, 4)
    images = jnp.zeros((sharding.batch_shards(self.mesh), c.data.image_size,
                        c.data.image_size, 3))
    backbone = self.backbone.init()
    maps = self.net.maps({"backbone": backbone}, images)
    variables = self.model.init({"params": k_params}, maps)
    params = {"net": variables["params"]}
    if self.text is None:
      params["class_vectors"] = jax.random.normal(
          k_class, (len(self.class_names), self.net_config.text_dim))
    codebook = variables["codebook"]
    if self.net_config.codebooks[0].mode == "sgc":
      cb = c.model.codebook
      codebook = {name: codebook_lib.set_allocation(state, self.class_frequency, cb.alpha,
                                                    cb.min_codes)
                  for name, state in codebook.items()}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), codebook=codebook, backbone=backbone,
                      **self.adversarial.init(k_disc, images[:1]), key=k_state)

  def initial_state(self, state: TrainState) -> TrainState:
    weights = jax.device_put(self.backbone.load(), self.state_shardings.backbone)
    if self.backbone.weights:
      logs.note(f"PAT backbone ({self.backbone.kind}) from {self.backbone.weights}")
    return state.replace(backbone=weights)

  # ------------------------------------------------------------ step

  def phase(self, step: int) -> bool:
    """Whether the GAN term is on."""
    return gan.gan_on(self.config.loss, step)

  def _class_embeddings(self, params):
    """Unit class embeddings [C, E] of every class of the data."""
    vectors = params["class_vectors"] if self.text is None else jnp.asarray(self.text)
    return divide_by_norm(vectors)

  def train_step(self, state: TrainState, batch: dict, phase: bool):
    c, m = self.config, self.config.model
    with_gan = phase
    x = self.constrain(batch["image"][:, 0], ("batch", "height", "width", "channels"))
    weight = batch["mask"].astype(jnp.float32)
    labels = jnp.asarray(self.train_label)[batch["segmentation"][:, 0].astype(jnp.int32)]
    num_train = len(self.seen_class_ids)
    level_labels = [grids.token_labels(labels, self.net_config.grid(l), num_train,
                                       m.codebook.label_threshold)
                    for l in range(self.net_config.num_levels)]
    maps = self.net.maps({"backbone": state.backbone}, x)
    key, k_restart = jax.random.split(state.key)
    seen = jnp.asarray(self.seen_class_ids)

    def generator_loss(params):
      out, updates = self.model.apply(
          {"params": params["net"], "codebook": state.codebook}, maps, level_labels, weight,
          train=True, mutable=["codebook"], rngs={"restart": k_restart})
      x_hat = out["reconstruction"]

      def nll(reconstruction):
        return gan.nll(c.loss, x, reconstruction, weight, self.lpips, self.lpips_params)

      terms = {"reconstruction": nll(x_hat), **out["losses"]}
      if m.level_weight > 0:
        terms["levels"] = m.level_weight * sum(
            losses.reconstruction(grids.area_downsample(x, s), picture, weight, "l1")
            for s, picture in zip(self.net_config.strides, out["pictures"])) / len(
                out["pictures"])
      if m.semantic_weight > 0:
        text = self._class_embeddings(params)[seen]
        logits = _upsample(out["semantic"] @ text.T / m.semantic_temperature, x.shape)
        terms["semantic"] = m.semantic_weight * _cross_entropy(logits, labels, weight)
      metrics = dict(out["metrics"])
      if with_gan:
        terms["gan"], metrics["adaptive_weight"] = self.adversarial.weighted_generator_loss(
            state, x_hat, weight, nll, self.model, params["net"], out["features"],
            PAT.last_layer, c.loss.disc_weight, c.loss.max_adaptive_weight)
      return sum(terms.values()), (terms, metrics, updates["codebook"], x_hat)

    grads, (terms, metrics, codebook, x_hat) = jax.grad(generator_loss, has_aux=True)(
        state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    disc = self.adversarial.step(state, with_gan, x, x_hat, weight, metrics)
    metrics.update({f"loss/{k}": v for k, v in terms.items()})
    metrics["loss/total"] = sum(terms.values())
    metrics["psnr"] = losses.masked_mean(losses.psnr(x, x_hat), weight)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         codebook=codebook, key=key, **disc), metrics

  # ------------------------------------------------------------ evaluation

  def eval_variables(self, state: TrainState) -> dict:
    variables = {"params": state.params, "codebook": state.codebook,
                 "backbone": state.backbone, "text": self._class_embeddings(state.params)}
    if self.text_tower is not None:
      variables["text_tower"] = self.text_tower[1]
    return variables

  def predict(self, variables, images) -> Prediction:
    indices = self.net.encode(variables, images)
    reconstruction, pictures = self.net.decode(variables, indices)
    logits = self.net.class_logits(variables, images, variables["text"], indices)
    maps = {name: jnp.argmax(v, -1).astype(jnp.int32) for name, v in logits.items()}
    return Prediction(indices[0], reconstruction=reconstruction, semantic=maps["pat"],
                      class_maps=maps, levels=Levels(tuple(indices), tuple(pictures)))

  def units(self, variables) -> Units:
    """The finest level's codes (the evaluators' `indices`)."""
    codes = self.model.apply({"params": variables["params"]["net"],
                              "codebook": variables["codebook"]},
                             method=lambda module: module.codes(0))
    return Units(np.asarray(jax.device_get(codes)))

  def segment(self, variables, images) -> jax.Array:
    return self.net.segment(variables, images, variables["text"])

  def segment_names(self) -> list[str]:
    return list(self.class_names)

  def level_codes(self) -> tuple[int, ...]:
    return tuple(cb.num_codes for cb in self.net_config.codebooks)

  def summary(self) -> dict:
    return {"quantizer": self.net_config.codebooks[0].mode,
            "vocabulary": "closed" if self.text is None else "open"}

  # ------------------------------------------------------------ export

  def export_functions(self):
    functions = _functions(self.net)
    if self.text_tower is not None:
      functions.update(_text_functions(*self.text_tower[::2]))
    return functions

  def bundle_files(self) -> dict[str, str]:
    if self.text_tower is None:
      return {}
    return {inference.VOCABULARY_FILE: self.config.model.text.vocabulary}

  def bundle_fields(self) -> dict:
    m = self.config.model
    text, prompts = m.text.to_dict(), {}
    if self.text_tower is not None:
      text["context_length"] = self.text_tower[2]
      # What `embed_text` needs to embed class names (read by sgc-segment).
      prompts = {"text_prompts": {"context_length": self.text_tower[2],
                                  "templates": list(m.text.templates)}}
    return {"image_size": self.config.data.image_size, **prompts,
            "grids": [self.net_config.grid(l) for l in range(self.net_config.num_levels)],
            "level_codes": list(self.level_codes()),
            "unseen_classes": list(m.unseen_classes),
            "pat": dict(net=dataclasses.asdict(self.net_config),
                        backbone=self.backbone.description(),
                        semantic_temperature=m.semantic_temperature,
                        baseline_temperature=m.baseline_temperature,
                        fusion_weight=m.fusion_weight, text=text)}

  @classmethod
  def functions_from_bundle(cls, description: dict):
    fields = description["pat"]
    net_config = pat_config_from_dict(fields["net"])
    backbone = backbones.from_description(fields["backbone"], net_config.image_size)
    net = PATNet(backbone, net_config, backbone.normalization, fields["semantic_temperature"],
                 fields["baseline_temperature"], fields["fusion_weight"])
    size = net_config.image_size
    backbone_abstract = jax.eval_shape(backbone.init)
    maps = jax.eval_shape(lambda b: net.maps({"backbone": b}, jnp.zeros((1, size, size, 3))),
                          backbone_abstract)
    variables = jax.eval_shape(net.model.init, {"params": jax.random.PRNGKey(0)}, maps)
    num_classes = len(description["class_names"])
    params = {"net": variables["params"]}
    if fields["text"]["kind"] == "learned":
      params["class_vectors"] = jax.ShapeDtypeStruct((num_classes, net_config.text_dim),
                                                     jnp.float32)
    abstract = {"params": params, "codebook": variables["codebook"],
                "backbone": backbone_abstract,
                "text": jax.ShapeDtypeStruct((num_classes, net_config.text_dim), jnp.float32)}
    functions = _functions(net)
    if fields["text"]["kind"] == "clip":
      from sgc_jax.models import clip
      tower = clip.text_tower(clip_convert.config(fields["backbone"]["clip"]))
      context_length = fields["text"]["context_length"]
      abstract["text_tower"] = jax.eval_shape(
          tower.init, jax.random.PRNGKey(0), jnp.zeros((1, context_length), jnp.int32))["params"]
      functions.update(_text_functions(tower, context_length))
    return {name: fn for name, (fn, _) in functions.items()}, abstract


def _text_functions(tower, context_length: int):
  """`embed_text`: CLIP token ids [N, context_length] -> text embeddings [N, E]."""
  count, = jax.export.symbolic_shape("n")

  def embed_text(variables, ids):
    return tower.apply({"params": variables["text_tower"]}, ids)

  return {"embed_text": (embed_text, jax.ShapeDtypeStruct((count, context_length), jnp.int32))}


def _cross_entropy(logits, labels, weight):
  """Mean over labelled pixels (label != IGNORE) of examples weighted by `weight`."""
  valid = (labels != IGNORE).astype(jnp.float32) * weight[:, None, None]
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(labels == IGNORE, 0, labels))
  return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1.0)


def _functions(net: PATNet):
  batch, classes = jax.export.symbolic_shape("b, c")
  size, c = net.config.image_size, net.config
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  grids = tuple(jax.ShapeDtypeStruct((batch, c.grid(l), c.grid(l)), jnp.int32)
                for l in range(c.num_levels))

  def encode(variables, x):
    """Every level's token indices, finest first."""
    return net.encode(variables, x)

  def decode(variables, indices):
    """Every level's indices -> the image [B, H, W, 3] in [-1, 1]."""
    return net.decode(variables, indices)[0]

  def segment(variables, x):
    """Images -> each pixel's class among the bundle's own classes [B, H, W]."""
    return net.segment(variables, x, variables["text"])

  def segment_with_text(variables, x):
    """(images, class embeddings [C, E]) -> each pixel's class [B, H, W]."""
    return net.segment(variables, *x)

  return {"encode_levels": (encode, images), "decode_levels": (decode, grids),
          "segment": (segment, images),
          "segment_with_text": (segment_with_text, (
              images, jax.ShapeDtypeStruct((classes, c.text_dim), jnp.float32)))}
