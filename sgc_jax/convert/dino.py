"""Official DINO ViT weights (facebookresearch/dino) -> `sgc_jax.models.vit`
variables.

    python -m sgc_jax.convert.dino dino_deitsmall16_pretrain.pth dino_vits16.npz

reads the architecture from the tensors' shapes, writes {"params", "fields"}
(the variables and the architecture, so that `load` needs nothing else) and
prints the architecture. Two layouts are read:
  * the released backbones (dino_deitsmall16_pretrain.pth, ...,
    dino_vitbase8_pretrain.pth; what torch.hub's dino_vits16 ... load): the
    bare state dict of the teacher's backbone;
  * DINO's training checkpoints (checkpoint.pth, *_full_checkpoint.pth):
    {"student", "teacher", "optimizer", "epoch", "args", "dino_loss", ...}.
    The teacher is taken, as DINO's `load_pretrained_weights` does for its
    evaluations (`--checkpoint_key teacher`); its keys carry the
    MultiCropWrapper's `backbone.` (and DDP's `module.` where it was wrapped),
    and its projection head `head.*` is ignored.

The architecture: embed_dim from cls_token [1, 1, D], depth from the blocks,
patch_size from patch_embed.proj.weight [D, 3, p, p], image_size = g·p from
pos_embed [1, 1 + g², D], mlp_ratio from mlp.fc1, qkv_bias from whether the
qkv bias is there. No shape holds the head count: it is `num_heads` where
given, else that of the DINO architecture with that width and depth (vit_small
6, vit_base 12). `arch` names the DINO architecture the fields are, or is None.

Key mapping (our path joined with ".", `blocks_i` read `blocks.i`):
  cls_token, pos_embed                cls_token, pos_embed (as they are)
  patch_embed.proj.weight, bias       patch_embed/proj/kernel (OIHW -> HWIO), bias
  blocks.i.norm1.weight, bias         blocks_i/norm1/scale, bias (norm2, norm alike)
  blocks.i.attn.qkv.weight, bias      blocks_i/attn/qkv/kernel ([out, in] -> [in, out]),
                                      bias (attn.proj, mlp.fc1, mlp.fc2 alike)
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import traverse_util

from sgc_jax.convert import common, torch_file
from sgc_jax.models import vit

# The VisionTransformer fields a checkpoint determines, with their types.
MODEL_FIELDS = {"patch_size": int, "embed_dim": int, "depth": int, "num_heads": int,
                "mlp_ratio": float, "qkv_bias": bool, "image_size": int}
_DDP, _WRAPPER = "module.", "backbone."
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _prefix(state_dict) -> str:
  """The backbone's key prefix: DDP's `module.`, then the MultiCropWrapper's
  `backbone.`, each where the keys have it."""
  prefix = _DDP if any(k.startswith(_DDP) for k in state_dict) else ""
  if any(k.startswith(prefix + _WRAPPER) for k in state_dict):
    prefix += _WRAPPER
  return prefix


def architecture(fields: dict) -> str | None:
  """The DINO architecture (`vit.ARCHITECTURES`) the fields are, if any."""
  return next((name for name, arch in vit.ARCHITECTURES.items()
               if all(fields[k] == v for k, v in arch.items())), None)


def infer_fields(state_dict: dict[str, np.ndarray], source: str = "state dict",
                 num_heads: int | None = None) -> dict:
  """{"arch", **MODEL_FIELDS} of the checkpoint's ViT (see the module docstring)."""
  prefix = _prefix(state_dict)

  def shape(name, ndim):
    return torch_file.shape_of(state_dict, prefix + name, ndim, source, "DINO ViT")

  dim = int(shape("cls_token", 3)[-1])
  patch_size = int(shape("patch_embed.proj.weight", 4)[-1])
  positions = shape("pos_embed", 3)[1] - 1
  grid = common.square_grid(state_dict, prefix + "pos_embed", positions, source)
  hidden = int(shape("blocks.0.mlp.fc1.weight", 2)[0])
  depth = 0
  while any(k.startswith(f"{prefix}blocks.{depth}.") for k in state_dict):
    depth += 1
  fields = {"patch_size": patch_size, "embed_dim": dim, "depth": depth,
            "mlp_ratio": hidden / dim, "qkv_bias": f"{prefix}blocks.0.attn.qkv.bias" in state_dict,
            "image_size": grid * patch_size}
  if num_heads is None:
    sized = [arch for arch in vit.ARCHITECTURES.values()
             if (arch["embed_dim"], arch["depth"]) == (dim, depth)]
    if not sized:
      known = "; ".join(f"{name} {arch['embed_dim']} and {arch['depth']}"
                        for name, arch in vit.ARCHITECTURES.items())
      raise torch_file.WeightFileError(
          f"{source}: a ViT {dim} wide and {depth} deep, no DINO architecture ({known}), and "
          "no tensor holds the head count: give num_heads")
    num_heads = sized[0]["num_heads"]
  if num_heads < 1 or dim % num_heads:
    raise torch_file.WeightFileError(
        f"{source}: embed_dim {dim} is not a multiple of num_heads {num_heads}")
  fields["num_heads"] = num_heads
  return {"arch": architecture(fields), **{name: fields[name] for name in MODEL_FIELDS}}


