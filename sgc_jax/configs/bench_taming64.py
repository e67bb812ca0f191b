"""The reference point of the train benchmark: taming-transformers' VQGAN at
resolution 64, ch 64, ch_mult (1,2,2,4), 1 res block, attention at 8x8, z 64,
K 1024, trained as taming trains it: L1 + codebook terms, Adam at a constant
rate without clipping, one view, no GAN, no perceptual loss.

    python -m sgc_jax.tools.bench train --config=configs/bench_taming64.py:quantizer=vq --batch_size=8

Args: quantizer (vq: taming's own model, a single z of 64 channels; sgc: the
method's [z_sem ; z_det] = 32 + 32 pyramid, its EMA codebook and semantic loss).
"""

from sgc_jax import config_lib

from sgc_jax.configs import sgc_scenes

# taming's optimizer schedule: Adam at a constant rate, no clipping.
CONSTANT_RATE = dict(warmup_steps=0, warmup_start_fraction=1.0, final_lr_fraction=1.0,
                     grad_clip=0.0)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, quantizer="vq")
  config = sgc_scenes.get_config(f"quantizer={arg.quantizer},size=64")
  config.data.num_views = 1
  config.model.update(dict(ch=64, ch_mult=(1, 2, 2, 4), num_res_blocks=1,
                           attn_resolutions=(8,), z_channels=64))
  dim_sem, dim_det = (64, 0) if arg.quantizer == "vq" else (32, 32)
  config.model.codebook.update(dict(num_codes=1024, dim_sem=dim_sem, dim_det=dim_det))
  config.optimizer.update(CONSTANT_RATE)
  return config
