"""DINO's Vision Transformers (facebookresearch/dino `vision_transformer.py`,
Caron et al., arXiv 2104.14294) in NHWC, for their dense features.

Self-supervised ViT features, the patch tokens and above all the last block's
attention keys, are what unsupervised segmentation methods build their
affinities on; so the model returns those, not DINO's class-token output only:

    {"tokens":      [B, h, w, D]  final-normed patch tokens (class token removed),
     "class_token": [B, D]        final-normed class token (DINO's `forward`),
     "keys":        [B, h, w, D]  the last block's keys, k of the qkv projection
                                  of its norm1 input, heads concatenated,
     "blocks":      tuple of [B, h, w, D]: the patch tokens after each block that
                                  `blocks` counts (1-based; un-normed), a
                                  pyramid's source (PAT)}

with (h, w) = (H, W) / patch_size. What is the reference's, at inference
(dropout and drop-path are identities there, and DINO's ViTs have
`num_classes=0`, so no head):
  * patch embedding: a convolution with kernel = stride = patch_size; the class
    token is prepended, then the position embedding added;
  * pre-norm blocks, x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps
    1e-6 (DINO's vit_* pass `partial(nn.LayerNorm, eps=1e-6)`);
  * attention: one Linear to 3·D reshaped to [B, N, 3, heads, D / heads] (so q,
    k and v are the thirds of its output, each split into heads), softmax of
    q·kᵀ · (D / heads)^-0.5, then the `proj` Linear; qkv with a bias;
  * MLP: fc1 to mlp_ratio·D, exact (erf) GELU, fc2;
  * a final LayerNorm `norm` over all tokens.
Initialisation follows it too: Linear weights, `cls_token` and `pos_embed`
trunc_normal(std 0.02) cut at ±2 absolute, Linear biases 0, LayerNorms 1 and 0,
and torch's default for the patch convolution (kaiming-uniform with a = √5,
i.e. U(±1/√fan_in) for weight and bias). Params are float32; `dtype` is the
compute dtype (the attention softmax runs in float32).

Other input sizes. The position embedding is stored for the training grid,
g x g (g = image_size / patch_size, 224 / p for the released weights). DINO's
`interpolate_pos_encoding` uses it unchanged when the input has g² patches and
H == W, i.e. exactly the g x g grid; otherwise it resamples the g x g patch
positions (not the class token's) to the input's h x w grid with
`F.interpolate(mode="bicubic", scale_factor=((h + 0.1) / g, (w + 0.1) / g))`.
With a scale factor and no `recompute_scale_factor`, PyTorch (since 1.6; DINO
was released on 1.7) makes the output floor(g · scale) = h (w likewise; the 0.1
guards that floor, and DINO asserts it) and maps output pixel i to input
coordinate (i + 0.5) / scale - 0.5, with the given scale, not g / h: so the 0.1
also shifts every sample slightly. The bicubic kernel is PyTorch's (A = -0.75,
align_corners=False) with source indices clamped to the border. Sizes are
static, so `resize_pos_embed` builds that resampling as two interpolation
matrices in NumPy at trace time and applies them with one einsum. (DINO's HEAD
passes `scale_factor`; later DINOv2 code passes `size` instead, which maps by
g / h: a different result.)

Parameter names follow DINO's state dict keys (`sgc_jax.convert.dino` converts):
a flax path joined with "." with `blocks_i` read `blocks.i`, e.g.
  cls_token, pos_embed             cls_token, pos_embed
  patch_embed/proj/kernel, bias    patch_embed.proj.weight (OIHW -> HWIO), .bias
  blocks_0/norm1/scale, bias       blocks.0.norm1.weight, .bias
  blocks_0/attn/qkv/kernel         blocks.0.attn.qkv.weight ([out, in] -> [in, out])
  blocks_0/mlp/fc1/kernel          blocks.0.mlp.fc1.weight
  norm/scale                       norm.weight
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# DINO's vit_small and vit_base (`vision_transformer.py`).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True),
}
# torch.hub names of the released DINO ViTs (`hubconf.py`) -> (architecture, patch size).
HUB_MODELS = {"dino_vits16": ("vit_small", 16), "dino_vits8": ("vit_small", 8),
              "dino_vitb16": ("vit_base", 16), "dino_vitb8": ("vit_base", 8)}

# DINO's trunc_normal_(std=.02) cuts at ±2 in absolute units (±100 std); jax's
# bounds are in units of std.
_TRUNC_NORMAL = nn.initializers.truncated_normal(stddev=0.02, lower=-100.0, upper=100.0)
# PyTorch's cubic convolution coefficient.
_CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """[..., 4]: PyTorch's bicubic weights of the taps at -1, 0, 1, 2 from a point
  t in [0, 1] past tap 0."""
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(size_in: int, size_out: int, scale: float) -> np.ndarray:
  """[size_out, size_in]: PyTorch's bicubic resampling along one axis
  (`F.interpolate(mode="bicubic", align_corners=False, scale_factor=scale)`).

  Output i reads the input at (i + 0.5) / scale - 0.5 from its four nearest
  taps; taps past the border are clamped to it, so their weights add up on the
  edge row. As in PyTorch's CPU kernel, the index is capped at size_in - 1 and
  the fraction kept in [0, 1] (neither binds at DINO's scales).
  """
  source = (np.arange(size_out) + 0.5) / scale - 0.5
  index = np.minimum(np.floor(source), size_in - 1)
  fraction = np.clip(source - index, 0.0, 1.0)
  taps = np.clip(index[:, None] + np.arange(-1, 3), 0, size_in - 1).astype(np.int64)
  matrix = np.zeros((size_out, size_in))
  np.add.at(matrix, (np.arange(size_out)[:, None], taps), _cubic_weights(fraction))
  return matrix


def resize_pos_embed(patch_pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """The trained patch position embedding [g, g, D] for an h x w patch grid
  [h, w, D], as DINO's `interpolate_pos_encoding` (see the module docstring)."""
  trained = patch_pos.shape[0]
  if tuple(grid) == (trained, trained):
    return patch_pos
  rows, cols = (bicubic_matrix(trained, n, (n + 0.1) / trained) for n in grid)
  return jnp.einsum("ip,jq,pqd->ijd", rows.astype(np.float32), cols.astype(np.float32),
                    patch_pos, precision=jax.lax.Precision.HIGHEST)


def _dense(features: int, dtype, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=_TRUNC_NORMAL,
                  bias_init=nn.initializers.zeros, name=name)


class PatchEmbed(nn.Module):
  """[B, H, W, 3] -> [B, H / p, W / p, embed_dim]: DINO's `PatchEmbed.proj`."""
  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    p = self.patch_size
    # torch's Conv2d default: U(±1/√fan_in) for the weight and the bias.
    bound = 1 / math.sqrt(3 * p * p)
    return nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                   kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                   bias_init=lambda key, shape, dtype: jax.random.uniform(
                       key, shape, dtype, -bound, bound),
                   name="proj")(images)


