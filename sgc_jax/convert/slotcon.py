"""An official SlotCon checkpoint (CVMI-Lab/SlotCon `main_pretrain.py`) ->
the model pieces of `sgc_jax.methods.slotcon.TrainState`.

    python -m sgc_jax.convert.slotcon ckpt_epoch_800.pth --out slotcon.npz

reads the depth, widths and prototype count from the tensors' shapes, writes
{"params": {"net", "predictor"}, "batch_stats": {"net", "predictor"},
"teacher_params", "teacher_stats", "center"} and prints the `--config.model...`
overrides of that architecture. The official file is `{"model": state_dict,
"optimizer": ..., "args": ..., ...}` with DDP's `module.` before every key; a
bare state dict, with or without `module.`, is read too. Key mapping (student
`_q` -> params / batch_stats, teacher `_k` -> teacher_params / teacher_stats):

  encoder_{q,k}.*                        net/encoder/*  (`sgc_jax.convert.resnet`)
  projector_{q,k}.mlp.{3i}.weight, bias  net/projector/conv_i/kernel (OIHW -> HWIO), bias
  projector_{q,k}.mlp.{3i+1}.weight, bias, running_mean, running_var
                                         net/projector/bn_i/scale, bias; stats mean, var
  grouping_{q,k}.slot_embed.weight       net/grouping/slot_embed [K, D]
  predictor_slot.mlp.{3i}.weight, bias   predictor/linear_i/kernel ([out, in] -> [in, out])
  predictor_slot.mlp.{3i+1}.*            predictor/bn_i/* (as the projector's)
  center                                 center [1, K]

(the heads are nn.Sequential of (layer, BN, GELU) x 2 + layer, hence 3i.)
`num_batches_tracked` is not used. Neither the input size nor the encoder's
dilation is stored; no official script dilates.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import traverse_util

from sgc_jax.convert import common, torch_file
from sgc_jax.convert import resnet as resnet_convert
from sgc_jax.models import slotcon as parts
from sgc_jax.models.slotcon import SlotConNet

FIELDS = ("depth", "dim_hidden", "dim_out", "num_prototypes")
_DDP = "module."
# Which official module each of our trees comes from.
_SOURCES = {"params": ("params", "q"), "batch_stats": ("batch_stats", "q"),
            "teacher_params": ("params", "k"), "teacher_stats": ("batch_stats", "k")}
_HEAD_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
                ("batch_stats", "var"): "running_var"}


def _prefix(state_dict) -> str:
  return _DDP if any(k.startswith(_DDP) for k in state_dict) else ""


def infer_fields(state_dict: dict[str, np.ndarray], source: str = "state dict") -> dict:
  """{depth, dim_hidden, dim_out, num_prototypes} of the checkpoint's model,
  from the teacher's tensors."""
  prefix = _prefix(state_dict)

  def shape(name, ndim):
    return torch_file.shape_of(state_dict, prefix + name, ndim, source, "SlotCon model")

  num_prototypes, dim_out = shape("grouping_k.slot_embed.weight", 2)
  dim_hidden = shape("projector_k.mlp.0.weight", 4)[0]
  try:
    depth = resnet_convert.infer_depth(state_dict, prefix + "encoder_k.")
  except torch_file.WeightFileError as error:
    raise torch_file.WeightFileError(f"{source}: {error}") from None
  return {"depth": depth, "dim_hidden": int(dim_hidden), "dim_out": int(dim_out),
          "num_prototypes": int(num_prototypes)}


