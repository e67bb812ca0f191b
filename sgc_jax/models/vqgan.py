"""SGC-VQGAN: a VQGAN encoder that returns its pyramid, a pyramid neck, the
codebook, and a VQGAN decoder with a top-down path.

Block structure and names follow the reference VQGAN (taming-transformers:
`down_{i}_block_{j}`, `mid_attn_1`, `up_{i}_upsample`, ...) so that its
checkpoints map onto these parameters block by block. With `dim_det = 0` the
neck is the reference `quant_conv` and the model is the reference VQGAN.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgc_jax.models import conv
from sgc_jax.models.codebook import Codebook, CodebookConfig
from sgc_jax.models.group_norm import GroupNorm


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  resolution: int = 64
  ch: int = 64
  ch_mult: tuple[int, ...] = (1, 2, 2, 4)
  num_res_blocks: int = 1
  attn_resolutions: tuple[int, ...] = (8,)
  z_channels: int = 64
  dropout: float = 0.0
  detail_levels: tuple[int, ...] = (1,)  # finer levels in z_det: 1 = stride f/2
  top_down: bool = True
  dtype: str = "float32"  # compute dtype; parameters stay float32
  codebook: CodebookConfig = CodebookConfig()

  @property
  def stride(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  @property
  def grid(self) -> int:
    return self.resolution // self.stride

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def validate(self) -> None:
    self.codebook.validate()
    if self.resolution % self.stride:
      raise ValueError(f"model.resolution={self.resolution} is not divisible by the "
                       f"token stride {self.stride}")
    if self.ch % 32 or self.z_channels % 32:
      raise ValueError("model.ch and model.z_channels must be multiples of 32 "
                       "(GroupNorm with 32 groups)")
    if any(level < 1 or level >= len(self.ch_mult) for level in self.detail_levels):
      raise ValueError(f"model.detail_levels={self.detail_levels}: each must be in "
                       f"1..{len(self.ch_mult) - 1}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"model.dtype={self.dtype!r}: float32 or bfloat16")


def _norm(dtype, name=None):
  return GroupNorm(num_groups=32, epsilon=1e-6, dtype=dtype, name=name)


def _conv(features, kernel, dtype, name=None, stride=1, padding=None, use_bias=True,
          conv_general_dilated=conv.conv_general_dilated):
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=pad, dtype=dtype, name=name, use_bias=use_bias,
                 conv_general_dilated=conv_general_dilated)


class ResnetBlock(nn.Module):
  out_channels: int
  dropout: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.swish(_norm(self.dtype, "norm1")(x))
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
    h = nn.swish(_norm(self.dtype, "norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    h = _norm(self.dtype, "norm")(x)
    q = _conv(channels, 1, self.dtype, "q")(h).reshape(batch, -1, channels)
    k = _conv(channels, 1, self.dtype, "k")(h).reshape(batch, -1, channels)
    v = _conv(channels, 1, self.dtype, "v")(h).reshape(batch, -1, channels)
    weights = jnp.einsum("bqc,bkc->bqk", q, k) * (channels ** -0.5)
    weights = jax.nn.softmax(weights.astype(jnp.float32), -1).astype(v.dtype)
    h = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(batch, height, width, channels)
    return x + _conv(channels, 1, self.dtype, "proj_out")(h)


class Downsample(nn.Module):
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    # The reference pads right and bottom only, then a stride-2 3x3 convolution.
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding=0)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 convolution (on CPU computed on the map
  before upsampling: see `conv.upsampled_conv3x3`)."""
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    return _conv(x.shape[-1], 3, self.dtype, "conv",
                 conv_general_dilated=conv.upsampled_conv3x3)(x)


class Encoder(nn.Module):
  """Returns (top, levels): the z_channels map at stride f, and every level's
  features (before its downsampling), finest first."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, train: bool = False):
    c, dtype = self.config, self.config.compute_dtype
    h = _conv(c.ch, 3, dtype, "conv_in")(x.astype(dtype))
    resolution, levels = c.resolution, []
    for i, mult in enumerate(c.ch_mult):
      for j in range(c.num_res_blocks):
        h = ResnetBlock(c.ch * mult, c.dropout, dtype, name=f"down_{i}_block_{j}")(h, train)
        if resolution in c.attn_resolutions:
          h = AttnBlock(dtype, name=f"down_{i}_attn_{j}")(h)
      levels.append(h)
      if i != len(c.ch_mult) - 1:
        h = Downsample(dtype, name=f"down_{i}_downsample")(h)
        resolution //= 2
    h = ResnetBlock(h.shape[-1], c.dropout, dtype, name="mid_block_1")(h, train)
    h = AttnBlock(dtype, name="mid_attn_1")(h)
    h = ResnetBlock(h.shape[-1], c.dropout, dtype, name="mid_block_2")(h, train)
    h = nn.swish(_norm(dtype, "norm_out")(h))
    return _conv(c.z_channels, 3, dtype, "conv_out")(h), levels


def space_to_depth(x, factor: int):
  batch, height, width, channels = x.shape
  x = x.reshape(batch, height // factor, factor, width // factor, factor, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(
      batch, height // factor, width // factor, factor * factor * channels)


def depth_to_space(x, factor: int):
  batch, height, width, channels = x.shape
  out = channels // (factor * factor)
  x = x.reshape(batch, height, width, factor, factor, out)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height * factor, width * factor, out)


class PyramidNeck(nn.Module):
  """Pyramid Feature Learning: z = [z_sem ; z_det] at stride f.

  z_sem projects the top level (semantics); z_det projects finer levels brought
  to stride f by space-to-depth, with the top level as context (details).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, top, levels: Sequence[jax.Array]):
    c, dtype = self.config, self.config.compute_dtype
    z_sem = _conv(c.codebook.dim_sem, 1, dtype, "quant_conv")(top)
    if not c.codebook.dim_det:
      return z_sem
    finer = [space_to_depth(levels[-1 - level], 2 ** level) for level in c.detail_levels]
    z_det = _conv(c.codebook.dim_det, 1, dtype, "detail_conv")(
        jnp.concatenate([top] + finer, -1))
    return jnp.concatenate([z_sem, z_det], -1)