class Attention(nn.Module):
  """Multi-head self-attention over [B, N, D] -> (output [B, N, D], keys [B, N, D])."""
  num_heads: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    batch, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = _dense(3 * dim, self.dtype, "qkv", self.qkv_bias)(x)
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, head_dim]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, dim)
    return _dense(dim, self.dtype, "proj")(out), k.reshape(batch, tokens, dim)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2, back to the input width."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.gelu(_dense(self.hidden, self.dtype, "fc1")(x), approximate=False)
    return _dense(x.shape[-1], self.dtype, "fc2")(h)


class Block(nn.Module):
  """A pre-norm transformer block: [B, N, D] -> (output, the attention's keys)."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                             use_fast_variance=False, dtype=self.dtype)
    y, keys = Attention(self.num_heads, self.qkv_bias, self.dtype, name="attn")(
        norm(name="norm1")(x))
    x = x + y
    hidden = int(x.shape[-1] * self.mlp_ratio)
    x = x + Mlp(hidden, self.dtype, name="mlp")(norm(name="norm2")(x))
    return x, keys


class VisionTransformer(nn.Module):
  """images [B, H, W, 3] (ImageNet-normalised, H and W multiples of patch_size)
  -> {"tokens", "class_token", "keys"} (see the module docstring).

  `image_size` is the training resolution: `pos_embed` holds
  (image_size / patch_size)² patch positions (and the class token's).
  """
  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  image_size: int = 224
  dtype: Any = jnp.float32
  blocks: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    p, dim = self.patch_size, self.embed_dim
    if dim % self.num_heads or self.image_size % p or self.depth < 1:
      raise ValueError(f"VisionTransformer: embed_dim {dim} must be a multiple of num_heads "
                       f"{self.num_heads}, image_size {self.image_size} one of patch_size {p}, "
                       f"and depth {self.depth} at least 1")
    batch, height, width, _ = images.shape
    if height % p or width % p:
      raise ValueError(f"VisionTransformer: images of {height}x{width} pixels; height and "
                       f"width must be multiples of the patch size {p}")
    grid = (height // p, width // p)
    trained = self.image_size // p

    x = PatchEmbed(p, dim, self.dtype, name="patch_embed")(images.astype(self.dtype))
    cls_token = self.param("cls_token", _TRUNC_NORMAL, (1, 1, dim))
    pos_embed = self.param("pos_embed", _TRUNC_NORMAL, (1, 1 + trained * trained, dim))
    patch_pos = resize_pos_embed(pos_embed[0, 1:].reshape(trained, trained, dim), grid)
    pos_embed = jnp.concatenate([pos_embed[:, :1], patch_pos.reshape(1, -1, dim)], axis=1)
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, dim)).astype(self.dtype),
                         x.reshape(batch, -1, dim)], axis=1)
    x = x + pos_embed.astype(self.dtype)

    if any(not 1 <= b <= self.depth for b in self.blocks):
      raise ValueError(f"VisionTransformer: blocks {self.blocks} must be in 1..{self.depth}")
    outputs = {}
    for i in range(self.depth):
      x, keys = Block(self.num_heads, self.mlp_ratio, self.qkv_bias, self.layer_norm_eps,
                      self.dtype, name=f"blocks_{i}")(x)
      outputs[i + 1] = x
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, use_fast_variance=False, dtype=self.dtype,
                     name="norm")(x)
    return {"tokens": x[:, 1:].reshape(batch, *grid, dim), "class_token": x[:, 0],
            "keys": keys[:, 1:].reshape(batch, *grid, dim),
            "blocks": tuple(outputs[b][:, 1:].reshape(batch, *grid, dim) for b in self.blocks)}


def dino_vit(name: str, patch_size: int | None = None, **fields) -> VisionTransformer:
  """A DINO ViT by architecture and patch size, `dino_vit("vit_small", 8)`, or
  by torch.hub name, `dino_vit("dino_vits8")`; `fields` override the others
  (e.g. dtype)."""
  if name in HUB_MODELS:
    arch, hub_patch_size = HUB_MODELS[name]
    if patch_size not in (None, hub_patch_size):
      raise ValueError(f"dino_vit: {name} has patches of {hub_patch_size}, not {patch_size}")
    name, patch_size = arch, hub_patch_size
  if name not in ARCHITECTURES or patch_size is None:
    raise ValueError(f"dino_vit({name!r}, {patch_size!r}): one of {', '.join(ARCHITECTURES)} "
                     f"with a patch size, or one of {', '.join(HUB_MODELS)}")
  return VisionTransformer(patch_size=patch_size, **{**ARCHITECTURES[name], **fields})
