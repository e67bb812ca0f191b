"""ACSeg on the embedded `sgc_scenes` data set, a CPU recipe (minutes), over a
backbone the library trained without labels: by default SlotCon's teacher
encoder, exported as a bundle (see launch/label_free.sh for the whole chain):

    python -m sgc_jax.main --config=configs/acseg_scenes.py --workdir=workdir/acseg \
        --mode=train --config.data.data_dir=data \
        --config.model.backbone.weights=workdir/slotcon/bundle

`backbone.kind=dino` takes an official DINO ViT instead (weights: its .pth;
normalization imagenet as SlotCon's). The labels of sgc_scenes are not used to
train; the evaluators read them.

Args: size (64 | 128), steps, data (scenes | camvid: see configs/data_sets.py).
"""

import ml_collections
from ml_collections import config_dict

from sgc_jax import config_lib
from sgc_jax.configs import data_sets, sgc_scenes, slotcon_scenes


def backbone_config(kind="bundle", arch="vit_small", patch_size=8, dtype="float32"):
  return ml_collections.ConfigDict(dict(
      kind=kind,  # dino | bundle
      weights=config_dict.placeholder(str),  # dino: .pth / .npz (None: random); bundle: dir
      arch=arch, patch_size=patch_size,  # dino: vit_small | vit_base, 8 | 16
      feature="tokens",  # dino: tokens (last block's output) | keys (its attention keys)
      dtype=dtype))  # dino: its compute dtype (float32 | bfloat16)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size=64, steps=1000, data="scenes")
  config = data_sets.use(sgc_scenes.get_config(f"size={arg.size}"), arg.data)
  config.method = "acseg"
  config.data.num_views = 1
  config.data.normalization = "imagenet"  # SlotCon's and DINO's inputs
  config.data.batch_size = 16
  config.data.crop.update(dict(min_area=0.5, max_area=1.0, flip=True))
  config.total_steps = arg.steps
  config.log_every = 10
  config.model = ml_collections.ConfigDict(dict(
      backbone=backbone_config(),
      # docs/design.md#adaptive-concept-generator: P = 5 prototypes, L = 3 blocks, tau = 0.1.
      num_prototypes=5, num_blocks=3, num_heads=8, mlp_ratio=4.0, temperature=0.1,
      # The affinity graph: "cosine" (docs/design.md#affinity-graph: max(0, cos)) or "centred" (the
      # cosine of features minus their image's mean). A ReLU backbone's features
      # (SlotCon's ResNet) are all positive: on sgc_scenes their true classes
      # have a modularity of 0.12 under "cosine" and 0.33 under "centred".
      affinity="centred",
      # The concept classifier: k-means of a vector per concept of this many
      # training images into num_clusters (None: the data set's number of
      # classes), the best of classifier_restarts seedings by inertia. The
      # vector: "concepts" (docs/design.md#concept-classifier) or "regions"
      # (the mean backbone feature of the pixels the concept wins);
      # classifier_centring subtracts the vectors' mean first. Restarts and
      # centring are the baseline's (evals.segmentation: its k-means of the
      # pixel features), to keep it fair.
      num_clusters=config_dict.placeholder(int), classifier_images=2000,
      classifier_input="concepts",
      classifier_restarts=config.evals.segmentation.get_ref("kmeans_restarts"),
      classifier_centring=config.evals.segmentation.get_ref("feature_centring"),
      dtype="float32"))
  # docs/design.md#acseg-optimizer names no optimizer: Adam with a short warm-up and a cosine decay.
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-4, warmup_steps=max(1, arg.steps // 20),
      final_lr_fraction=0.01, grad_clip=0.0))
  # Centred k-means on both sides (the baseline's and, tied, the classifier's):
  # SlotCon's ReLU features are all positive. Measured over 600 steps: ACSeg
  # 0.102 -> 0.109 mIoU, the baseline 0.097 -> 0.108 (docs/methods/acseg.md#what-was-measured).
  config.evals.segmentation.feature_centring = True
  del config.init_from
  return slotcon_scenes.without_reconstruction(config)