class Decoder(nn.Module):
  """Quantized grid -> features before the last convolution (`conv_out`, kept
  apart so that the adaptive GAN weight can take gradients at it)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, q, train: bool = False):
    c, dtype = self.config, self.config.compute_dtype
    block_in = c.ch * c.ch_mult[-1]
    h = _conv(block_in, 3, dtype, "conv_in")(
        _conv(c.z_channels, 1, dtype, "post_quant_conv")(q.astype(dtype)))
    h = ResnetBlock(block_in, c.dropout, dtype, name="mid_block_1")(h, train)
    h = AttnBlock(dtype, name="mid_attn_1")(h)
    h = ResnetBlock(block_in, c.dropout, dtype, name="mid_block_2")(h, train)
    resolution = c.grid
    for i in reversed(range(len(c.ch_mult))):
      for j in range(c.num_res_blocks + 1):
        h = ResnetBlock(c.ch * c.ch_mult[i], c.dropout, dtype,
                        name=f"up_{i}_block_{j}")(h, train)
        if resolution in c.attn_resolutions:
          h = AttnBlock(dtype, name=f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = Upsample(dtype, name=f"up_{i}_upsample")(h)
        resolution *= 2
        if i == len(c.ch_mult) - 1 and c.top_down and c.codebook.dim_det:
          # Top-down path: the quantized details, unfolded to stride f/2.
          q_det = q[..., c.codebook.dim_sem:].astype(dtype)
          h = h + depth_to_space(
              _conv(4 * h.shape[-1], 1, dtype, "top_down_conv")(q_det), 2)
    return nn.swish(_norm(dtype, "norm_out")(h))


class SGCVQGAN(nn.Module):
  """images [N,H,W,3] in [-1, 1] -> reconstructions, token indices, losses."""
  config: ModelConfig
  token_groups: int = 1  # S: the batch shards (codebook statistics per group)

  def setup(self):
    c = self.config
    self.encoder = Encoder(c)
    self.neck = PyramidNeck(c)
    self.codebook = Codebook(c.codebook)
    self.decoder = Decoder(c)
    self.conv_out = _conv(3, 3, c.compute_dtype)

  def tokens(self, images, train: bool = False):
    """Continuous tokens z [N, g, g, D] (float32)."""
    top, levels = self.encoder(images, train)
    return self.neck(top, levels).astype(jnp.float32)

  def _grouped(self, x):
    return x.reshape((self.token_groups, -1) + x.shape[3:])

  def quantize(self, z, labels=None, weight=None, train: bool = False):
    """z [N,g,g,D], labels [N,g,g], weight [N] -> (q [N,g,g,D], indices [N,g,g], losses, metrics)."""
    shape = z.shape
    token_weight = None if weight is None else jnp.broadcast_to(
        weight[:, None, None], shape[:3]).astype(jnp.float32)
    q, indices, losses, metrics = self.codebook(
        self._grouped(z), None if labels is None else self._grouped(labels),
        None if token_weight is None else self._grouped(token_weight), train)
    return q.reshape(shape), indices.reshape(shape[:3]), losses, metrics

  def decode_features(self, q, train: bool = False):
    return self.decoder(q, train)

  def last_layer(self, features):
    return self.conv_out(features).astype(jnp.float32)

  def __call__(self, images, labels=None, weight=None, train: bool = False):
    z = self.tokens(images, train)
    q, indices, losses, metrics = self.quantize(z, labels, weight, train)
    features = self.decode_features(q, train)
    return {"reconstruction": self.last_layer(features), "features": features,
            "z": z, "indices": indices, "losses": losses, "metrics": metrics}

  def encode_all(self, images):
    """Inference, no mask: the nearest code of every token over all K, its
    class, and the token's argmax_c p(c|z) — each [N, g, g]."""
    return self.quantize_all(self.tokens(images))

  def quantize_all(self, z):
    """`encode_all` of the encoder's tokens z [N, g, g, D]."""
    indices = self.codebook.nearest(z)
    return indices, self.codebook.code_classes(indices), self.codebook.posterior_classes(z)

  def encode(self, images):
    """Indices and the semantic map that `codebook.semantic_map` names."""
    indices, nearest_class, posterior_class = self.encode_all(images)
    if self.config.codebook.semantic_map == "posterior":
      return indices, posterior_class
    return indices, nearest_class

  def decode(self, indices):
    q = self.codebook.lookup(indices)
    return self.last_layer(self.decode_features(q))

  def consistency(self, z_student, z_teacher, valid):
    return self.codebook.consistency(self._grouped(z_student), self._grouped(z_teacher),
                                     self._grouped(valid))
