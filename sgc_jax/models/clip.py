"""OpenAI's CLIP with a Vision Transformer image tower (openai/CLIP `model.py`,
Radford et al., arXiv 2103.00020) in NHWC, for PAT's frozen backbone and its
open-vocabulary text embeddings.

The image tower returns what dense prediction needs, not only CLIP's image
embedding:

    {"blocks":          tuple of [B, h, w, width]  the patch tokens (class token
                                                   removed) after the blocks
                                                   listed in `blocks`, 1-based:
                                                   (3, 6, 9, 12) = the outputs of
                                                   the 3rd, 6th, 9th and 12th;
     "dense":           [B, h, w, embed_dim]       per-patch features in the
                                                   joint image-text space;
     "image_embedding": [B, embed_dim]             CLIP's `encode_image`}

with (h, w) = (H, W) / patch_size. "dense" is, with `dense="maskclip"`, the
MaskCLIP features (Zhou, Loy and Dai, "Extract Free Dense Labels from CLIP",
ECCV 2022): in the last block only the value path is kept, v = the value third
of `in_proj` applied to ln_1 of the block's input, then `out_proj`, with no
q·k attention (which mixes every patch with the class token's global view), no
residual and no MLP; then ln_post and proj as for the class token. With
`dense="tokens"` it is the final patch tokens through ln_post and proj, the
naive reading, for comparison.

What is the reference's (CLIP has no dropout; inference = training):
  * a convolution with kernel = stride = patch_size and no bias (`conv1`); the
    class embedding is prepended, the positional embedding added, then
    `ln_pre`;
  * residual attention blocks, x + attn(ln_1(x)), then x + mlp(ln_2(x));
    LayerNorm eps 1e-5 (torch's default; CLIP's LayerNorm subclass only
    computes in float32);
  * attention is torch's `nn.MultiheadAttention`: one `in_proj` to 3·width
    whose thirds are q, k and v, each split into heads, softmax(q·kᵀ ·
    head_dim^-0.5 + mask), then `out_proj`; heads = width / 64 as CLIP builds
    them;
  * MLP: c_fc to 4·width, QuickGELU x·sigmoid(1.702·x), c_proj;
  * `ln_post` and `proj` ([width, embed_dim], a matrix, no bias) on the class
    token give the image embedding.
The text tower: token embedding plus positional embedding, the same blocks
with a causal mask (token i sees tokens 0..i), `ln_final`, and the features at
the end-of-text token, found as the argmax of the ids (the end-of-text token
has the vocabulary's largest id), times `text_projection`. `logit_scale` is
kept as a parameter (the log of the logits' temperature inverse).

Inputs are RGB images normalised with CLIP's MEAN and STD (below), and token
ids from `sgc_jax.models.clip_tokenizer`. Ids may be shorter than the context
length: with the causal mask, the features up to the end-of-text token do not
depend on what follows it, so the first L positions give the same embedding.

Other image sizes. The positional embedding is stored for the training grid g
x g (g = image_size / patch_size). For an h x w patch grid the patch positions
(not the class token's) are resampled bicubically as open_clip's
`resize_pos_embed` does (`F.interpolate(size=(h, w), mode="bicubic",
align_corners=False)`): with a target size, PyTorch maps output i to input (i
+ 0.5) · g / h - 0.5, i.e. a scale of exactly h / g, which
`sgc_jax.models.vit.bicubic_matrix(g, h, h / g)` reproduces (PyTorch's A =
-0.75 kernel, taps clamped to the border). Image sizes must be multiples of
the patch size.

Initialisation follows CLIP's: the embeddings, class embedding and the
projections normal with CLIP's stds; the text blocks as CLIP's
`initialize_parameters`, the image blocks at torch's module defaults (CLIP
leaves them there): xavier-uniform `in_proj`, zero attention biases,
U(±1/√fan_in) Linear weights and biases. Params are float32; `dtype` is the
compute dtype (softmax and LayerNorm statistics run in float32).

Parameter names follow CLIP's state dict (`sgc_jax.convert.clip` converts):
  visual/conv1/kernel                       visual.conv1.weight (OIHW -> HWIO)
  visual/class_embedding, positional_embedding, proj   (as they are)
  visual/ln_pre/scale, bias                 visual.ln_pre.weight, .bias
  visual/resblocks_0/attn/in_proj/kernel    visual.transformer.resblocks.0.attn.in_proj_weight
                                            ([3·width, width] -> [width, 3·width])
  visual/resblocks_0/attn/in_proj/bias      ...attn.in_proj_bias
  visual/resblocks_0/attn/out_proj/kernel   ...attn.out_proj.weight (transposed), .bias
  visual/resblocks_0/mlp/c_fc/kernel        ...mlp.c_fc.weight (transposed); c_proj alike
  text/token_embedding/embedding            token_embedding.weight
  text/positional_embedding, text_projection   (as they are)
  text/resblocks_0/...                      transformer.resblocks.0....
  text/ln_final/scale, bias                 ln_final.weight, .bias
  logit_scale                               logit_scale
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgc_jax.models.vit import bicubic_matrix

# CLIP's image normalisation (clip.py `_transform`), RGB in [0, 1].
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
LAYER_NORM_EPS = 1e-5
# CLIP's head width: heads = width // 64 in both towers of the released models.
HEAD_WIDTH = 64
# What the image tower's "dense" output is (see the module docstring).
DENSE_MODES = ("maskclip", "tokens")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """A CLIP ViT's sizes, named as CLIP's `build_model` infers them."""
  vision_width: int
  vision_layers: int
  vision_heads: int
  patch_size: int
  image_size: int
  embed_dim: int
  context_length: int
  vocab_size: int
  text_width: int
  text_heads: int
  text_layers: int

  def __post_init__(self):
    if (self.vision_width % self.vision_heads or self.text_width % self.text_heads or
        self.image_size % self.patch_size or min(dataclasses.astuple(self)) < 1):
      raise ValueError(f"CLIPConfig: {self}: every size must be positive, the widths "
                       "multiples of their head counts, and image_size one of patch_size")


def _released(vision_width, vision_layers, patch_size, image_size, embed_dim, text_width,
              text_layers=12):
  return CLIPConfig(vision_width=vision_width, vision_layers=vision_layers,
                    vision_heads=vision_width // HEAD_WIDTH, patch_size=patch_size,
                    image_size=image_size, embed_dim=embed_dim, context_length=77,
                    vocab_size=49408, text_width=text_width,
                    text_heads=text_width // HEAD_WIDTH, text_layers=text_layers)


# OpenAI's released ViT CLIPs (clip.py `_MODELS`), as their state dicts size them.
ARCHITECTURES: dict[str, CLIPConfig] = {
    "ViT-B/32": _released(768, 12, 32, 224, 512, 512),
    "ViT-B/16": _released(768, 12, 16, 224, 512, 512),
    "ViT-L/14": _released(1024, 24, 14, 224, 768, 768),
    "ViT-L/14@336px": _released(1024, 24, 14, 336, 768, 768),
}

_ZEROS = nn.initializers.zeros


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def quick_gelu(x: jax.Array) -> jax.Array:
  """CLIP's GELU approximation, x·sigmoid(1.702·x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


