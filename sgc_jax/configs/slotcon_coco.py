"""SlotCon's official COCO recipe (scripts/slotcon_coco_r50_800ep.sh): ResNet-50,
K = 256 prototypes, heads 4096 -> 256, batch 512, LARS (base lr 1.0 x batch /
256, weight decay 1e-5), 5 warm-up epochs from lr/100, cosine to 1e-6, 800
epochs of COCO train2017 (118,287 images: 184,823 steps), 224 px crops of scale
(0.08, 1), the official photometric views, ImageNet normalisation. Unlabelled:
the TFDS catalog's `coco/2017` images, prepared offline under data.data_dir.
For a TPU pod slice or GPUs:

    python -m sgc_jax.main --config=configs/slotcon_coco.py --workdir=gs://BUCKET/slotcon \
        --config.data.data_dir=gs://BUCKET/tfds --mode=train
"""

from sgc_jax.configs import slotcon_scenes

TRAIN_IMAGES = 118_287  # COCO train2017


def get_config(arg=None):
  del arg
  config = slotcon_scenes.get_config("size=224")
  config.data.update(dict(name="coco/2017", batch_size=512, worker_count=8))
  epochs, warmup_epochs = 800, 5
  steps_per_epoch = TRAIN_IMAGES / config.data.batch_size
  config.total_steps = int(steps_per_epoch * epochs)
  config.log_every = 100
  config.model.update(dict(depth=50, dilation=(False, False, False), dim_hidden=4096,
                           dim_out=256, num_prototypes=256, dtype="bfloat16",
                           # The slots that win a pixel, over the global batch; the
                           # step reports any it drops (slots_over_capacity).
                           contrast_capacity=16_384))
  lr = 1.0 * config.data.batch_size / 256
  config.optimizer.update(dict(learning_rate=lr, warmup_steps=int(steps_per_epoch * warmup_epochs),
                               final_lr_fraction=1e-6 / lr))
  config.checkpoint.update(dict(every=5_000, keep=3))
  # No labels: the prototypes' use, and pictures of them.
  del config.evals.segmentation
  config.evals.codebook.every = 10_000
  config.evals.pictures.every = 10_000
  return config
