"""The reference point of the train benchmark: taming-transformers' VQGAN at
resolution 64, ch 64, ch_mult (1,2,2,4), 1 res block, attention at 8x8, z 64,
K 1024; L1 + codebook loss, Adam, one view, no GAN, no perceptual loss.

    python -m sgc_jax.tools.bench train --config=configs/bench_taming64.py:quantizer=vq --batch_size=8
"""

from sgc_jax import config_lib

from sgc_jax.configs import sgc_scenes


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, quantizer="vq")
  config = sgc_scenes.get_config(f"quantizer={arg.quantizer},size=64")
  config.data.num_views = 1
  config.model.update(dict(ch=64, ch_mult=(1, 2, 2, 4), num_res_blocks=1,
                           attn_resolutions=(8,), z_channels=64))
  # z = [z_sem ; z_det] of 32 + 32 = the reference's embed_dim 64.
  config.model.codebook.update(dict(num_codes=1024, dim_sem=32, dim_det=32))
  return config
