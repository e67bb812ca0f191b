"""ResNet-18/34/50/101/152 backbones as SlotCon uses them (NHWC).

The official SlotCon (CVMI-Lab/SlotCon `models/resnet.py`, PixPro's copy of
torchvision's ResNet) builds its encoders with `head_type='early_return'`: the
torchvision network (stride on the 3x3 convolution of a bottleneck, 1x1
projection + BN shortcut where the shape changes) without avgpool or fc,
returning the last feature map. Its other changes to torchvision:
  * the last BatchNorm of every residual block (bn2 of a basic block, bn3 of a
    bottleneck; not the shortcut's) starts with gamma 0 (`zero_init_residual`,
    default True here as there);
  * convolutions are N(0, 2 / (k·k·out_channels)), torchvision's kaiming-normal
    fan_out; BatchNorm gamma 1, beta 0.
Every BatchNorm is SyncBatchNorm there; here train mode uses the batch's
statistics, and under `jax.jit` with the batch sharded over a mesh those are the
global batch's. Eval mode uses the running statistics. BatchNorm is torch's:
eps 1e-5, momentum 0.1 (flax momentum 0.9), two-pass variance; flax keeps the
biased batch variance in `var` where torch keeps the unbiased one (a factor
n / (n - 1), n = B·H·W, on the update only).

`replace_stride_with_dilation` is torchvision's: a layer's stride 2 becomes 1
and later 3x3 convolutions are dilated by the accumulated factor; the layer's
first block keeps the previous dilation. Torchvision rejects dilation in basic
blocks; here both 3x3 convolutions of a basic block take the block's dilation.
(The official code has instead `layer4_dilation=2`, `resnet50_16s`, used by no
SlotCon script: it dilates layer4's first block too, and basic blocks ignore it.)

Parameter names map 1:1 to torchvision's state dict keys: a flax path joined
with "." and every "_" in a module name replaced by ".", e.g.
  conv1/kernel                   conv1.weight (OIHW -> HWIO)
  bn1/scale, bn1/bias            bn1.weight, bn1.bias
  layer1_0/conv2/kernel          layer1.0.conv2.weight
  layer2_0/downsample_0/kernel   layer2.0.downsample.0.weight
  layer2_0/downsample_1/scale    layer2.0.downsample.1.weight
and in `batch_stats`, `<bn>/mean`, `<bn>/var` are `<bn>.running_mean`,
`<bn>.running_var` (`sgc_jax.convert.resnet` does the conversion).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgc_jax.models import conv as conv_lib

# torch's normal_(0, sqrt(2 / (k·k·out))): untruncated, fan_out = kh·kw·cout of HWIO.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int = 1, dilation: int = 1, *, dtype,
          name: str) -> nn.Conv:
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
                 use_bias=False, kernel_init=_CONV_INIT, dtype=dtype, name=name,
                 conv_general_dilated=conv_lib.conv_general_dilated)


def _bn(train: bool, *, dtype, name: str, zero: bool = False) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      use_fast_variance=False, dtype=dtype, name=name,
                      scale_init=nn.initializers.zeros if zero else nn.initializers.ones)


class _Block(nn.Module):
  """The fields both residual blocks take."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  zero_init_residual: bool = True
  dtype: Any = jnp.float32


class BasicBlock(_Block):
  """3x3 (stride) -> 3x3, plus the shortcut; `planes` output channels."""
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype)
    out = _conv(self.planes, 3, self.stride, self.dilation, name="conv1", **kw)(x)
    out = nn.relu(_bn(train, name="bn1", **kw)(out))
    out = _conv(self.planes, 3, 1, self.dilation, name="conv2", **kw)(out)
    out = _bn(train, name="bn2", zero=self.zero_init_residual, **kw)(out)
    return nn.relu(out + _shortcut(self, x, train))


class Bottleneck(_Block):
  """1x1 -> 3x3 (stride, dilation) -> 1x1 to 4·planes, plus the shortcut."""
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype)
    out = _conv(self.planes, 1, name="conv1", **kw)(x)
    out = nn.relu(_bn(train, name="bn1", **kw)(out))
    out = _conv(self.planes, 3, self.stride, self.dilation, name="conv2", **kw)(out)
    out = nn.relu(_bn(train, name="bn2", **kw)(out))
    out = _conv(self.planes * 4, 1, name="conv3", **kw)(out)
    out = _bn(train, name="bn3", zero=self.zero_init_residual, **kw)(out)
    return nn.relu(out + _shortcut(self, x, train))


def _shortcut(block, x, train):
  """Identity, or torchvision's `downsample` (1x1 conv with the block's stride, BN)."""
  if not block.downsample:
    return x
  width = block.planes * block.expansion
  x = _conv(width, 1, block.stride, dtype=block.dtype, name="downsample_0")(x)
  return _bn(train, dtype=block.dtype, name="downsample_1")(x)


# depth -> (block, blocks per layer), torchvision's resnet18 ... resnet152.
ARCHITECTURES: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def num_features(depth: int) -> int:
  """Channels of the final feature map: 512 for basic blocks, 2048 for bottlenecks."""
  return 512 * _architecture(depth)[0].expansion


def _architecture(depth):
  if depth not in ARCHITECTURES:
    raise ValueError(f"ResNet depth {depth!r}: one of {sorted(ARCHITECTURES)}")
  return ARCHITECTURES[depth]


class ResNet(nn.Module):
  """x [B, H, W, 3] -> the layer4 feature map [B, H/32, W/32, num_features(depth)]
  (H/16 or H/8 with strides replaced by dilation). Params are float32; `dtype`
  is the compute dtype."""
  depth: int = 50
  replace_stride_with_dilation: Sequence[bool] = (False, False, False)
  zero_init_residual: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    block, layers = _architecture(self.depth)
    dilate = tuple(bool(d) for d in self.replace_stride_with_dilation)
    if len(dilate) != 3:
      raise ValueError(f"replace_stride_with_dilation {self.replace_stride_with_dilation!r}: "
                       "3 flags, for layer2, layer3 and layer4")
    x = _conv(64, 7, 2, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(_bn(train, dtype=self.dtype, name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    in_width, dilation = 64, 1
    for i, (planes, blocks, dilated) in enumerate(zip((64, 128, 256, 512), layers,
                                                      (False,) + dilate)):
      stride, previous_dilation = (1 if i == 0 else 2), dilation
      if dilated:
        dilation, stride = dilation * stride, 1
      for j in range(blocks):
        first = j == 0
        x = block(planes, stride=stride if first else 1,
                  dilation=previous_dilation if first else dilation,
                  downsample=first and (stride != 1 or in_width != planes * block.expansion),
                  zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                  name=f"layer{i + 1}_{j}")(x, train)
        in_width = planes * block.expansion
    return x
