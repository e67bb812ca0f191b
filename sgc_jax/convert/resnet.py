"""A torchvision-named ResNet state dict (torchvision, SlotCon's encoders) ->
`sgc_jax.models.resnet.ResNet` variables.

SlotCon checkpoints hold `{"model": state_dict}` with both encoders under
`module.encoder_q.` / `module.encoder_k.` (the teacher, `encoder_k`, is the one
the official transfer scripts export); its "backbone only" files hold the bare
names. So, for example:

    state_dict = torch_file.load_state_dict("ckpt_epoch_800.pth", key="model")
    variables = convert(state_dict, 50, prefix="module.encoder_k.")

Running statistics are copied as they are: torch's `running_var` is an
estimate made from unbiased batch variances and flax's `var` from biased ones,
but both are the running variance eval mode normalises with, so eval outputs
match torch's.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import traverse_util

from sgc_jax.convert import torch_file
from sgc_jax.models.resnet import ARCHITECTURES, ResNet

# torchvision's classifier and the heads PixPro's ResNet can carry, none of
# which SlotCon's encoders (head_type='early_return') use.
_IGNORED = ("fc.", "fc1.", "fc2.")
_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
           ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}


def torch_name(collection: str, path: tuple[str, ...]) -> str:
  """A variable's path in `collection` -> its torchvision state dict key."""
  *modules, leaf = path
  return ".".join([m.replace("_", ".") for m in modules] + [_LEAVES[collection, leaf]])


def infer_depth(state_dict: dict[str, np.ndarray], prefix: str = "") -> int:
  """The depth (18, 34, 50, 101, 152) whose layout the state dict has."""
  counts = []
  for layer in range(1, 5):
    pattern = re.compile(rf"{re.escape(prefix)}layer{layer}\.(\d{{1,4}})\.conv1\.weight")
    counts.append(len({m.group(1) for k in state_dict if (m := pattern.fullmatch(k))}))
  bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
  for depth, (block, layers) in ARCHITECTURES.items():
    if tuple(counts) == layers and (block.expansion == 4) == bottleneck:
      return depth
  raise torch_file.WeightFileError(
      f"no ResNet has {counts} {'bottleneck' if bottleneck else 'basic'} blocks "
      f"under the prefix {prefix!r}")


def convert(state_dict: dict[str, np.ndarray], depth: int, prefix: str = "",
            source: str = "state dict") -> dict:
  """{"params", "batch_stats"} of `ResNet(depth)` from the keys under `prefix`.

  Every tensor of the architecture must be there with torch's shape; any other
  key under `prefix` is an error, except `*.num_batches_tracked` and `fc*.`.
  Errors are `WeightFileError` (a ValueError), one line naming the key.
  """
  if depth not in ARCHITECTURES:
    raise ValueError(f"ResNet depth {depth!r}: one of {sorted(ARCHITECTURES)}")
  if not any(k.startswith(prefix) for k in state_dict):
    first = ", ".join(repr(k[:80]) for k in list(state_dict)[:3])
    raise torch_file.WeightFileError(
        f"{source}: no tensors under the prefix {prefix!r} (keys begin {first}, ...)")
  # The variables' shapes do not depend on the input size or on dilation.
  abstract = jax.eval_shape(ResNet(depth).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  variables, used = {}, set()
  for collection in ("params", "batch_stats"):
    flat = {}
    for path, leaf in traverse_util.flatten_dict(abstract[collection]).items():
      name = prefix + torch_name(collection, path)
      used.add(name)
      shape = leaf.shape
      if path[-1] == "kernel":
        kh, kw, cin, cout = shape
        shape = (cout, cin, kh, kw)
      try:
        value = torch_file.require(state_dict, name, shape, source)
      except torch_file.WeightFileError as error:
        raise torch_file.WeightFileError(f"{error}{_hint(state_dict, prefix, depth)}") from None
      flat[path] = torch_file.conv_kernel(value) if path[-1] == "kernel" else value
    variables[collection] = traverse_util.unflatten_dict(flat)
  unexpected = [k for k in state_dict
                if k.startswith(prefix) and k not in used
                and not k.endswith(".num_batches_tracked")
                and not k[len(prefix):].startswith(_IGNORED)]
  if unexpected:
    raise torch_file.WeightFileError(
        f"{source}: unexpected tensor {unexpected[0]!r}, not in a ResNet-{depth} "
        f"({len(unexpected)} such under the prefix {prefix!r}){_hint(state_dict, prefix, depth)}")
  return variables


def _hint(state_dict, prefix, depth):
  """Names the depth the state dict looks like, when that is another one."""
  try:
    found = infer_depth(state_dict, prefix)
  except torch_file.WeightFileError:
    return ""
  return f"; its blocks are a ResNet-{found}'s" if found != depth else ""
