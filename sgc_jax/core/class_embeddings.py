"""Class-name embeddings for open-vocabulary segmentation (PAT's semantic
branch), by `config.model.text.kind`:

    learned   none here: the method learns one vector per class (a closed
              vocabulary)
    file      `text.file`: a .npz of class name -> vector [E] (any text encoder's,
              computed elsewhere)
    clip      CLIP's text tower, from the same weight file as the CLIP backbone
              (`model.backbone.weights`), over the prompt `text.templates` with
              the user's BPE vocabulary (`text.vocabulary`,
              bpe_simple_vocab_16e6.txt.gz): each prompt's embedding
              normalised, averaged over the templates, normalised again (the
              prompt ensembling of CLIP's zero-shot classifiers)

For `clip`, the prompts of each class name come from the templates; CLIP's BPE
tokenizer and its text tower embed them (`embed_class_names`); a bundle's
`embed_text` function does the same at inference (`sgc-segment`).

`build` returns unit vectors [C, E] in the order of the class names (None for
`learned`); a file that does not hold every name, or holds vectors of another
size than `text.dim`, is a ConfigError naming it.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from sgc_jax.config_lib import ConfigError
from sgc_jax.models import clip_tokenizer

KINDS = ("learned", "file", "clip")
# Prompt templates for class names, a subset of those CLIP's authors wrote for
# ImageNet zero-shot classification (the ones about a whole scene's content).
TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a bad photo of a {}.",
             "a photo of a small {}.", "a photo of a large {}.", "a cropped photo of a {}.",
             "a close-up photo of a {}.", "a bright photo of a {}.", "a dark photo of a {}.",
             "a blurry photo of a {}.", "there is a {} in the scene.", "this is a {}.")


def validate(text, backbone) -> None:
  if text.kind == "file" and not text.file:
    raise ConfigError("config.model.text.file: kind 'file' needs a .npz of class name -> vector")
  if text.kind == "clip":
    if backbone.kind != "clip" or not backbone.weights:
      raise ConfigError("config.model.text.kind='clip': the text tower comes from the CLIP "
                        "backbone's weights (model.backbone.kind='clip' with weights)")
    if not text.vocabulary:
      raise ConfigError("config.model.text.vocabulary: CLIP's tokenizer needs its BPE "
                        "vocabulary file (bpe_simple_vocab_16e6.txt.gz, shipped for example "
                        "inside the open_clip_torch wheel)")
    if not text.templates or any(t.count("{}") != 1 for t in text.templates):
      raise ConfigError(f"config.model.text.templates={tuple(text.templates)}: prompts with "
                        "one {} each")


def build(text, class_names, text_tower=None) -> np.ndarray | None:
  """Unit class embeddings [C, text.dim] (None: learned ones); `text_tower`:
  CLIP's (`sgc_jax.convert.clip.text_tower`) for kind `clip`."""
  if text.kind == "learned":
    return None
  if text.kind == "file":
    vectors, source = from_file(text.file, class_names), text.file
  else:
    vectors = embed_class_names(text_tower, text.vocabulary, tuple(text.templates),
                                class_names)
    source = "CLIP's text tower"
  if vectors.shape[1] != text.dim:
    raise ConfigError(f"config.model.text.dim={text.dim}: the class embeddings of "
                      f"{source} have {vectors.shape[1]} dimensions")
  return normalize(vectors)


def normalize(vectors: np.ndarray) -> np.ndarray:
  return clip_tokenizer.normalize(vectors)


def from_file(path: str, class_names) -> np.ndarray:
  """[C, E] from a .npz of name -> vector; ConfigError naming the file."""
  try:
    with np.load(path, allow_pickle=False) as data:
      found = {name: np.asarray(data[name]) for name in data.files}
  except (OSError, ValueError) as error:
    raise ConfigError(f"config.model.text.file={path}: not a readable .npz ({error})") from None
  missing = [n for n in class_names if n not in found]
  if missing:
    raise ConfigError(f"config.model.text.file={path}: no vector for "
                      + ", ".join(map(repr, missing)))
  rows = [found[n] for n in class_names]
  shapes = {r.shape for r in rows}
  if len(shapes) != 1 or len(next(iter(shapes))) != 1:
    raise ConfigError(f"config.model.text.file={path}: vectors of shapes {sorted(shapes)}; "
                      "one [E] vector per class expected")
  vectors = np.stack(rows)
  if not np.issubdtype(vectors.dtype, np.floating) or not np.isfinite(vectors).all():
    raise ConfigError(f"config.model.text.file={path}: vectors must be finite floats")
  if (np.linalg.norm(vectors, axis=-1) == 0).any():
    raise ConfigError(f"config.model.text.file={path}: a zero vector has no direction")
  return vectors.astype(np.float32)


def tokenizer(vocabulary: str, field: str = "config.model.text.vocabulary"):
  try:
    return clip_tokenizer.Tokenizer(vocabulary)
  except ValueError as error:
    raise ConfigError(f"{field}: {error}") from None


def embed_class_names(loaded_tower, vocabulary: str, templates: Sequence[str],
                      names: Sequence[str]) -> np.ndarray:
  """`ensemble` by a tower `text_tower` loaded."""
  tower, params, context_length = loaded_tower
  apply = jax.jit(lambda ids: tower.apply({"params": params}, ids))
  return clip_tokenizer.ensemble(apply, tokenizer(vocabulary), context_length, templates,
                                names)
