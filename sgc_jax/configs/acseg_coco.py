"""ACSeg over DINO ViT-S/8 on COCO (the TFDS catalog's `coco/2017_panoptic`,
prepared offline under data.data_dir; its panoptic classes are what the
evaluation matches clusters to). The backbone is the published DINO weights,
read from a file the user supplies (`dino_deitsmall8_pretrain.pth`, or the
.npz of `python -m sgc_jax.convert.dino`):

    python -m sgc_jax.main --config=configs/acseg_coco.py --workdir=gs://BUCKET/acseg \
        --config.data.data_dir=gs://BUCKET/tfds \
        --config.model.backbone.weights=dino_deitsmall8_pretrain.pth --mode=train

Args: size (224: a 28 x 28 grid; 448: 56 x 56, N = 3136 tokens per image),
arch (vit_small | vit_base), patch (8 | 16), steps.
"""

from sgc_jax import config_lib
from sgc_jax.configs import acseg_scenes


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size=224, arch="vit_small", patch=8, steps=20_000)
  config = acseg_scenes.get_config(f"steps={arg.steps}")
  config.data.update(dict(name="coco/2017_panoptic", image_size=arg.size, batch_size=64,
                          worker_count=8))
  config.model.backbone.update(dict(kind="dino", arch=arg.arch, patch_size=arg.patch,
                                    dtype="bfloat16"))
  # DINO's features are not all positive: the plain cosine graph of docs/design.md#affinity-graph.
  config.model.update(dict(affinity="cosine", classifier_images=10_000, dtype="bfloat16"))
  config.log_every = 100
  config.checkpoint.update(dict(every=2_000, keep=3))
  config.evals.codebook.every = 5_000
  config.evals.pictures.every = 5_000
  return config
