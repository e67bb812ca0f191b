"""OpenAI CLIP ViT weights -> `sgc_jax.models.clip` variables.

    python -m sgc_jax.convert.clip ViT-B-16.pt clip_vitb16.npz

reads the architecture from the tensors' shapes, writes {"params", "fields"}
(the variables and the architecture, so that `load` needs nothing else) and
prints the architecture. Three layouts are read, all under CLIP's state-dict
names (`visual.conv1.weight`, ..., `transformer.resblocks.0.attn.in_proj_weight`,
..., `logit_scale`):
  * OpenAI's released files (ViT-B-32.pt, ViT-B-16.pt, ViT-L-14.pt, ...):
    TorchScript archives, whose data.pkl pickles the module tree; its
    parameters are collected under the names `state_dict()` gives them, by
    `torch_file` (nothing in the file is executed);
  * plain state dicts, `torch.save(model.state_dict())`: CLIP's fine-tuned
    checkpoints, open_clip's `open_clip_pytorch_model.bin` for OpenAI's
    models;
  * the .npz this module writes.
Tensors may be float16 (OpenAI's files are), bfloat16, float32 or float64;
the params are float32. The released files also hold the integers
`input_resolution`, `context_length` and `vocab_size`, which CLIP's
`build_model` drops; here they must agree with the shapes.

The architecture, as CLIP's `build_model` infers it: vision_width and
patch_size from visual.conv1.weight [width, 3, p, p], vision_layers from the
count of visual.transformer.resblocks, image_size = g·p from
visual.positional_embedding [1 + g², width], embed_dim from visual.proj
[width, embed_dim], context_length and text_width from positional_embedding
[context, width], vocab_size from token_embedding.weight, text_layers from
the count of transformer.resblocks. No shape holds a head count: CLIP's are
width // 64 (its `build_model`), which `vision_heads` / `text_heads`
override for other models. `arch` names the released architecture the fields
are ("ViT-B/16", ...), or is None.

Key mapping (`sgc_jax.models.clip`'s docstring lists the params): the
"visual" subtree is `visual.*`, the "text" subtree the text tower's keys
(`token_embedding.weight`, `positional_embedding`, `transformer.*`,
`ln_final.*`, `text_projection`), `resblocks_i` is `transformer.resblocks.i`,
`attn/in_proj/kernel` and `bias` are `attn.in_proj_weight` and
`attn.in_proj_bias`; Linear kernels are transposed, conv1's OIHW -> HWIO.

`load(path)` returns (fields, variables): fields = {"arch", and the
`CLIPConfig` fields}, `config(fields)` the CLIPConfig; variables =
{"params": {"visual", "text", "logit_scale"}}, what `clip.CLIP(config)`
applies; `{"params": variables["params"]["visual"]}` alone is what
`clip.vision_tower(config)` applies, likewise "text" for `clip.text_tower`.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
from flax import traverse_util

from sgc_jax.convert import common, torch_file
from sgc_jax.models import clip

MODEL_FIELDS = tuple(field.name for field in dataclasses.fields(clip.CLIPConfig))
# Integers OpenAI's archives hold beside the weights, and the field each must equal.
_SIZES = {"input_resolution": "image_size", "context_length": "context_length",
          "vocab_size": "vocab_size"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}
_MODEL = "CLIP ViT"


def architecture(fields: dict) -> str | None:
  """The released architecture (`clip.ARCHITECTURES`) the fields are, if any."""
  return next((name for name, config in clip.ARCHITECTURES.items()
               if all(fields[k] == v for k, v in dataclasses.asdict(config).items())), None)


def config(fields: dict) -> clip.CLIPConfig:
  """The CLIPConfig of `fields` ("arch" and other keys are ignored)."""
  return clip.CLIPConfig(**{name: fields[name] for name in MODEL_FIELDS})


def _count_blocks(state_dict, prefix: str) -> int:
  """The number of blocks `prefix`0., `prefix`1., ... in a row."""
  count = 0
  while any(k.startswith(f"{prefix}{count}.") for k in state_dict):
    count += 1
  return count


def _heads(width: int, heads: int | None, tower: str, source: str) -> int:
  if heads is None:
    if width % clip.HEAD_WIDTH:
      raise torch_file.WeightFileError(
          f"{source}: the {tower} tower is {width} wide, not a multiple of CLIP's "
          f"{clip.HEAD_WIDTH}-wide heads: give {tower}_heads")
    heads = width // clip.HEAD_WIDTH
  if heads < 1 or width % heads:
    raise torch_file.WeightFileError(
        f"{source}: the {tower} tower's width {width} is not a multiple of {heads} heads")
  return heads


def infer_fields(state_dict: dict[str, np.ndarray], source: str = "state dict",
                 vision_heads: int | None = None, text_heads: int | None = None) -> dict:
  """{"arch", **CLIPConfig fields} of the checkpoint's CLIP (see the module docstring)."""

  def shape(name, ndim):
    return torch_file.shape_of(state_dict, name, ndim, source, _MODEL)

  vision_width, channels, patch_size, patch_width = shape("visual.conv1.weight", 4)
  if (channels, patch_width) != (3, patch_size):
    raise torch_file.WeightFileError(
        f"{source}: tensor 'visual.conv1.weight' has shape "
        f"{(vision_width, channels, patch_size, patch_width)}: not square patches of RGB")
  positions = shape("visual.positional_embedding", 2)[0] - 1
  grid = common.square_grid(state_dict, "visual.positional_embedding", positions, source)
  context_length, text_width = shape("positional_embedding", 2)
  fields = {
      "vision_width": vision_width,
      "vision_layers": _count_blocks(state_dict, "visual.transformer.resblocks."),
      "vision_heads": _heads(vision_width, vision_heads, "vision", source),
      "patch_size": patch_size, "image_size": grid * patch_size,
      "embed_dim": shape("visual.proj", 2)[1],
      "context_length": context_length,
      "vocab_size": shape("token_embedding.weight", 2)[0],
      "text_width": text_width,
      "text_heads": _heads(text_width, text_heads, "text", source),
      "text_layers": _count_blocks(state_dict, "transformer.resblocks."),
  }
  for tower in ("vision", "text"):
    if not fields[f"{tower}_layers"]:
      prefix = "visual.transformer" if tower == "vision" else "transformer"
      raise torch_file.WeightFileError(f"{source}: no tensor '{prefix}.resblocks.0.*': not "
                                       f"a {_MODEL} state dict")
  fields = {name: int(value) for name, value in fields.items()}
  return {"arch": architecture(fields), **fields}


