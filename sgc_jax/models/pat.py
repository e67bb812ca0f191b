"""PAT's networks (arXiv 2412.14145, as docs/design.md#pat defines it; no official code):
pyramid tokenization of a frozen backbone's features, a pixel branch and a
semantic branch.

    backbone maps --adapter_l--> z_l [B, H/s_l, W/s_l, dim]   one per stride s_l
    z_l --codebook_l--> q_l (straight-through), indices_l
    bottom-up composition:  c_0 = q_0,  c_l = q_l + down_l(c_{l-1})
    pixel branch (top-down visualisation): from c_top, upsample x2 and add the
        lateral of each finer c_l (an FPN); every level also draws its own
        picture at its stride (`to_rgb_l`, trained on the image area-averaged to
        that size), and the finest continues to the full-size image
    semantic branch: every q_l resampled to the finest stride, concatenated,
        fused and projected to the text-embedding space (unit vectors)

The adapter resamples its backbone map to its level's grid (bilinear up,
antialiased down: fixed, as a simple ViT pyramid resamples one map), then
learns a projection. The strides double from level to level.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgc_jax.models.codebook import Codebook, CodebookConfig
from sgc_jax.models.vqgan import ResnetBlock, Upsample, _conv, _norm
from sgc_jax.ops.vectors import divide_by_norm


@dataclasses.dataclass(frozen=True)
class PATConfig:
  image_size: int = 64
  strides: tuple[int, ...] = (4, 8, 16)  # finest first, doubling
  dim: int = 64  # every level's token (and code) dimension
  codebooks: tuple[CodebookConfig, ...] = ()  # one per level
  decoder_ch: int = 128  # the top-down path's width
  upsample_ch: tuple[int, ...] = (64, 32)  # the stages from the finest stride to pixels
  fuse_ch: int = 128  # the semantic branch's width
  text_dim: int = 64
  dtype: str = "float32"  # compute dtype; parameters stay float32

  def grid(self, level: int) -> int:
    return self.image_size // self.strides[level]

  @property
  def num_levels(self) -> int:
    return len(self.strides)

  def validate(self) -> None:
    """ValueError naming a bad field."""
    s = self.strides
    if not s or any(b != 2 * a for a, b in zip(s, s[1:])) or s[0] & (s[0] - 1):
      raise ValueError(f"model.strides={s}: powers of two, finest first, each twice the last")
    if self.image_size % s[-1]:
      raise ValueError(f"model.strides={s}: the image size {self.image_size} is not "
                       f"divisible by the coarsest stride {s[-1]}")
    if len(self.codebooks) != len(s):
      raise ValueError(f"model.num_codes: {len(self.codebooks)} codebooks for {len(s)} levels")
    if len(self.upsample_ch) != int(math.log2(s[0])):
      raise ValueError(f"model.upsample_ch={self.upsample_ch}: one width per x2 stage from "
                       f"stride {s[0]} to pixels ({int(math.log2(s[0]))})")
    for name in ("dim", "decoder_ch", "fuse_ch"):
      if getattr(self, name) % 32:
        raise ValueError(f"model.{name}={getattr(self, name)}: a multiple of 32 (GroupNorm "
                         "with 32 groups)")
    if any(ch % 32 for ch in self.upsample_ch):
      raise ValueError(f"model.upsample_ch={self.upsample_ch}: multiples of 32")
    for codebook in self.codebooks:
      codebook.validate()


class LevelAdapter(nn.Module):
  """A backbone map -> the level's tokens z [B, g, g, dim] (float32); `grid`
  (rows, columns) for images of another shape than the training square."""
  dim: int
  grid: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, features, grid: tuple[int, int] | None = None):
    b, _, _, d = features.shape
    rows, columns = grid or (self.grid, self.grid)
    x = jax.image.resize(features.astype(jnp.float32), (b, rows, columns, d),
                         "linear", antialias=True)
    # No bias: the GroupNorm after it would take it away (and its gradient is 0).
    x = nn.Dense(self.dim, use_bias=False, dtype=self.dtype, name="proj")(x)
    x = nn.swish(_norm(self.dtype, "norm")(x))
    return _conv(self.dim, 3, self.dtype, "conv")(x).astype(jnp.float32)


class PixelDecoder(nn.Module):
  """Composed pyramid (finest first) -> (features before the last convolution,
  each level's own picture, finest first)."""
  config: PATConfig

  @nn.compact
  def __call__(self, composed: Sequence[jax.Array]):
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    top = len(composed) - 1
    h = _conv(c.decoder_ch, 3, dtype, "conv_in")(composed[top].astype(dtype))
    h = ResnetBlock(c.decoder_ch, 0.0, dtype, name=f"level_{top}_block")(h)
    pictures = [None] * len(composed)
    for level in range(top, -1, -1):
      if level < top:
        h = Upsample(dtype, name=f"level_{level}_upsample")(h) + _conv(
            c.decoder_ch, 1, dtype, f"level_{level}_lateral")(composed[level].astype(dtype))
        h = ResnetBlock(c.decoder_ch, 0.0, dtype, name=f"level_{level}_block")(h)
      pictures[level] = _conv(3, 3, dtype, f"level_{level}_to_rgb")(
          nn.swish(_norm(dtype, f"level_{level}_norm")(h))).astype(jnp.float32)
    for stage, ch in enumerate(c.upsample_ch):
      h = Upsample(dtype, name=f"up_{stage}_upsample")(h)
      h = ResnetBlock(ch, 0.0, dtype, name=f"up_{stage}_block")(h)
    return nn.swish(_norm(dtype, "norm_out")(h)), tuple(pictures)


class SemanticHead(nn.Module):
  """Code embeddings of every level -> unit vectors [B, g_0, g_0, text_dim]."""
  config: PATConfig

  @nn.compact
  def __call__(self, quantized: Sequence[jax.Array]):
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    rows, columns = quantized[0].shape[1:3]
    # Coarse codes repeat over the finer grid (each covers that block of it).
    maps = [jnp.repeat(jnp.repeat(q, rows // q.shape[1], 1), columns // q.shape[2], 2)
            for q in quantized]
    # No biases before the GroupNorms: they would take them away.
    x = nn.Dense(c.fuse_ch, use_bias=False, dtype=dtype, name="fuse")(
        jnp.concatenate(maps, -1).astype(dtype))
    x = nn.swish(_norm(dtype, "norm1")(x))
    x = _conv(c.fuse_ch, 3, dtype, "conv", use_bias=False)(x)
    x = nn.swish(_norm(dtype, "norm2")(x))
    x = nn.Dense(c.text_dim, dtype=dtype, name="to_text")(x).astype(jnp.float32)
    return divide_by_norm(x)


class PAT(nn.Module):
  """Backbone maps -> tokens of every level, reconstructions, semantic embeddings.

  `maps`: the backbone's pyramid (one map, or one per level: level l reads
  maps[l]). Token grids are grouped [S, M, D] for the codebooks as
  SGC-VQGAN's (S = `token_groups`, the batch shards)."""
  config: PATConfig
  token_groups: int = 1

  def setup(self):
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    self.adapters = [LevelAdapter(c.dim, c.grid(l), dtype, name=f"adapter_{l}")
                     for l in range(c.num_levels)]
    self.codebooks = [Codebook(c.codebooks[l], name=f"codebook_{l}")
                      for l in range(c.num_levels)]
    self.compose = [_conv(c.dim, 3, dtype, f"compose_{l}", stride=2, padding=1)
                    for l in range(1, c.num_levels)]
    self.decoder = PixelDecoder(c)
    self.conv_out = _conv(3, 3, dtype)
    self.semantic_head = SemanticHead(c)

  def tokens(self, maps: Sequence[jax.Array],
             image_shape: tuple[int, int] | None = None) -> list[jax.Array]:
    """Every level's tokens; `image_shape` (height, width) of the images the
    maps are of, where it is not the training square."""
    strides = self.config.strides
    return [adapter(maps[l if len(maps) > 1 else 0],
                    None if image_shape is None else
                    (image_shape[0] // strides[l], image_shape[1] // strides[l]))
            for l, adapter in enumerate(self.adapters)]

  def quantize(self, zs, labels=None, weight=None, train: bool = False):
    """Tokens of every level, labels [B, g_l, g_l] per level (sgc) and example
    weights [B] -> (q per level, indices per level, losses, metrics); a level's
    losses and metrics are named with its index."""
    qs, indices, losses, metrics = [], [], {}, {}
    for level, (z, codebook) in enumerate(zip(zs, self.codebooks)):
      shape = z.shape
      token_weight = None if weight is None else jnp.broadcast_to(
          weight[:, None, None], shape[:3]).astype(jnp.float32)
      q, index, level_losses, level_metrics = codebook(
          self._grouped(z), None if labels is None else self._grouped(labels[level]),
          None if token_weight is None else self._grouped(token_weight), train)
      qs.append(q.reshape(shape))
      indices.append(index.reshape(shape[:3]))
      losses.update({f"{k}_{level}": v for k, v in level_losses.items()})
      metrics.update({f"{k}_{level}": v for k, v in level_metrics.items()})
    return qs, indices, losses, metrics

  def _grouped(self, x):
    return x.reshape((self.token_groups, -1) + x.shape[3:])

  def composed(self, qs):
    """Bottom-up composition: each level with the finer levels folded in."""
    out = [qs[0]]
    for level in range(1, len(qs)):
      out.append(qs[level] + self.compose[level - 1](
          out[-1].astype(jnp.dtype(self.config.dtype))).astype(jnp.float32))
    return out

  def decode_features(self, qs):
    """(features before the last layer, each level's picture)."""
    return self.decoder(self.composed(qs))

  def last_layer(self, features):
    return self.conv_out(features).astype(jnp.float32)

  def semantic(self, qs):
    return self.semantic_head(qs)

  def __call__(self, maps, labels=None, weight=None, train: bool = False):
    zs = self.tokens(maps)
    qs, indices, losses, metrics = self.quantize(zs, labels, weight, train)
    features, pictures = self.decode_features(qs)
    return {"reconstruction": self.last_layer(features), "features": features,
            "pictures": pictures, "semantic": self.semantic(qs), "indices": indices,
            "losses": losses, "metrics": metrics}

  def nearest(self, maps, image_shape: tuple[int, int] | None = None):
    """Inference: every level's nearest codes (over all K, no grouping)."""
    return tuple(codebook.nearest(z) for codebook, z in
                 zip(self.codebooks, self.tokens(maps, image_shape)))

  def lookup(self, indices):
    return [codebook.lookup(i) for codebook, i in zip(self.codebooks, indices)]

  def decode(self, indices):
    """Indices of every level -> (image, each level's picture)."""
    features, pictures = self.decode_features(self.lookup(indices))
    return self.last_layer(features), pictures

  def codes(self, level: int):
    return self.codebooks[level].codes()
