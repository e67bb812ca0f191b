"""The PatchGAN discriminator of the reference VQGAN (pix2pix NLayerDiscriminator)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sgc_jax.models import conv as conv_lib


class PatchDiscriminator(nn.Module):
  """images [N,H,W,3] -> patch logits [N,h,w,1]; BatchNorm as in the reference."""
  ch: int = 64
  num_layers: int = 3
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = jnp.dtype(self.dtype)

    def conv(h, features, stride, name):
      return nn.Conv(features, (4, 4), strides=(stride, stride), padding=1,
                     dtype=dtype, name=name,
                     conv_general_dilated=conv_lib.conv_general_dilated)(h)

    h = nn.leaky_relu(conv(x.astype(dtype), self.ch, 2, "conv_0"), 0.2)
    for n in range(1, self.num_layers + 1):
      stride = 2 if n < self.num_layers else 1
      h = conv(h, self.ch * min(2 ** n, 8), stride, f"conv_{n}")
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype,
                       name=f"norm_{n}")(h)
      h = nn.leaky_relu(h, 0.2)
    return conv(h, 1, 1, "conv_out").astype(jnp.float32)
