"""`--mode=export`: a training checkpoint -> an inference bundle.

    BUNDLE/model.json        format, model config, class names, image size, grid
    BUNDLE/variables.npz     parameters and codebook (no optimizer, no discriminator)
    BUNDLE/encode.jax_export images [b, H, W, 3] in [-1, 1] -> (indices, semantic map) [b, g, g]
    BUNDLE/decode.jax_export indices [b, g, g] -> images [b, H, W, 3]

The two functions are `jax.export` serialized StableHLO with a symbolic batch
dimension `b`, lowered for every platform in `PLATFORMS`; `sgc_jax.inference`
runs them without the model code.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from sgc_jax import evaluate, train, tree_io
from sgc_jax.models.vqgan import SGCVQGAN

FORMAT = "sgc_jax.bundle"
VERSION = 1
PLATFORMS = ("cpu", "cuda")


def export_functions(model_config, variables, platforms=PLATFORMS):
  """Serialized (encode, decode) of `SGCVQGAN(model_config)` over `variables`."""
  model = SGCVQGAN(model_config)
  size, grid = model_config.resolution, model_config.grid

  def encode(variables, images):
    return model.apply(variables, images, method=SGCVQGAN.encode)

  def decode(variables, indices):
    return model.apply(variables, indices, method=SGCVQGAN.decode)

  batch, = jax.export.symbolic_shape("b")
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  encoded = jax.export.export(jax.jit(encode), platforms=platforms)(
      spec, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
  decoded = jax.export.export(jax.jit(decode), platforms=platforms)(
      spec, jax.ShapeDtypeStruct((batch, grid, grid), jnp.int32))
  return encoded.serialize(), decoded.serialize()


def write_bundle(directory: str, model_config, variables, class_names, extra: dict,
                 platforms=PLATFORMS) -> str:
  variables = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), variables)
  encode_bytes, decode_bytes = export_functions(model_config, variables, platforms)
  os.makedirs(directory, exist_ok=True)
  tree_io.save(variables, os.path.join(directory, "variables.npz"))
  with open(os.path.join(directory, "encode.jax_export"), "wb") as f:
    f.write(encode_bytes)
  with open(os.path.join(directory, "decode.jax_export"), "wb") as f:
    f.write(decode_bytes)
  description = {
      "format": FORMAT, "version": VERSION, "platforms": list(platforms),
      "image_size": model_config.resolution, "grid": model_config.grid,
      "num_codes": model_config.codebook.num_codes,
      "semantic": model_config.codebook.mode == "sgc",
      "class_names": list(class_names),
      "model_config": dataclasses.asdict(model_config),
      # A damaged export can still parse and compute something else: the loader
      # checks these digests.
      "sha256": {name: tree_io.file_sha256(os.path.join(directory, name))
                 for name in ("variables.npz", "encode.jax_export", "decode.jax_export")},
      **extra}
  with open(os.path.join(directory, "model.json"), "w") as f:
    json.dump(description, f, indent=1)
  return directory


def export_checkpoint(config, workdir: str, directory: str | None = None) -> str:
  """WORKDIR's latest checkpoint -> a bundle in `directory` (WORKDIR/bundle)."""
  dataset, trainer, state, step = train.restore_latest(config, workdir)
  # FSDP-sharded parameters span processes: every process takes part in gathering them.
  variables = multihost_utils.process_allgather(
      {"params": evaluate.eval_params(state), "codebook": state.codebook}, tiled=True)
  directory = directory or os.path.join(workdir, "bundle")
  if jax.process_index() == 0:
    write_bundle(directory, trainer.model_config, variables, dataset.class_names,
                 {"step": step, "data": config.data.name})
  return directory
