"""SGC-VQGAN on photographs: CamVid's 11 classes of Cambridge street scenes.

Prepare the folder once (void, label 255, is ignored everywhere), then train
and evaluate on whole validation frames:

    python -m sgc_jax.data.folder PATH/camvid --data_dir=data --name=camvid
    python -m sgc_jax.main --config=configs/sgc_camvid.py:quantizer=sgc \
        --workdir=workdir/camvid/sgc --config.data.data_dir=data --mode=train

Args (`key=value,...`): quantizer (vq | ema | sgc), size (128: the CPU
recipe, about 30 minutes per quantizer on 2 cores; 256: the GPU recipe),
steps (400 at 128 px, 20 000 at 256 px; the GAN joins at half of them).

Why 128 px: training views are random crops of a frame (a quarter of it to
the whole) resized to size², so a 480x360 frame is seen at 1/2 to 1/4 of its
resolution; evaluation takes whole frames at 128x96 (1/3.75). With the
encoder's 4x4-pixel tokens, CamVid's token labels then keep the classes'
pixel shares (sign 0.9 % of tokens for 1.2 % of pixels, pedestrian 0.6 % for
0.7 %, fence 1.2 % for 1.2 %) except the thinnest, poles (0.3 % for 1.0 %); at
8x8-pixel tokens poles all but vanish (0.1 %). A token counts as labelled when
its majority class covers 30 % of it (not 50 %): thin poles and signs rarely
fill half a token.
"""

from sgc_jax import config_lib
from sgc_jax.configs import data_sets, sgc_scenes


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, quantizer="sgc", size=128, steps=0)
  if arg.size not in (128, 256):
    raise config_lib.ConfigError(f"sgc_camvid: size={arg.size}; 128 or 256")
  config = data_sets.use(
      sgc_scenes.get_config(f"quantizer={arg.quantizer},size={arg.size}"), "camvid")
  config.data.crop.update(dict(min_area=0.25, min_overlap=0.3))
  config.total_steps = arg.steps or (400 if arg.size == 128 else 20_000)
  config.log_every = 20
  # GAN on inside the run: the hinge discriminator joins for its second half.
  config.loss.disc_start = config.total_steps // 2
  config.model.codebook.label_threshold = 0.3
  config.evals.reconstruction.every = config.total_steps // 2  # and codebook, segmentation
  config.evals.segmentation.probe_images = 367  # every training frame
  config.evals.pictures.every = config.total_steps
  config.checkpoint.every = 200 if arg.size == 128 else 2_000
  if arg.size == 256:
    config.data.batch_size = 32
    config.data.worker_count = 8
    config.model.update(dict(ch=64, num_res_blocks=2))
    config.model.codebook.update(dict(num_codes=1024, dim_sem=32, dim_det=32,
                                      min_codes=4))
    config.optimizer.update(dict(learning_rate=5e-4, disc_learning_rate=5e-4,
                                 warmup_steps=500))
  return config
