"""LPIPS (VGG16 trunk + linear heads), with weights from a local file.

Its parameters come from an .npz (`sgc_jax.convert.lpips` writes one from the
published PyTorch weights, `load_params` reads it); nothing is downloaded.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

# VGG16 "features" convolutions, grouped by the ReLU after which LPIPS taps.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# ImageNet statistics in [-1, 1] units, as the reference's ScalingLayer.
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class LPIPS(nn.Module):
  """Perceptual distance of two [-1, 1] image batches -> [N]."""

  @nn.compact
  def __call__(self, x, y):
    convs = [[nn.Conv(channels, (3, 3), padding=1, name=f"vgg_{s}_{i}")
              for i, channels in enumerate(stage)] for s, stage in enumerate(VGG16_STAGES)]

    def features(image):
      h = (image - _SHIFT) / _SCALE
      taps = []
      for s, stage in enumerate(convs):
        if s:
          h = nn.max_pool(h, (2, 2), (2, 2))
        for conv in stage:
          h = nn.relu(conv(h))
        taps.append(h)
      return taps

    distance = 0.0
    for s, (fx, fy) in enumerate(zip(features(x), features(y))):
      # The lpips package's normalize_tensor, x / (||x|| + 1e-10), not ops.vectors.
      fx = fx * jnp.reciprocal(jnp.sqrt(jnp.sum(fx * fx, -1, keepdims=True)) + 1e-10)
      fy = fy * jnp.reciprocal(jnp.sqrt(jnp.sum(fy * fy, -1, keepdims=True)) + 1e-10)
      head = nn.Conv(1, (1, 1), use_bias=False, name=f"lin_{s}")((fx - fy) ** 2)
      distance = distance + head.mean(axis=(1, 2, 3))
    return distance
