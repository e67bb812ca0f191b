"""The published LPIPS weights -> `sgc_jax.models.lpips.LPIPS` parameters.

Two local files: torchvision's VGG16 state dict (`vgg16-397923af.pth`, the
trunk) and the `lpips` package's linear heads (`lpips/weights/v0.1/vgg.pth`).

    python -m sgc_jax.convert.lpips --vgg vgg16-397923af.pth --heads vgg.pth --out lpips.npz
"""

from __future__ import annotations

import numpy as np

from sgc_jax.convert import common, torch_file
from sgc_jax.models.lpips import VGG16_STAGES

# Indices of the convolutions in torchvision's `vgg16().features`: each stage's
# convolutions and ReLUs, then a max pool.
def _vgg_conv_indices() -> list[list[int]]:
  indices, position = [], 0
  for stage in VGG16_STAGES:
    indices.append([position + 2 * i for i in range(len(stage))])
    position += 2 * len(stage) + 1
  return indices


def convert(vgg: dict[str, np.ndarray], heads: dict[str, np.ndarray],
            vgg_source: str = "vgg16", heads_source: str = "lpips heads") -> dict:
  params, cin = {}, 3
  for s, (stage, indices) in enumerate(zip(VGG16_STAGES, _vgg_conv_indices())):
    for i, (cout, index) in enumerate(zip(stage, indices)):
      weight = torch_file.require(vgg, f"features.{index}.weight", (cout, cin, 3, 3), vgg_source)
      bias = torch_file.require(vgg, f"features.{index}.bias", (cout,), vgg_source)
      params[f"vgg_{s}_{i}"] = {"kernel": torch_file.conv_kernel(weight), "bias": bias}
      cin = cout
    weight = torch_file.require(heads, f"lin{s}.model.1.weight", (1, stage[-1], 1, 1),
                                heads_source)
    params[f"lin_{s}"] = {"kernel": torch_file.conv_kernel(weight)}
  return params


def load_params(path: str) -> dict:
  """LPIPS parameters from the .npz that `main` writes (a
  damaged file is a WeightFileError naming it)."""
  return common.read_tree(path)


def main(argv=None):
  def arguments(parser):
    parser.add_argument("--vgg", required=True, help="torchvision VGG16 state dict (.pth)")
    parser.add_argument("--heads", required=True, help="lpips linear heads (vgg.pth)")
    parser.add_argument("--out", required=True)

  def run(args):
    params = convert(torch_file.load_state_dict(args.vgg),
                     torch_file.load_state_dict(args.heads), args.vgg, args.heads)
    return f"wrote {torch_file.write_npz(params, args.out)}"

  common.command(__doc__, argv, arguments, run)


if __name__ == "__main__":
  main()
