"""PAT on the embedded `sgc_scenes` data set, a CPU recipe:

    python -m sgc_jax.main --config=configs/pat_scenes.py --workdir=workdir/pat \
        --mode=train --config.data.data_dir=data

The frozen backbone is a randomly initialised DINO ViT-S/8 (no file: the
project fetches none) whose blocks 4, 8 and 12 feed strides 4, 8 and 16;
`--config.model.backbone.kind=bundle --config.model.backbone.weights=B` takes a
backbone the library trained instead (SlotCon's teacher, SGC-VQGAN's encoder:
one map for every level), `kind=clip` a CLIP checkpoint. No text tower here:
the class embeddings are learned, a closed vocabulary (`text.kind=file` or
`clip` makes it open: then `unseen_classes` may hold classes out).

Args: size (64 | 128), steps, quantizer (ema | sgc | vq), data (scenes |
camvid: see configs/data_sets.py).
"""

import ml_collections
from ml_collections import config_dict

from sgc_jax import config_lib
from sgc_jax.configs import acseg_scenes, data_sets, sgc_scenes


def text_config(kind="learned", dim=64):
  return ml_collections.ConfigDict(dict(
      kind=kind,  # learned (closed vocabulary) | file | clip
      dim=dim,  # the text-embedding space (CLIP ViT-B/16: 512)
      file=config_dict.placeholder(str),  # file: .npz of class name -> vector
      vocabulary=config_dict.placeholder(str),  # clip: bpe_simple_vocab_16e6.txt.gz
      templates=("a photo of a {}.",)))  # clip: prompts (class_embeddings.TEMPLATES: more)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size=64, steps=1000, quantizer="ema", data="scenes")
  config = data_sets.use(
      sgc_scenes.get_config(f"size={arg.size},quantizer={arg.quantizer}"), arg.data)
  config.method = "pat"
  config.data.num_views = 1
  config.data.batch_size = 16
  config.data.crop.update(dict(min_area=0.5, max_area=1.0, flip=True))
  config.total_steps = arg.steps
  config.log_every = 10
  del config.init_from, config.ema_decay
  backbone = acseg_scenes.backbone_config(kind="dino", arch="vit_small", patch_size=8)
  backbone.blocks = (4, 8, 12)
  codebook = config.model.codebook
  codebook.consistency_weight = 0.0  # one view: no pairs
  del codebook.dim_sem, codebook.dim_det, codebook.num_codes
  config.model = ml_collections.ConfigDict(dict(
      backbone=backbone,
      strides=(4, 8, 16), dim=64, num_codes=(256, 256, 256),
      decoder_ch=128, upsample_ch=(64, 32), fuse_ch=128,
      codebook=codebook,
      text=text_config(),
      # The semantic branch: cross-entropy of cosine / semantic_temperature.
      semantic_weight=1.0, semantic_temperature=0.07,
      # Each level's own picture (its grid's image) in the pixel loss.
      level_weight=0.5,
      # Prediction = baseline + fusion_weight x branch, where the backbone has
      # a baseline (CLIP's dense features; CLIP's logit scale is 100).
      fusion_weight=1.0, baseline_temperature=0.01,
      unseen_classes=(),  # class names held out of training (open vocabulary)
      dtype="float32"))
  config.loss.perceptual_weight = 0.0
  config.optimizer.update(dict(learning_rate=1e-3, disc_learning_rate=1e-3, warmup_steps=50))
  every = config_dict.FieldReference(500)
  config.evals = ml_collections.ConfigDict()
  config.evals.reconstruction = dict(type="reconstruction", every=every,
                                     lpips_weights=config_dict.placeholder(str),
                                     inception_weights=config_dict.placeholder(str))
  config.evals.pyramid = dict(type="pyramid", every=every)
  config.evals.open_vocab = dict(type="open_vocab", every=every)
  config.evals.pictures = dict(type="pictures", every=500, num_examples=8)
  return config