def abstract_state(config_model) -> dict:
  """Shapes of the converted tree for `config_model` (`config.model`: depth,
  dim_hidden, dim_out, num_prototypes; dilation and teacher_temp if present),
  as `SlotConMethod.init` makes them."""
  m = _get(config_model)
  net = SlotConNet(m["depth"], tuple(m.get("dilation") or (False,) * 3), m["dim_hidden"],
                   m["dim_out"], m["num_prototypes"], m.get("teacher_temp") or 0.07)
  predictor = parts.DINOHead(hidden_dim=m["dim_hidden"], bottleneck_dim=m["dim_out"])
  key = jax.random.PRNGKey(0)
  # Shapes do not depend on the input size.
  variables = jax.eval_shape(net.init, key, jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  head = jax.eval_shape(predictor.init, key,
                        jax.ShapeDtypeStruct((2, m["dim_out"]), np.float32))
  return {"params": {"net": variables["params"], "predictor": head["params"]},
          "batch_stats": {"net": variables["batch_stats"], "predictor": head["batch_stats"]},
          "teacher_params": variables["params"], "teacher_stats": variables["batch_stats"],
          "center": jax.ShapeDtypeStruct((1, m["num_prototypes"]), np.float32)}


def _get(config_model) -> dict[str, Any]:
  """The fields convert needs, from a ConfigDict or a mapping."""
  fields = {}
  for name in FIELDS + ("dilation", "teacher_temp"):
    try:
      fields[name] = config_model[name]
    except (KeyError, AttributeError):
      if name in FIELDS:
        raise ValueError(f"SlotCon model config without {name!r}") from None
      fields[name] = None
  return fields


def torch_name(path: tuple[str, ...]) -> str:
  """A leaf's path in the converted tree -> its official key (without `module.`)."""
  tree, *rest = path
  if tree == "center":
    return "center"
  collection, side = _SOURCES[tree]
  if tree in ("params", "batch_stats"):
    owner, *rest = rest
    if owner == "predictor":
      return "predictor_slot." + _head_name(collection, rest)
  module, *rest = rest
  if module == "encoder":
    return f"encoder_{side}." + resnet_convert.torch_name(collection, tuple(rest))
  if module == "projector":
    return f"projector_{side}." + _head_name(collection, rest)
  if module == "grouping" and rest == ["slot_embed"]:
    return f"grouping_{side}.slot_embed.weight"
  raise ValueError(f"no official name for {'/'.join(path)}")


def _head_name(collection, path) -> str:
  layer, leaf = path
  kind, index = layer.rsplit("_", 1)
  position = 3 * int(index) + (kind == "bn")  # (layer, BN, GELU) per hidden layer
  return f"mlp.{position}.{_HEAD_LEAVES[collection, leaf]}"


def convert(state_dict: dict[str, np.ndarray], config_model,
            source: str = "state dict") -> dict:
  """The converted tree (see the module docstring) for `config_model`.

  Every tensor must be there with the official shape, and nothing else but
  `*.num_batches_tracked` (the official encoders have no `fc`); errors are
  `WeightFileError`, one line naming the first offending key.
  """
  prefix = _prefix(state_dict)
  flat, used = torch_file.gather(state_dict, abstract_state(config_model),
                                 lambda path: prefix + torch_name(path), source,
                                 lambda: _hint(state_dict, config_model), floats=False)
  unexpected = [k for k in state_dict
                if k not in used and not k.endswith(".num_batches_tracked")]
  if unexpected:
    raise torch_file.WeightFileError(
        f"{source}: unexpected tensor {unexpected[0]!r}, not in SlotCon "
        f"({len(unexpected)} such){_hint(state_dict, config_model)}")
  return traverse_util.unflatten_dict(flat)


def _hint(state_dict, config_model) -> str:
  """Names the checkpoint's own fields where they differ from the config's."""
  return common.field_hint(lambda: infer_fields(state_dict), FIELDS, _get(config_model),
                           "model")


def check_tree(tree: dict, config_model, source: str) -> dict:
  """`tree` (e.g. read back from an .npz), checked to have the converted
  tree's keys and shapes."""
  want = traverse_util.flatten_dict(abstract_state(config_model), sep="/")
  got = traverse_util.flatten_dict(tree, sep="/")
  for key, leaf in want.items():
    if key not in got:
      raise torch_file.WeightFileError(f"{source}: missing {key!r}")
    if tuple(np.shape(got[key])) != tuple(leaf.shape):
      raise torch_file.WeightFileError(f"{source}: {key!r} has shape "
                                       f"{tuple(np.shape(got[key]))}, expected {leaf.shape}")
  for key in got:
    if key not in want:
      raise torch_file.WeightFileError(f"{source}: unexpected {key!r}")
  return tree


def load(path: str, config_model) -> dict:
  """The converted tree from an official checkpoint (`.pth`, its `model` entry
  or a bare state dict) or from the `.npz` this module writes."""
  if path.endswith(".npz"):
    return check_tree(common.read_tree(path), config_model, path)
  return convert(torch_file.load_state_dict(path, key="model"), config_model, path)


def config_overrides(fields: dict) -> list[str]:
  return [f"--config.model.{name}={fields[name]}" for name in FIELDS] + [
      "--config.model.dilation='(False, False, False)'"]


def main(argv=None):
  def arguments(parser):
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True)

  def run(args):
    state_dict = torch_file.load_state_dict(args.checkpoint, key="model")
    fields = infer_fields(state_dict, args.checkpoint)
    out = torch_file.write_npz(convert(state_dict, fields, args.checkpoint), args.out)
    return common.overrides_text(out, "the matching architecture", config_overrides(fields))

  common.command(__doc__, argv, arguments, run)


if __name__ == "__main__":
  main()
