"""SGC-VQGAN at real scale: COCO panoptic at 256 px, the reference VQGAN's base
architecture (taming-transformers' f16 ImageNet model: ch 128, ch_mult
(1,1,2,2,4), 2 res blocks, attention at 16x16, z 256) and K = 16384. For a GPU
or a TPU pod slice; COCO must be prepared offline under data.data_dir.

    python -m sgc_jax.main --config=configs/sgc_coco.py:quantizer=sgc \
        --workdir=gs://BUCKET/sgc_coco --config.data.data_dir=gs://BUCKET/tfds \
        --config.loss.lpips_weights=/path/lpips_vgg.npz --mode=train
"""

from sgc_jax import config_lib
from sgc_jax.configs import sgc_scenes


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, quantizer="sgc", batch_size=64)
  config = sgc_scenes.get_config(f"quantizer={arg.quantizer},size=256")
  config.data.name = "coco/2017_panoptic"
  config.data.batch_size = arg.batch_size
  config.data.worker_count = 8
  config.data.crop.min_area = 0.25
  config.total_steps = 400_000
  config.log_every = 100
  config.evals.reconstruction.every = 10_000  # and codebook, segmentation
  config.ema_decay = 0.999
  config.model.update(dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                           attn_resolutions=(16,), z_channels=256,
                           detail_levels=(1, 2), dtype="bfloat16"))
  config.model.codebook.update(dict(num_codes=16384, dim_sem=128, dim_det=128,
                                    chunk_size=4096, min_codes=16))
  config.loss.update(dict(disc_weight=0.75, disc_start=20_000))
  config.optimizer.update(dict(learning_rate=1e-4, disc_learning_rate=1e-4,
                               warmup_steps=5_000, final_lr_fraction=0.1))
  config.checkpoint.update(dict(every=5_000, keep=3))
  config.evals.pictures.every = 5_000
  return config
