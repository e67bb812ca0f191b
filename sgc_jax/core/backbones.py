"""Frozen backbones that methods build on (ACSeg's features), chosen by config:

    backbone.kind = "dino"    a DINO ViT (models/vit.py): `arch` (vit_small |
                              vit_base), `patch_size` (8 | 16), `feature`
                              (tokens | keys), `dtype` (of its compute:
                              float32 | bfloat16); `weights` an official DINO
                              .pth or the .npz its converter writes (None: a
                              randomly initialised ViT, the untrained baseline)
    backbone.kind = "clip"    a CLIP ViT's image tower (models/clip.py): `arch`
                              (ViT-B/16 ...), `blocks` (the pyramid),
                              `dense` (maskclip | tokens: its features in the
                              text space, PAT's baseline), `dtype`; `weights`
                              OpenAI's .pt, a state dict or the converter's
                              .npz (None: a random tower of `arch`)
    backbone.kind = "bundle"  a backbone the library trained: `weights` is an
                              inference bundle (--mode=export) holding a
                              `features` function (SlotCon's teacher encoder,
                              SGC-VQGAN's encoder); it is rebuilt from the model
                              code and its variables, never from serialized code

A backbone gives `init` (variables of the right shapes), `load` (the weights),
`features(variables, images)` -> [B, h, w, D], `pyramid(variables, images)`
(the outputs of the ViT blocks that `blocks` counts, 1-based; `(features,)`
where `blocks` is empty or the backbone has no blocks), `dense` where it has
dense features in a text-embedding space (CLIP), the input normalisation it was
trained with, and `description()`: the facts that rebuild it (`from_description`)
without its weight file, for the bundles of the methods built on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sgc_jax.config_lib import ConfigError

KINDS = ("dino", "clip", "bundle")
DINO_FEATURES = ("tokens", "keys")


class Backbone:
  """A frozen feature extractor; see the module docstring."""

  def __init__(self, kind: str, weights: str | None, normalization: str,
               features: Callable, abstract_variables, description: dict,
               load: Callable[[], Any], pyramid: Callable | None = None,
               dense: Callable | None = None):
    self.kind, self.weights, self.normalization = kind, weights, normalization
    self._features, self._abstract, self._description = features, abstract_variables, description
    self._load, self._pyramid, self._dense = load, pyramid, dense

  def init(self):
    """Variables of the backbone's shapes (zeros: `load` puts the weights)."""
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), self._abstract)

  def load(self):
    """The weights (host arrays); a random ViT's own initialisation without a file."""
    return self._load()

  def features(self, variables, images) -> jax.Array:
    """Images [B, H, W, 3] (normalised as `normalization`) -> float32 [B, h, w, D],
    with no gradient to the backbone."""
    out = self._features(jax.lax.stop_gradient(variables), images)
    return jax.lax.stop_gradient(out).astype(jnp.float32)

  def pyramid(self, variables, images) -> tuple[jax.Array, ...]:
    """Float32 maps [B, h, w, D_i] (see the module docstring), no gradient."""
    if self._pyramid is None:
      return (self.features(variables, images),)
    maps = self._pyramid(jax.lax.stop_gradient(variables), images)
    return tuple(jax.lax.stop_gradient(m).astype(jnp.float32) for m in maps)

  @property
  def has_dense(self) -> bool:
    return self._dense is not None

  def dense(self, variables, images) -> jax.Array:
    """Float32 [B, h, w, E] in the text-embedding space, no gradient."""
    out = self._dense(jax.lax.stop_gradient(variables), images)
    return jax.lax.stop_gradient(out).astype(jnp.float32)

  def description(self) -> dict:
    return self._description


