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
  config.method = "sgc_vqgan"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "sgc_scenes/clips64" if arg.clips else f"sgc_scenes/res{arg.size}"
  config.data.data_dir = config_dict.placeholder(str)  # None: TFDS's default
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = arg.size
  # (height, width): evaluate whole frames, the largest centred box of this
  # aspect resized to it (a 480x360 photo at (96, 128)); None: centred
  # squares of image_size.
  config.data.eval_frame = config_dict.placeholder(tuple)
  config.data.batch_size = 8  # global, over all processes and devices
  config.data.num_views = 2  # two views for Consistent Semantic Learning
  config.data.normalization = "symmetric"  # pixels to [-1, 1]; or imagenet, clip
  config.data.worker_count = 2  # grain worker processes per data shard
  config.data.num_shards = config_dict.placeholder(int)  # None: one per process
  config.data.crop = ml_collections.ConfigDict(dict(
      min_area=0.35, max_area=1.0, min_aspect=3 / 4, max_aspect=4 / 3,
      flip=True, min_overlap=0.3))

  # Sized for the quick start: about 5 minutes of training on a 2-core CPU
  # (2.1 s per step at batch 8 x 2 views in the quick start, on 2 cores).
  # Train longer for better tokens: --config.total_steps=3000.
  config.total_steps = 120
  config.log_every = 10
  config.ema_decay = 0.0  # > 0: keep an EMA of the generator's parameters
  # A taming-transformers VQGAN .ckpt (or its converted .npz) to start the
  # generator from; needs quantizer=vq and the same architecture.
  config.init_from = config_dict.placeholder(str)

  config.model = ml_collections.ConfigDict(dict(
      resolution=arg.size, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
      attn_resolutions=(), z_channels=64, dropout=0.0, detail_levels=(1,),
      top_down=True, dtype="float32"))
  config.model.codebook = ml_collections.ConfigDict(dict(
      mode=arg.quantizer, num_codes=256, dim_sem=16, dim_det=16, w_sem=1.0,
      w_det=1.0, distance="l2", beta=0.25, decay=0.99, epsilon=1e-5,
      chunk_size=1024, dead_after_tokens=64.0, dead_fraction=0.03, restart_noise=0.01,
      semantic_weight=0.1, semantic_temperature=1.0, consistency_weight=0.05,
      consistency_temperature=1.0, consistency_sharpen=0.5,
      alpha=0.5, min_codes=2, label_threshold=0.5,
      semantic_map="nearest_code",  # or "posterior": argmax_c p(c|z)
      # The semantic loss's class weights: "none" (the method's), or
      # "median_frequency": median(f) / f_c, rare classes weigh more.
      class_balance="none"))

  config.loss = ml_collections.ConfigDict(dict(
      reconstruction="l1", perceptual_weight=1.0,
      lpips_weights=config_dict.placeholder(str),  # .npz; None: perceptual off
      disc_weight=0.1, disc_start=100_000, max_adaptive_weight=1e4))
  config.disc = ml_collections.ConfigDict(dict(ch=64, num_layers=3))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-3, disc_learning_rate=2e-3, b1=0.5, b2=0.9, eps=1e-8,
      warmup_steps=20, final_lr_fraction=0.05, grad_clip=1.0))

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  config.sharding = ml_collections.ConfigDict(dict(
      rules=((".*codebook.*", "replicate"), (".*kernel", "fsdp"),
             (".*embedding", "fsdp")),
      min_size=2**16,
      # Activations by logical axis names: images and tokens are split over the
      # batch axes; channels could go to `model`.
      activation_axes=(("batch", ("data", "fsdp")), ("height", None), ("width", None),
                       ("channels", None), ("embed", "model"))))
  config.checkpoint = ml_collections.ConfigDict(dict(
      every=500, keep=3,
      restore_step=config_dict.placeholder(int),  # None: the newest that restores
      # A step whose update exceeds this times the parameters' norm stops the
      # run unsaved (healthy steps: about the learning rate).
      max_update_ratio=1.0))
  config.preview = ml_collections.ConfigDict(dict(num_examples=8))  # --mode=preview

  # Evaluators over the validation split, every `every` steps and at the end
  # (all of them, with every metric and picture, in --mode=eval).
  # The three metric evaluators share one `every`: setting one sets all.
  every = config_dict.FieldReference(1000)
  config.evals = ml_collections.ConfigDict()
  config.evals.reconstruction = dict(
      type="reconstruction", every=every,
      # LPIPS and rFID (--mode=eval) need local weight files, converted by
      # sgc_jax.convert.lpips / .inception; without them they are absent.
      lpips_weights=config_dict.placeholder(str),  # None: config.loss.lpips_weights
      inception_weights=config_dict.placeholder(str))
  # train_images: in --mode=eval, codebook usage over that many training images too.
  config.evals.codebook = dict(type="codebook", every=every, train_images=0)
  config.evals.segmentation = dict(
      type="segmentation", every=every,
      label_threshold=config.model.codebook.get_ref("label_threshold"),
      probe_images=2000,  # training images whose tokens train the linear probe
      probe_steps=500, probe_in_training=False,
      feature_tokens=100_000,  # of a method's dense features: what k-means and probe fit
      kmeans_restarts=10,  # their k-means: the best of this many seedings (by inertia)
      feature_centring=False)  # their k-means on the features minus their mean
  config.evals.pictures = dict(type="pictures", every=60, num_examples=8)
  return config
