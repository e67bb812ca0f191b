"""PAT over CLIP ViT-B/16 on COCO (the TFDS catalog's `coco/2017_panoptic`,
prepared offline under data.data_dir), open vocabulary: CLIP's published
weights and its BPE vocabulary are files the user supplies (nothing is
fetched):

    python -m sgc_jax.main --config=configs/pat_coco.py --workdir=gs://BUCKET/pat \
        --config.data.data_dir=gs://BUCKET/tfds --mode=train \
        --config.model.backbone.weights=ViT-B-16.pt \
        --config.model.text.vocabulary=bpe_simple_vocab_16e6.txt.gz

COCO-Stuff's 171-class label maps are not in the TFDS catalog; its panoptic
label set is: 133 classes (80 things, 53 stuff, some stuff merged). Held out
of training (open vocabulary): the classes of the usual COCO-Stuff zero-shot
split (ZS3Net's 15 unseen) that the panoptic label set keeps as classes of
their own, 13 of them (wall-concrete and clouds are merged into other
classes there). The class names become prompts as words ("tree-merged" ->
"tree"), over the templates of `class_embeddings.TEMPLATES`.

Args: size (448: the ViT's 28 x 28 grid; strides 4-32 give 112 ... 14), steps.
"""

from sgc_jax import config_lib
from sgc_jax.configs import pat_scenes
from sgc_jax.core import class_embeddings

ZERO_SHOT_UNSEEN = ("frisbee", "skateboard", "cardboard", "carrot", "scissors", "suitcase",
                    "giraffe", "cow", "road", "tree-merged", "grass-merged", "river",
                    "playingfield")


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size=448, steps=80_000)
  config = pat_scenes.get_config(f"steps={arg.steps}")
  config.data.update(dict(name="coco/2017_panoptic", image_size=arg.size, batch_size=32,
                          worker_count=8))
  m = config.model
  m.backbone.update(dict(kind="clip", arch="ViT-B/16", blocks=(3, 6, 9, 12),
                         dense="maskclip", dtype="bfloat16"))
  m.update(dict(strides=(4, 8, 16, 32), dim=256, num_codes=(1024, 1024, 1024, 1024),
                decoder_ch=256, upsample_ch=(128, 64), fuse_ch=256,
                unseen_classes=ZERO_SHOT_UNSEEN, dtype="bfloat16"))
  m.text.update(dict(kind="clip", dim=512, templates=class_embeddings.TEMPLATES))
  m.codebook.chunk_size = 4096
  config.loss.perceptual_weight = 1.0  # with --config.loss.lpips_weights
  config.optimizer.update(dict(learning_rate=1e-4, disc_learning_rate=1e-4,
                               warmup_steps=2_000))
  config.log_every = 100
  config.checkpoint.update(dict(every=5_000, keep=3))
  for name in ("reconstruction", "pyramid", "open_vocab"):
    config.evals[name]["every"] = 10_000
  config.evals.pictures.every = 5_000
  return config