def validate(config_backbone, field: str = "model.backbone") -> None:
  kind = config_backbone.kind
  if kind not in KINDS:
    raise ConfigError(f"config.{field}.kind={kind!r}: must be one of {', '.join(KINDS)}")
  if kind == "dino":
    from sgc_jax.models import vit
    if config_backbone.arch not in vit.ARCHITECTURES:
      raise ConfigError(f"config.{field}.arch={config_backbone.arch!r}: must be one of "
                        f"{', '.join(vit.ARCHITECTURES)}")
    if config_backbone.patch_size not in (8, 16):
      raise ConfigError(f"config.{field}.patch_size={config_backbone.patch_size!r}: "
                        "DINO's ViTs have patches of 8 or 16")
    if config_backbone.dtype not in ("float32", "bfloat16"):
      raise ConfigError(f"config.{field}.dtype={config_backbone.dtype!r}: must be float32 or "
                        "bfloat16")
    blocks = tuple(config_backbone.get("blocks", ()))
    depth = vit.ARCHITECTURES[config_backbone.arch]["depth"]
    if any(not (isinstance(b, int) and 1 <= b <= depth) for b in blocks):
      raise ConfigError(f"config.{field}.blocks={blocks}: block counts in 1..{depth}")
    if config_backbone.feature not in DINO_FEATURES:
      raise ConfigError(f"config.{field}.feature={config_backbone.feature!r}: must be one of "
                        f"{', '.join(DINO_FEATURES)}")
  elif kind == "clip":
    from sgc_jax.models import clip
    if config_backbone.weights is None and config_backbone.arch not in clip.ARCHITECTURES:
      raise ConfigError(f"config.{field}.arch={config_backbone.arch!r}: must be one of "
                        f"{', '.join(clip.ARCHITECTURES)} (or weights given)")
    if config_backbone.get("dense", "maskclip") not in clip.DENSE_MODES:
      raise ConfigError(f"config.{field}.dense={config_backbone.dense!r}: must be one of "
                        f"{', '.join(clip.DENSE_MODES)}")
    if config_backbone.dtype not in ("float32", "bfloat16"):
      raise ConfigError(f"config.{field}.dtype={config_backbone.dtype!r}: must be float32 or "
                        "bfloat16")
    blocks = tuple(config_backbone.get("blocks", ()))
    if any(not (isinstance(b, int) and b >= 1) for b in blocks):
      raise ConfigError(f"config.{field}.blocks={blocks}: block counts from 1")
  elif not config_backbone.weights:
    raise ConfigError(f"config.{field}.weights: kind 'bundle' needs a bundle directory "
                      "(python -m sgc_jax.main --mode=export of the backbone's run)")


def build(config_backbone, image_size: int, field: str = "model.backbone") -> Backbone:
  """The backbone of a config (reads a bundle's model.json and variables)."""
  validate(config_backbone, field)
  if config_backbone.kind == "dino":
    return _dino(dict(arch=config_backbone.arch, patch_size=config_backbone.patch_size,
                      feature=config_backbone.feature, dtype=config_backbone.dtype,
                      blocks=tuple(config_backbone.get("blocks", ()))),
                 config_backbone.weights, image_size)
  if config_backbone.kind == "clip":
    return _clip(dict(arch=config_backbone.arch, blocks=tuple(config_backbone.blocks),
                      dense=config_backbone.get("dense", "maskclip"),
                      dtype=config_backbone.dtype),
                 config_backbone.weights, image_size, field)
  return _bundle(config_backbone.weights, field)


def from_description(description: dict, image_size: int) -> Backbone:
  """A backbone from `Backbone.description()` (no file is read)."""
  if description["kind"] == "dino":
    return _dino(description["dino"], None, image_size)
  if description["kind"] == "clip":
    return _clip(description["clip"], None, image_size)
  return _library(description["bundle"], None, lambda: None)


def read_weights(load, weights: str, field: str):
  """`load(weights)`; a refused weight file is a ConfigError naming the field."""
  from sgc_jax.convert import torch_file
  try:
    return load(weights)
  except torch_file.WeightFileError as error:
    raise ConfigError(f"config.{field}.weights: {error}") from None


