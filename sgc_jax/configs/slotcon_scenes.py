"""SlotCon on the embedded `sgc_scenes` data set, a CPU recipe (minutes): the
official method and losses with a ResNet-18 whose last stage is dilated (stride
16, a 4 x 4 grid at 64 px... see `size`), smaller heads and fewer prototypes.
The labels of sgc_scenes are not used to train; the evaluators read them.

    python -m sgc_jax.main --config=configs/slotcon_scenes.py --workdir=workdir/slotcon \
        --mode=train --config.data.data_dir=data

Args: size (64 | 128), steps, batch_size (the learning rate scales with it, as
the official recipe's), data (scenes | camvid: see configs/data_sets.py).
"""

import ml_collections
from ml_collections import config_dict

from sgc_jax import config_lib
from sgc_jax.configs import data_sets, sgc_scenes


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size=64, steps=300, batch_size=16, data="scenes")
  config = data_sets.use(sgc_scenes.get_config(f"size={arg.size}"), arg.data)
  config.method = "slotcon"
  config.data.num_views = 2
  config.data.normalization = "imagenet"
  # The official colour jitter, grayscale, blur and solarize, per view.
  config.data.photometric = "slotcon"
  config.data.batch_size = arg.batch_size
  # The official crops: random resized, scale (min_scale 0.08, 1), flips; the
  # overlap of the two views is what the group loss aligns.
  config.data.crop.update(dict(min_area=0.08, max_area=1.0, min_aspect=3 / 4,
                               max_aspect=4 / 3, flip=True, min_overlap=0.0))
  config.total_steps = arg.steps
  config.log_every = 10
  config.init_from = config_dict.placeholder(str)
  config.model = ml_collections.ConfigDict(dict(
      depth=18, dilation=(False, True, True),  # stride 8: an 8 x 8 grid at 64 px
      dim_hidden=512, dim_out=128, num_prototypes=32,  # official: 4096, 256, 256
      teacher_momentum=0.99, teacher_temp=0.07, student_temp=0.1,
      center_momentum=0.9, group_loss_weight=0.5, contrast_temperature=0.2,
      # 0: the slot contrast over every slot of the global batch, O((B K)^2)
      # memory; C > 0: over the first C valid ones (as the official order),
      # for large B K. `slots_over_capacity` counts what a capacity drops.
      contrast_capacity=0, dtype="float32"))
  # LARS as the official recipe (lr = base_lr 1.0 x batch / 256, weight decay
  # 1e-5, momentum 0.9, warm-up from lr/100, cosine to 1e-6).
  lr = 1.0 * config.data.batch_size / 256
  config.optimizer = ml_collections.ConfigDict(dict(
      name="lars", learning_rate=lr, weight_decay=1e-5, momentum=0.9,
      trust_coefficient=1e-3, warmup_steps=max(1, arg.steps // 20),
      warmup_start_fraction=0.01, final_lr_fraction=1e-6 / lr, grad_clip=0.0))
  return without_reconstruction(config)


def without_reconstruction(config):
  """sgc_scenes' config for a method that neither reconstructs nor trains on
  labels: no VQGAN losses or discriminator, no reconstruction metrics, the
  semantic evaluators every 500 steps on labels of token majority > 0.5."""
  del config.loss, config.disc, config.ema_decay
  del config.evals.reconstruction
  config.evals.codebook.every = 500  # and segmentation (a shared `every`)
  del config.evals.segmentation.label_threshold
  config.evals.segmentation.label_threshold = 0.5
  config.evals.pictures.every = 500
  return config
