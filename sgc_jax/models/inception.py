"""Inception-v3 as used for FID (the TF 2015 graph that pytorch-fid ports):
[-1, 1] images -> 2048-d pool features.

Differences from torchvision's Inception-v3 that FID depends on: average pools
in the A, C and first E blocks exclude padding, and the last E block's pool
branch takes a max. Names follow pytorch-fid's state dict
(`Mixed_5b.branch1x1.conv.weight`, ...) so that `sgc_jax.convert.inception`
maps it one to one. Parameters are frozen inference weights.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

INPUT_SIZE = 299
FEATURES = 2048


class BasicConv(nn.Module):
  """Convolution without bias, batch norm (ε = 0.001, running statistics), ReLU."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, (self.stride, self.stride),
                padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
    bn = {name: self.param(f"bn_{name}", nn.initializers.zeros, (self.features,))
          for name in ("scale", "bias", "mean", "var")}
    x = (x - bn["mean"]) * jax.lax.rsqrt(bn["var"] + 1e-3) * bn["scale"] + bn["bias"]
    return nn.relu(x)


def _avg_pool(x):
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2, padding="VALID"):
  return nn.max_pool(x, (3, 3), (stride, stride), padding=padding)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    pool = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, pool], -1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
    dbl = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    dbl = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(dbl)
    return jnp.concatenate([b3, dbl, _max_pool(x)], -1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row, column = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, **row, name="branch7x7_2")(b7)
    b7 = BasicConv(192, **column, name="branch7x7_3")(b7)
    dbl = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    dbl = BasicConv(c7, **column, name="branch7x7dbl_2")(dbl)
    dbl = BasicConv(c7, **row, name="branch7x7dbl_3")(dbl)
    dbl = BasicConv(c7, **column, name="branch7x7dbl_4")(dbl)
    dbl = BasicConv(192, **row, name="branch7x7dbl_5")(dbl)
    pool = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b7, dbl, pool], -1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], -1)


class InceptionE(nn.Module):
  max_pool_branch: bool  # the last block (pytorch-fid's FIDInceptionE_2)

  @nn.compact
  def __call__(self, x):
    def split(h, prefix):
      return [BasicConv(384, (1, 3), padding=(0, 1), name=f"{prefix}a")(h),
              BasicConv(384, (3, 1), padding=(1, 0), name=f"{prefix}b")(h)]

    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = split(BasicConv(384, (1, 1), name="branch3x3_1")(x), "branch3x3_2")
    dbl = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    dbl = split(BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl),
                "branch3x3dbl_3")
    pooled = _max_pool(x, 1, ((1, 1), (1, 1))) if self.max_pool_branch else _avg_pool(x)
    pool = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1] + b3 + dbl + [pool], -1)


class InceptionV3(nn.Module):
  """[-1, 1] images [N, H, W, 3] (any size; resized bilinearly to 299) -> [N, 2048]."""

  @nn.compact
  def __call__(self, images):
    n = images.shape[0]
    x = jax.image.resize(images.astype(jnp.float32), (n, INPUT_SIZE, INPUT_SIZE, 3),
                         "bilinear", antialias=False)
    x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                           ("Mixed_6e", 192)):
      x = InceptionC(channels, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(False, name="Mixed_7b")(x)
    x = InceptionE(True, name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


def basic_conv_names(params: dict) -> Sequence[tuple[str, ...]]:
  """Paths (module names) of every BasicConv in an InceptionV3 parameter tree."""
  paths = []

  def walk(tree, path):
    if "conv" in tree and "bn_scale" in tree:
      paths.append(path)
      return
    for name, subtree in tree.items():
      walk(subtree, path + (name,))

  walk(params, ())
  return paths