@dataclasses.dataclass(frozen=True)
class BlockInit:
  """The initial normal std of a block's matrices; None keeps torch's module
  default (all of them in the image tower). Biases always keep torch's."""
  in_proj: float | None = None
  out_proj: float | None = None
  c_fc: float | None = None
  c_proj: float | None = None

  @classmethod
  def clip_text(cls, width: int, layers: int) -> "BlockInit":
    """CLIP's `initialize_parameters` for the text transformer's blocks."""
    projection = width ** -0.5 * (2 * layers) ** -0.5
    return cls(width ** -0.5, projection, (2 * width) ** -0.5, projection)


def _linear(features: int, fan_in: int, dtype, name: str, std: float | None,
            zero_bias: bool = False) -> nn.Dense:
  """A torch Linear: U(±1/√fan_in) weight unless a normal std is given, and
  U(±1/√fan_in) bias unless zero (MultiheadAttention zeroes its out_proj's)."""

  def uniform(key, shape, dtype=jnp.float32):
    bound = 1 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.Dense(features, dtype=dtype, kernel_init=uniform if std is None else _normal(std),
                  bias_init=_ZEROS if zero_bias else uniform, name=name)


class MultiheadAttention(nn.Module):
  """torch's `nn.MultiheadAttention` on [B, N, D] (batch first), self-attention
  only: -> (the attention's output, and with `value_path` the value path
  out_proj(v) per token, else None)."""
  num_heads: int
  init: BlockInit = BlockInit()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               value_path: bool = False) -> tuple[jax.Array, jax.Array | None]:
    batch, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    in_init = (nn.initializers.xavier_uniform() if self.init.in_proj is None
               else _normal(self.init.in_proj))
    qkv = nn.Dense(3 * dim, dtype=self.dtype, kernel_init=in_init, bias_init=_ZEROS,
                   name="in_proj")(x)
    q, k, v = (part.reshape(batch, tokens, self.num_heads, head_dim)
               for part in jnp.split(qkv, 3, axis=-1))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim ** -0.5
    if mask is not None:
      logits = jnp.where(mask, logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, dim)
    out_proj = _linear(dim, dim, self.dtype, "out_proj", self.init.out_proj, zero_bias=True)
    values = out_proj(v.reshape(batch, tokens, dim)) if value_path else None
    return out_proj(out), values


