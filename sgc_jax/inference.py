"""Runs an inference bundle (`--mode=export`): images <-> tokens.

    tokenizer = sgc_jax.inference.load("workdir/run/bundle")
    indices, semantic = tokenizer.encode(images)   # [N, H, W, 3] in [-1, 1]
    images = tokenizer.decode(indices)

By default the bundle's serialized StableHLO runs (only JAX and NumPy are
imported, none of the model code); `use_model_code=True` rebuilds the Flax
model from the bundle's config instead, for debugging or fine-tuning.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from sgc_jax import tree_io

FORMAT = "sgc_jax.bundle"
VERSION = 1


class BundleError(ValueError):
  pass


class Tokenizer:
  def __init__(self, directory: str, use_model_code: bool = False):
    self.directory = directory
    path = os.path.join(directory, "model.json")
    if not os.path.isfile(path):
      raise BundleError(f"{directory}: not an sgc_jax bundle (no model.json)")
    with open(path) as f:
      self.description = json.load(f)
    if self.description.get("format") != FORMAT:
      raise BundleError(f"{path}: format {self.description.get('format')!r}, "
                        f"expected {FORMAT!r}")
    if self.description.get("version") != VERSION:
      raise BundleError(f"{path}: bundle version {self.description.get('version')}, "
                        f"this sgc_jax reads version {VERSION}")
    self.image_size = self.description["image_size"]
    self.grid = self.description["grid"]
    self.num_codes = self.description["num_codes"]
    self.class_names = self.description["class_names"]
    self.semantic = self.description["semantic"]
    self.variables = tree_io.load(self._file("variables.npz"))
    if use_model_code:
      self._encode, self._decode = self._model_functions()
    else:
      self._encode, self._decode = (self._exported(name) for name in ("encode", "decode"))

  def _file(self, name: str) -> str:
    path = os.path.join(self.directory, name)
    if not os.path.isfile(path):
      raise BundleError(f"{self.directory}: bundle without {name}")
    return path

  def _exported(self, name: str):
    with open(self._file(f"{name}.jax_export"), "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    platform = jax.default_backend()
    if platform not in exported.platforms:
      raise BundleError(f"{self.directory}: {name} was exported for "
                        f"{list(exported.platforms)}, not for this {platform!r} backend")
    return jax.jit(exported.call)

  def _model_functions(self):
    from sgc_jax.models.codebook import CodebookConfig
    from sgc_jax.models.vqgan import SGCVQGAN, ModelConfig
    fields = dict(self.description["model_config"])
    codebook = CodebookConfig(**fields.pop("codebook"))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    model = SGCVQGAN(ModelConfig(codebook=codebook, **fields))
    return (jax.jit(lambda v, x: model.apply(v, x, method=SGCVQGAN.encode)),
            jax.jit(lambda v, i: model.apply(v, i, method=SGCVQGAN.decode)))

  def encode(self, images) -> tuple[np.ndarray, np.ndarray]:
    """[N, H, W, 3] float images in [-1, 1] -> (indices, semantic map), [N, g, g] each."""
    images = np.asarray(images, np.float32)
    expected = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected:
      raise BundleError(f"images of shape {images.shape}; this bundle encodes "
                        f"[N, {', '.join(map(str, expected))}]")
    indices, semantic = self._encode(self.variables, images)
    return np.asarray(indices), np.asarray(semantic)

  def decode(self, indices) -> np.ndarray:
    """[N, g, g] code indices -> [N, H, W, 3] images in [-1, 1]."""
    indices = np.asarray(indices)
    if indices.ndim != 3 or indices.shape[1:] != (self.grid, self.grid):
      raise BundleError(f"token grid of shape {indices.shape}; this bundle decodes "
                        f"[N, {self.grid}, {self.grid}]")
    if not np.issubdtype(indices.dtype, np.integer):
      raise BundleError(f"token indices of dtype {indices.dtype}; integers expected")
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_codes):
      raise BundleError(f"token indices in [{indices.min()}, {indices.max()}]; this "
                        f"bundle has {self.num_codes} codes")
    return np.asarray(self._decode(self.variables, indices.astype(np.int32)))


def load(directory: str, use_model_code: bool = False) -> Tokenizer:
  return Tokenizer(directory, use_model_code)
