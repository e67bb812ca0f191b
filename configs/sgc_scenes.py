"""SGC-VQGAN on the embedded, rendered `sgc_scenes` data set.

    python -m sgc_jax.main --config=configs/sgc_scenes.py:quantizer=sgc,size=64 \
        --workdir=workdir/scenes --mode=train [--config.data.batch_size=16 ...]

Args (`key=value,...`): quantizer (vq | ema | sgc), size (64 | 128 | 256),
clips (train on `clips64`: the two views are two frames of a clip).
"""

import ml_collections
from ml_collections import config_dict

from sgc_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, quantizer="sgc", size=64, clips=False)
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "sgc_scenes/clips64" if arg.clips else f"sgc_scenes/res{arg.size}"
  config.data.data_dir = config_dict.placeholder(str)  # None: TFDS's default
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = arg.size
  config.data.batch_size = 16  # global, over all processes and devices
  config.data.num_views = 2  # two views for Consistent Semantic Learning
  config.data.worker_count = 2  # grain worker processes per data shard
  config.data.num_shards = config_dict.placeholder(int)  # None: one per process
  config.data.crop = ml_collections.ConfigDict(dict(
      min_area=0.35, max_area=1.0, min_aspect=3 / 4, max_aspect=4 / 3,
      flip=True, min_overlap=0.3))

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  config.preview = ml_collections.ConfigDict(dict(num_examples=8))
  return config