def abstract_params(fields: dict) -> dict:
  """Shapes of the converted params for `fields`, as `clip.CLIP(...).init` makes them."""
  cfg = config(fields)
  size = cfg.image_size
  return jax.eval_shape(clip.CLIP(cfg).init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, size, size, 3), np.float32),
                        jax.ShapeDtypeStruct((1, cfg.context_length), np.int32))["params"]


def torch_name(path: tuple[str, ...]) -> str:
  """A parameter's path -> its CLIP state-dict key."""
  if path == ("logit_scale",):
    return "logit_scale"
  tower, *modules, leaf = path
  prefix = "visual." if tower == "visual" else ""
  modules = [re.sub(r"^resblocks_", "transformer.resblocks.", m) for m in modules]
  if modules[-2:] == ["attn", "in_proj"]:
    return prefix + ".".join(modules[:-1] + [f"in_proj_{_LEAVES[leaf]}"])
  if not modules:
    return prefix + leaf
  return prefix + ".".join(modules + [_LEAVES[leaf]])



def _check_sizes(state_dict, fields, source):
  """The archives' integer sizes, where present, are scalars equal to the shapes'."""
  for name, field in _SIZES.items():
    if name not in state_dict:
      continue
    value = state_dict[name]
    if value.shape != () or value.dtype.kind not in "iu" or int(value) != fields[field]:
      shown = int(value) if value.shape == () and value.dtype.kind in "iu" else (
          f"a {value.dtype.name} tensor of shape {value.shape}")
      raise torch_file.WeightFileError(
          f"{source}: tensor {name!r} is {shown}, but the weights' {field} is {fields[field]}")