def _dino(fields: dict, weights: str | None, image_size: int) -> Backbone:
  from sgc_jax.models import vit
  loaded = None
  if weights is not None:
    from sgc_jax.convert import dino
    found, loaded = read_weights(dino.load, weights, "model.backbone")
    differ = [f"{k} {found[k]!r} (config: {fields[k]!r})" for k in ("arch", "patch_size")
              if found[k] != fields[k]]
    if differ:
      raise ConfigError(f"config.model.backbone.weights={weights}: a DINO ViT with "
                        + ", ".join(differ))
    # The grid of its position embedding: what the checkpoint was trained at.
    fields = {**fields, "image_size": found["image_size"]}
  net = vit.dino_vit(fields["arch"], fields["patch_size"],
                     image_size=fields.get("image_size", 224), dtype=jnp.dtype(fields["dtype"]),
                     blocks=tuple(fields.get("blocks", ())))
  return _from_module("dino", net, weights, loaded, "imagenet", {"kind": "dino", "dino": fields},
                      image_size, fields["feature"])


def _from_module(kind: str, module, weights: str | None, loaded, normalization: str,
                 description: dict, image_size: int, feature: str,
                 dense: str | None = None) -> Backbone:
  """A backbone over a ViT module whose output dict holds `feature`, `blocks`
  (those its `blocks` field counts) and, where given, `dense`; `loaded` its
  weights (None: its own random initialisation)."""
  images = jnp.zeros((1, image_size, image_size, 3))
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), images)

  def output(key):
    return lambda variables, x: module.apply(variables, x)[key]

  def load():
    if loaded is not None:
      return loaded
    return jax.device_get(jax.jit(module.init)(jax.random.PRNGKey(0), images))

  return Backbone(kind, weights, normalization, output(feature), abstract, description, load,
                  output("blocks") if module.blocks else None,
                  output(dense) if dense else None)


def _clip(fields: dict, weights: str | None, image_size: int,
          field: str = "model.backbone") -> Backbone:
  """`fields`: arch, blocks, dense, dtype, and (from a file, or in a
  description) the CLIPConfig's sizes."""
  from sgc_jax.convert import clip as clip_convert
  from sgc_jax.models import clip
  loaded = None
  if weights is not None:
    found, variables = read_weights(clip_convert.load, weights, field)
    if fields["arch"] is not None and found["arch"] != fields["arch"]:
      raise ConfigError(f"config.{field}.weights={weights}: a CLIP "
                        f"{found['arch'] or 'of no released architecture'} (config: "
                        f"{fields['arch']!r})")
    fields = {**fields, **{k: found[k] for k in clip_convert.MODEL_FIELDS}}
    loaded = {"params": variables["params"]["visual"]}
  elif "vision_width" not in fields:
    fields = {**fields, **dataclasses.asdict(clip.ARCHITECTURES[fields["arch"]])}
  config = clip_convert.config(fields)
  if any(b > config.vision_layers for b in fields["blocks"]):
    raise ConfigError(f"config.{field}.blocks={tuple(fields['blocks'])}: the CLIP image tower "
                      f"has {config.vision_layers} blocks")
  tower = clip.vision_tower(config, blocks=tuple(fields["blocks"]), dense=fields["dense"],
                            dtype=jnp.dtype(fields["dtype"]))
  description = {"kind": "clip", "clip": {**fields, "blocks": list(fields["blocks"])}}
  return _from_module("clip", tower, weights, loaded, "clip", description, image_size,
                      "dense", dense="dense")


def _bundle(directory: str, field: str) -> Backbone:
  from sgc_jax.bundle import inference
  try:
    bundle = inference.load(directory, use_model_code=True)
  except inference.BundleError as error:
    raise ConfigError(f"config.{field}.weights: {error}") from None
  if "features" not in bundle.description["functions"]:
    raise ConfigError(f"config.{field}.weights={directory}: the {bundle.method} bundle has no "
                      "features function (it holds "
                      f"{', '.join(bundle.description['functions'])})")
  return _library({k: v for k, v in bundle.description.items() if k != "sha256"}, directory,
                  lambda: bundle.variables)


def _library(description: dict, directory: str | None, load) -> Backbone:
  from sgc_jax.bundle import inference
  functions, abstract = inference.model_functions(description)
  return Backbone("bundle", directory, description.get("normalization", "symmetric"),
                  functions["features"], abstract, {"kind": "bundle", "bundle": description},
                  load)