class Mlp(nn.Module):
  """c_fc -> QuickGELU -> c_proj, back to the input width."""
  init: BlockInit = BlockInit()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = quick_gelu(_linear(4 * width, width, self.dtype, "c_fc", self.init.c_fc)(x))
    return _linear(width, 4 * width, self.dtype, "c_proj", self.init.c_proj)(h)


class ResidualAttentionBlock(nn.Module):
  """CLIP's pre-norm block on [B, N, D] -> (output, and with `value_path` the
  MaskCLIP value path out_proj(v(ln_1(x))), else None)."""
  num_heads: int
  init: BlockInit = BlockInit()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               value_path: bool = False) -> tuple[jax.Array, jax.Array | None]:
    y, values = MultiheadAttention(self.num_heads, self.init, self.dtype, name="attn")(
        _layer_norm(self.dtype, "ln_1")(x), mask, value_path)
    x = x + y
    x = x + Mlp(self.init, self.dtype, name="mlp")(_layer_norm(self.dtype, "ln_2")(x))
    return x, values


def resize_positions(patch_positions: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """The trained g x g patch positional embedding [g, g, D] for an h x w grid
  [h, w, D]: bicubic with `size=(h, w)` (see the module docstring)."""
  trained = patch_positions.shape[0]
  if tuple(grid) == (trained, trained):
    return patch_positions
  rows, cols = (bicubic_matrix(trained, n, n / trained) for n in grid)
  return jnp.einsum("ip,jq,pqd->ijd", rows.astype(np.float32), cols.astype(np.float32),
                    patch_positions, precision=jax.lax.Precision.HIGHEST)


class VisionTransformer(nn.Module):
  """images [B, H, W, 3] (CLIP-normalised, H and W multiples of patch_size) ->
  {"blocks", "dense", "image_embedding"} (see the module docstring).

  `image_size` is the training resolution, which sizes the positional
  embedding; `blocks` the 1-based block counts whose outputs "blocks" holds.
  """
  width: int
  layers: int
  heads: int
  patch_size: int
  image_size: int
  embed_dim: int
  blocks: tuple[int, ...] = ()
  dense: str = "maskclip"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, Any]:
    p, width = self.patch_size, self.width
    if self.dense not in DENSE_MODES:
      raise ValueError(f"VisionTransformer: dense={self.dense!r}, not one of {DENSE_MODES}")
    if not all(1 <= b <= self.layers for b in self.blocks):
      raise ValueError(f"VisionTransformer: blocks {self.blocks} must be block counts in "
                       f"1..{self.layers}")
    batch, height, image_width, _ = images.shape
    if height % p or image_width % p:
      raise ValueError(f"VisionTransformer: images of {height}x{image_width} pixels; height "
                       f"and width must be multiples of the patch size {p}")
    grid = (height // p, image_width // p)
    trained = self.image_size // p
    scale = width ** -0.5

    x = nn.Conv(width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                dtype=self.dtype,
                kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                name="conv1")(images.astype(self.dtype))
    class_embedding = self.param("class_embedding", _normal(scale), (width,))
    positions = self.param("positional_embedding", _normal(scale),
                           (1 + trained * trained, width))
    patch_positions = resize_positions(positions[1:].reshape(trained, trained, width), grid)
    x = jnp.concatenate([jnp.broadcast_to(class_embedding, (batch, 1, width)).astype(self.dtype),
                         x.reshape(batch, -1, width)], axis=1)
    x = x + jnp.concatenate([positions[:1], patch_positions.reshape(-1, width)]).astype(
        self.dtype)
    x = _layer_norm(self.dtype, "ln_pre")(x)

    def patch_map(tokens):
      return tokens[:, 1:].reshape(batch, *grid, tokens.shape[-1])

    outputs = {}
    for i in range(self.layers):
      last = i == self.layers - 1
      x, values = ResidualAttentionBlock(self.heads, dtype=self.dtype, name=f"resblocks_{i}")(
          x, value_path=last and self.dense == "maskclip")
      if i + 1 in self.blocks:
        outputs[i + 1] = patch_map(x)
    ln_post = _layer_norm(self.dtype, "ln_post")
    proj = self.param("proj", _normal(scale), (width, self.embed_dim)).astype(self.dtype)
    dense = values if self.dense == "maskclip" else x
    return {"blocks": tuple(outputs[b] for b in self.blocks),
            "dense": patch_map(ln_post(dense) @ proj),
            "image_embedding": ln_post(x[:, 0]) @ proj}


class TextTransformer(nn.Module):
  """ids [N, L] (L <= context_length, each row with its end-of-text token, the
  vocabulary's largest id) -> text embeddings [N, embed_dim]: CLIP's
  `encode_text`."""
  width: int
  layers: int
  heads: int
  context_length: int
  vocab_size: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    count, length = ids.shape
    if length > self.context_length:
      raise ValueError(f"TextTransformer: {length} tokens per text, more than the context "
                       f"length {self.context_length}")
    x = nn.Embed(self.vocab_size, self.width, embedding_init=_normal(0.02), dtype=self.dtype,
                 name="token_embedding")(ids)
    positions = self.param("positional_embedding", _normal(0.01),
                           (self.context_length, self.width))
    x = x + positions[:length].astype(self.dtype)
    causal = jnp.tril(jnp.ones((length, length), bool))
    init = BlockInit.clip_text(self.width, self.layers)
    for i in range(self.layers):
      x, _ = ResidualAttentionBlock(self.heads, init, self.dtype, name=f"resblocks_{i}")(
          x, causal)
    x = _layer_norm(self.dtype, "ln_final")(x)
    projection = self.param("text_projection", _normal(self.width ** -0.5),
                            (self.width, self.embed_dim))
    end_of_text = jnp.argmax(ids, axis=-1)
    return x[jnp.arange(count), end_of_text] @ projection.astype(self.dtype)


def vision_tower(config: CLIPConfig, **fields) -> VisionTransformer:
  """The image tower of `config`; `fields` set the others (blocks, dense, dtype).
  Its params are the CLIP params' "visual" subtree."""
  return VisionTransformer(width=config.vision_width, layers=config.vision_layers,
                           heads=config.vision_heads, patch_size=config.patch_size,
                           image_size=config.image_size, embed_dim=config.embed_dim, **fields)


def text_tower(config: CLIPConfig, **fields) -> TextTransformer:
  """The text tower of `config` (`fields`: dtype). Its params are the CLIP
  params' "text" subtree."""
  return TextTransformer(width=config.text_width, layers=config.text_layers,
                         heads=config.text_heads, context_length=config.context_length,
                         vocab_size=config.vocab_size, embed_dim=config.embed_dim, **fields)


class CLIP(nn.Module):
  """Both towers and `logit_scale`: params {"visual", "text", "logit_scale"}.

  `__call__(images, ids)` gives CLIP's logits per image [B, N] (cosine
  similarities times exp(logit_scale)); `encode_image` and `encode_text` the
  towers' outputs. Each tower also runs alone on its subtree, e.g.
  `vision_tower(config).apply({"params": params["visual"]}, images)`.
  """
  config: CLIPConfig
  blocks: tuple[int, ...] = ()
  dense: str = "maskclip"
  dtype: Any = jnp.float32

  def setup(self):
    self.visual = vision_tower(self.config, blocks=self.blocks, dense=self.dense,
                               dtype=self.dtype)
    self.text = text_tower(self.config, dtype=self.dtype)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(1 / 0.07)),
                                  ())

  def encode_image(self, images: jax.Array) -> dict[str, Any]:
    return self.visual(images)

  def encode_text(self, ids: jax.Array) -> jax.Array:
    return self.text(ids)

  def __call__(self, images: jax.Array, ids: jax.Array) -> jax.Array:
    image = _unit(self.visual(images)["image_embedding"])
    text = _unit(self.text(ids))
    return jnp.exp(self.logit_scale) * image.astype(jnp.float32) @ text.astype(jnp.float32).T


def _unit(x: jax.Array) -> jax.Array:
  # CLIP's own x / x.norm(dim=-1) (no floor), not ops.vectors: reproduces OpenAI's model.py.
  return x / jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True).astype(x.dtype)


def clip_model(name: str, **fields) -> CLIP:
  """A released CLIP by name ("ViT-B/16", ...); `fields` set blocks, dense, dtype."""
  if name not in ARCHITECTURES:
    raise ValueError(f"clip_model({name!r}): one of {', '.join(ARCHITECTURES)}")
  return CLIP(ARCHITECTURES[name], **fields)
