"""A taming-transformers VQGAN checkpoint -> sgc_jax parameters of the same
architecture in `vq` mode (the reference VQGAN: `dim_det = 0`).

    python -m sgc_jax.convert.taming last.ckpt --resolution 256 --out vqgan.npz

prints the `--config.model...` overrides that give the matching architecture;
training starts from the result with `--config.init_from=vqgan.npz` (or the
.ckpt itself). The discriminator and the LPIPS copy in `loss.*` are not used.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import traverse_util

from sgc_jax.convert import common, torch_file
from sgc_jax.models.codebook import CodebookConfig
from sgc_jax.models.vqgan import ModelConfig, SGCVQGAN

_IGNORED_PREFIXES = ("loss.",)


def infer_model_config(state_dict: dict[str, np.ndarray], resolution: int,
                       source: str = "state dict") -> ModelConfig:
  """The architecture a taming state dict was trained with (input `resolution`
  is not stored in it); errors begin with `source`."""
  def fail(problem):
    raise torch_file.WeightFileError(f"{source}: not a taming VQGAN state dict: {problem}")

  def shape(name, ndim):
    if name not in state_dict:
      fail(f"no {name!r}")
    if state_dict[name].ndim != ndim or not all(state_dict[name].shape):
      fail(f"{name!r} has shape {state_dict[name].shape}")
    return state_dict[name].shape

  ch = shape("encoder.conv_in.weight", 4)[0]
  levels = sorted({int(m.group(1)) for k in state_dict
                   if (m := re.match(r"encoder\.down\.(\d{1,4})\.block\.0\.conv1\.weight", k))})
  if levels != list(range(len(levels))):
    fail(f"encoder levels {levels[:8]}, not 0, 1, ...")
  widths = [shape(f"encoder.down.{i}.block.0.conv1.weight", 4)[0] for i in levels]
  if any(width % ch for width in widths):
    fail(f"encoder widths {widths} are not multiples of {ch}")
  ch_mult = tuple(width // ch for width in widths)
  num_res_blocks = len({k.split(".")[4] for k in state_dict
                        if k.startswith("encoder.down.0.block.")})
  attn_resolutions = tuple(sorted(
      {resolution // 2 ** i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state_dict},
      reverse=True))
  z_channels = shape("post_quant_conv.weight", 4)[0]
  if shape("encoder.conv_out.weight", 4)[0] != z_channels:
    fail("encoder.conv_out has 2 x z_channels outputs (double_z): a KL autoencoder")
  num_codes, embed_dim = shape("quantize.embedding.weight", 2)
  return ModelConfig(
      resolution=resolution, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
      attn_resolutions=attn_resolutions, z_channels=z_channels,
      codebook=CodebookConfig(mode="vq", num_codes=num_codes, dim_sem=embed_dim, dim_det=0))


def torch_name(path: tuple[str, ...]) -> str:
  """Our parameter path -> the taming state dict key."""
  *modules, leaf = path
  if modules == ["codebook"]:
    return "quantize.embedding.weight"
  if modules[:2] == ["neck", "quant_conv"]:
    modules = ["quant_conv"]
  elif modules[:2] == ["decoder", "post_quant_conv"]:
    modules = ["post_quant_conv"]
  elif modules == ["conv_out"]:
    modules = ["decoder", "conv_out"]
  parts = []
  for name in modules:
    name = re.sub(r"^(down|up)_(\d+)_(block|attn)_(\d+)$", r"\1.\2.\3.\4", name)
    name = re.sub(r"^(down|up)_(\d+)_(downsample|upsample)$", r"\1.\2.\3", name)
    name = re.sub(r"^mid_(block|attn)_(\d)$", r"mid.\1_\2", name)
    parts.append(name)
  return ".".join(parts + [{"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]])


def convert(state_dict: dict[str, np.ndarray], model_config: ModelConfig,
            source: str = "state dict") -> dict:
  """Parameters of `SGCVQGAN(model_config)` (vq, dim_det = 0) from the state dict."""
  if model_config.codebook.mode != "vq" or model_config.codebook.dim_det:
    raise torch_file.WeightFileError(
        "taming weights need model.codebook.mode='vq' and dim_det=0 (the reference VQGAN)")
  size = model_config.resolution
  abstract = jax.eval_shape(SGCVQGAN(model_config).init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, size, size, 3), np.float32))["params"]
  flat, used = {}, set()
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    name = torch_name(path)
    used.add(name)
    if path[-1] == "kernel":
      kh, kw, cin, cout = leaf.shape
      flat[path] = torch_file.conv_kernel(
          torch_file.require(state_dict, name, (cout, cin, kh, kw), source))
    else:
      flat[path] = torch_file.require(state_dict, name, leaf.shape, source)
  unknown = [k for k in state_dict
             if k not in used and not k.startswith(_IGNORED_PREFIXES)]
  if unknown:
    raise torch_file.WeightFileError(
        f"{source}: tensors this architecture does not have: {unknown[:5]} "
        "(compare the model config with `infer_model_config`)")
  return traverse_util.unflatten_dict(flat)


def load(path: str, model_config: ModelConfig) -> dict:
  """Parameters from a taming .ckpt or from the .npz `main` writes."""
  if path.endswith(".npz"):
    return common.read_tree(path)
  return convert(torch_file.load_state_dict(path), model_config, path)


def config_overrides(model_config: ModelConfig) -> list[str]:
  c = model_config
  return [f"--config.model.ch={c.ch}", f"--config.model.ch_mult='{c.ch_mult}'",
          f"--config.model.num_res_blocks={c.num_res_blocks}",
          f"--config.model.attn_resolutions='{c.attn_resolutions}'",
          f"--config.model.z_channels={c.z_channels}",
          "--config.model.codebook.mode=vq", "--config.model.codebook.dim_det=0",
          f"--config.model.codebook.dim_sem={c.codebook.dim_sem}",
          f"--config.model.codebook.num_codes={c.codebook.num_codes}"]


def main(argv=None):
  def arguments(parser):
    parser.add_argument("checkpoint")
    parser.add_argument("--resolution", type=int, required=True,
                        help="training image size (not stored in the checkpoint)")
    parser.add_argument("--out", required=True)

  def run(args):
    state_dict = torch_file.load_state_dict(args.checkpoint)
    model_config = infer_model_config(state_dict, args.resolution, args.checkpoint)
    try:
      model_config.validate()
    except ValueError as error:
      raise torch_file.WeightFileError(f"{args.checkpoint}: {error}") from None
    out = torch_file.write_npz(convert(state_dict, model_config, args.checkpoint), args.out)
    return common.overrides_text(out, "train from it with", config_overrides(model_config))

  common.command(__doc__, argv, arguments, run)


if __name__ == "__main__":
  main()
