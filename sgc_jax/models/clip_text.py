"""Class names -> CLIP text embeddings: prompts from templates, CLIP's BPE
tokenizer, the text tower; each prompt's embedding normalised, averaged over
the templates (CLIP's prompt ensembling). For PAT's open vocabulary at
training (`embed_class_names`, by the tower `text_tower` reads) and in `sgc-segment`
(`embed_with_bundle`, from a bundle's `embed_text` and vocabulary)."""

from __future__ import annotations

import re
from typing import Callable, Sequence

import jax
import numpy as np

from sgc_jax.config_lib import ConfigError
from sgc_jax.models import text_embeddings

VOCABULARY_FILE = "vocabulary.txt.gz"  # the BPE vocabulary's name inside a bundle


def prompt_name(name: str) -> str:
  """A data set's class name as words: COCO panoptic's "wall-other-merged" ->
  "wall", "playingfield" stays, "traffic_light" -> "traffic light"."""
  name = re.sub(r"(-(merged|other|stuff))+$", "", name)
  return re.sub(r"[-_]+", " ", name).strip()


def ensemble(embed: Callable[[np.ndarray], np.ndarray], tokenizer, context_length: int,
             templates: Sequence[str], names: Sequence[str]) -> np.ndarray:
  """[C, E] unit vectors: per class, the normalised mean of its prompts' unit
  embeddings."""
  prompts = [t.format(prompt_name(n)) for n in names for t in templates]
  vectors = text_embeddings.normalize(np.asarray(
      embed(tokenizer.tokenize(prompts, context_length)), np.float64))
  return text_embeddings.normalize(vectors.reshape(len(names), len(templates), -1).mean(1))


def text_tower(weights: str):
  """(CLIP's text tower module, its params, context length) from a weight file;
  ConfigError naming the file."""
  from sgc_jax.convert import clip as clip_convert
  from sgc_jax.convert import torch_file
  from sgc_jax.models import clip
  try:
    fields, variables = clip_convert.load(weights)
  except torch_file.WeightFileError as error:
    raise ConfigError(f"config.model.backbone.weights: {error}") from None
  config = clip_convert.config(fields)
  return clip.text_tower(config), variables["params"]["text"], config.context_length


def tokenizer(vocabulary: str, field: str = "config.model.text.vocabulary"):
  from sgc_jax.models import clip_tokenizer
  try:
    return clip_tokenizer.Tokenizer(vocabulary)
  except ValueError as error:
    raise ConfigError(f"{field}: {error}") from None


def embed_class_names(loaded_tower, vocabulary: str, templates: Sequence[str],
                      names: Sequence[str]) -> np.ndarray:
  """`ensemble` by a tower `text_tower` loaded."""
  tower, params, context_length = loaded_tower
  apply = jax.jit(lambda ids: tower.apply({"params": params}, ids))
  return ensemble(apply, tokenizer(vocabulary), context_length, templates, names)


def embed_with_bundle(model, names: Sequence[str]) -> np.ndarray:
  """Unit embeddings [C, E] of any class names, by a PAT bundle's text tower."""
  from sgc_jax import inference
  text = model.description["pat"]["text"]
  path = model.file(VOCABULARY_FILE)
  try:
    bpe = tokenizer(path, "the bundle's vocabulary")
  except ConfigError as error:
    raise inference.BundleError(str(error)) from None
  return ensemble(lambda ids: model.call("embed_text", ids), bpe, text["context_length"],
                  text["templates"], names)