def convert(state_dict: dict[str, np.ndarray], fields: dict, source: str = "state dict") -> dict:
  """{"params"} of `clip.CLIP(config(fields))` from a CLIP state dict.

  Every tensor must be there, floating point, with the official shape, and
  nothing else but the archives' integer sizes (checked against the fields);
  errors are `WeightFileError`, one line naming the first offending key.
  """
  flat, used = torch_file.gather(state_dict, abstract_params(fields), torch_name, source,
                                 lambda: _hint(state_dict, fields))
  unexpected = [k for k in state_dict if k not in used | set(_SIZES)]
  if unexpected:
    raise torch_file.WeightFileError(
        f"{source}: unexpected tensor {unexpected[0]!r}, not in a CLIP ViT of "
        f"{fields['vision_layers']} image and {fields['text_layers']} text blocks "
        f"({len(unexpected)} such){_hint(state_dict, fields)}")
  _check_sizes(state_dict, fields, source)
  return {"params": traverse_util.unflatten_dict(flat)}


def _hint(state_dict, fields) -> str:
  """Names the checkpoint's own fields where they differ from `fields`."""
  return common.field_hint(
      lambda: infer_fields(state_dict, vision_heads=fields["vision_heads"],
                           text_heads=fields["text_heads"]), MODEL_FIELDS, fields, "CLIP")


def _stored_fields(tree: dict, source: str) -> dict:
  """The fields an .npz of this module holds, checked."""
  fields = common.stored_fields(tree, dict.fromkeys(MODEL_FIELDS, int), source,
                                "sgc_jax.convert.clip", "iu", "integer")
  try:
    config(fields)
  except ValueError as error:
    raise torch_file.WeightFileError(f"{source}: {error}") from None
  return {"arch": architecture(fields), **fields}


def load(path: str, vision_heads: int | None = None,
         text_heads: int | None = None) -> tuple[dict, dict]:
  """(fields, {"params": {"visual", "text", "logit_scale"}}) from an OpenAI
  TorchScript archive, a state dict or this module's .npz (see the module
  docstring). The head counts default to width // 64, CLIP's; an .npz holds
  its own, which given ones must match."""
  if path.endswith(".npz"):
    return common.load_npz(path, _stored_fields, abstract_params,
                           {"vision_heads": ("a vision tower", vision_heads),
                            "text_heads": ("a text tower", text_heads)})
  state_dict = torch_file.load_state_dict(path)
  fields = infer_fields(state_dict, path, vision_heads, text_heads)
  return fields, convert(state_dict, fields, path)


def text_tower(weights: str):
  """(CLIP's text tower module, its params, context length) from a weight file
  (a refused one: WeightFileError naming it)."""
  fields, variables = load(weights)
  tower_config = config(fields)
  return clip.text_tower(tower_config), variables["params"]["text"], tower_config.context_length


def main(argv=None):
  def arguments(parser):
    parser.add_argument("checkpoint", help="OpenAI's ViT-*.pt, or a CLIP state dict")
    parser.add_argument("out", help="the .npz to write")
    parser.add_argument("--vision_heads", type=int, default=None,
                        help="the image tower's head count, if not its width // 64")
    parser.add_argument("--text_heads", type=int, default=None,
                        help="the text tower's head count, if not its width // 64")

  def run(args):
    fields, variables = load(args.checkpoint, args.vision_heads, args.text_heads)
    return common.write_with_fields(
        variables, {name: np.int64(fields[name]) for name in MODEL_FIELDS}, args.out, fields,
        "a CLIP ViT of no released architecture")

  common.command(__doc__, argv, arguments, run)


if __name__ == "__main__":
  main()
