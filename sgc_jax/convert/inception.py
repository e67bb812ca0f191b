"""pytorch-fid's Inception-v3 weights (`pt_inception-2015-12-05-*.pth`) ->
`sgc_jax.models.inception.InceptionV3` parameters.

    python -m sgc_jax.convert.inception WEIGHTS.pth --out inception_fid.npz
"""

from __future__ import annotations

import jax
import numpy as np

from sgc_jax.convert import common, torch_file
from sgc_jax.models import inception

# Tensors in the file that FID does not use.
_UNUSED_PREFIXES = ("fc.", "AuxLogits.")


def abstract_params() -> dict:
  variables = jax.eval_shape(inception.InceptionV3().init, jax.random.PRNGKey(0),
                             jax.ShapeDtypeStruct((1, 75, 75, 3), np.float32))
  return variables["params"]


def convert(state_dict: dict[str, np.ndarray], source: str = "state dict") -> dict:
  """Every BasicConv's conv weight (OIHW -> HWIO) and batch norm; errors name
  a missing or misshapen tensor."""
  abstract = abstract_params()
  params = {}
  for path in inception.basic_conv_names(abstract):
    node = abstract
    for name in path:
      node = node[name]
    prefix = ".".join(path)
    kh, kw, cin, cout = node["conv"]["kernel"].shape
    weight = torch_file.require(state_dict, f"{prefix}.conv.weight", (cout, cin, kh, kw), source)
    leaf = {"conv": {"kernel": torch_file.conv_kernel(weight)}}
    for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                         ("var", "running_var")):
      leaf[f"bn_{ours}"] = torch_file.require(state_dict, f"{prefix}.bn.{theirs}", (cout,), source)
    target = params
    for name in path[:-1]:
      target = target.setdefault(name, {})
    target[path[-1]] = leaf
  used = {f"{'.'.join(p)}.{suffix}" for p in inception.basic_conv_names(abstract)
          for suffix in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                         "bn.running_var", "bn.num_batches_tracked")}
  unknown = [k for k in state_dict if k not in used and not k.startswith(_UNUSED_PREFIXES)]
  if unknown:
    raise torch_file.WeightFileError(
        f"{source}: tensors that are not pytorch-fid Inception-v3's: {unknown[:5]}")
  return params


def load(path: str) -> dict:
  """InceptionV3 parameters from pytorch-fid's .pth or from this module's .npz."""
  if path.endswith(".npz"):
    return common.read_tree(path)
  return convert(torch_file.load_state_dict(path), path)


def main(argv=None):
  def arguments(parser):
    parser.add_argument("weights")
    parser.add_argument("--out", required=True)

  def run(args):
    return f"wrote {torch_file.write_npz(load(args.weights), args.out)}"

  common.command(__doc__, argv, arguments, run)


if __name__ == "__main__":
  main()