def model(fields: dict) -> vit.VisionTransformer:
  """The VisionTransformer of `fields` (MODEL_FIELDS; others are ignored)."""
  return vit.VisionTransformer(**{name: fields[name] for name in MODEL_FIELDS})


def abstract_params(fields: dict) -> dict:
  """Shapes of the converted params for `fields`, as `model(fields).init` makes them."""
  size = fields["image_size"]
  return jax.eval_shape(model(fields).init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, size, size, 3), np.float32))["params"]


def torch_name(path: tuple[str, ...]) -> str:
  """A parameter's path -> its DINO key (without prefixes)."""
  *modules, leaf = path
  if not modules:
    return leaf
  return ".".join([re.sub(r"^blocks_", "blocks.", m) for m in modules] + [_LEAVES[leaf]])



def convert(state_dict: dict[str, np.ndarray], fields: dict, source: str = "state dict") -> dict:
  """{"params"} of `model(fields)` from a DINO state dict (either layout).

  Every tensor must be there, floating point, with the official shape, and
  nothing else but the projection head; errors are `WeightFileError`, one line
  naming the first offending key.
  """
  prefix = _prefix(state_dict)
  flat, used = torch_file.gather(state_dict, abstract_params(fields),
                                 lambda path: prefix + torch_name(path), source,
                                 lambda: _hint(state_dict, fields))
  head = prefix.removesuffix(_WRAPPER) + "head."
  unexpected = [k for k in state_dict if k not in used and not k.startswith(head)]
  if unexpected:
    raise torch_file.WeightFileError(
        f"{source}: unexpected tensor {unexpected[0]!r}, not in a {fields['depth']}-block "
        f"DINO ViT ({len(unexpected)} such){_hint(state_dict, fields)}")
  return {"params": traverse_util.unflatten_dict(flat)}


def _hint(state_dict, fields) -> str:
  """Names the checkpoint's own fields where they differ from `fields`."""
  return common.field_hint(lambda: infer_fields(state_dict, num_heads=fields["num_heads"]),
                           MODEL_FIELDS, fields, "ViT")


def _stored_fields(tree: dict, source: str) -> dict:
  """The fields an .npz of this module holds, checked."""
  fields = common.stored_fields(tree, MODEL_FIELDS, source, "sgc_jax.convert.dino", "biuf",
                                "number", positive=True)
  if fields["embed_dim"] % fields["num_heads"] or fields["image_size"] % fields["patch_size"]:
    raise torch_file.WeightFileError(
        f"{source}: fields {fields}: embed_dim must be a multiple of num_heads, and "
        "image_size one of patch_size")
  return {"arch": architecture(fields), **fields}


def load(path: str, num_heads: int | None = None) -> tuple[dict, dict]:
  """(fields, {"params"}) from an official file (see the module docstring) or
  from the .npz this module writes. `num_heads` is needed for a `.pth` whose
  width and depth are no DINO architecture's; an .npz holds it."""
  if path.endswith(".npz"):
    return common.load_npz(path, _stored_fields, abstract_params,
                           {"num_heads": ("a ViT", num_heads)})
  state_dict = torch_file.load_state_dict(path, key="teacher")
  fields = infer_fields(state_dict, path, num_heads)
  return fields, convert(state_dict, fields, path)


def main(argv=None):
  def arguments(parser):
    parser.add_argument("checkpoint", help="a DINO backbone .pth or training checkpoint.pth")
    parser.add_argument("out", help="the .npz to write")
    parser.add_argument("--num_heads", type=int, default=None,
                        help="the head count, for a ViT of no DINO architecture")

  def run(args):
    fields, variables = load(args.checkpoint, args.num_heads)
    return common.write_with_fields(variables, {name: fields[name] for name in MODEL_FIELDS},
                                    args.out, fields, "a ViT of no DINO architecture")

  common.command(__doc__, argv, arguments, run)


if __name__ == "__main__":
  main()
