"""The data a CPU recipe trains on, by name (the `data` argument of the
`*_scenes.py` recipes): `scenes`, the embedded sgc_scenes set, or `camvid`,
CamVid's photographs prepared under data.data_dir as `folder:camvid`
(`python -m sgc_jax.data.folder PATH/camvid --data_dir=DIR --name=camvid`),
evaluated on whole 4:3 frames (480x360 at image_size x 3/4 image_size)."""

from sgc_jax import config_lib

NAMES = ("scenes", "camvid")


def camvid_frame(size: int) -> tuple[int, int]:
  """(height, width) of a whole CamVid frame evaluated at `size` pixels wide."""
  return (size * 3 // 4, size)


def use(config, name: str):
  """`config` (a recipe on sgc_scenes) set to train and evaluate on `name`."""
  if name not in NAMES:
    raise config_lib.ConfigError(f"data={name!r}: one of {', '.join(NAMES)}")
  if name == "camvid":
    config.data.name = "folder:camvid"
    config.data.eval_frame = camvid_frame(config.data.image_size)
    # Consecutive frames of a video are alike: pictures of frames across it.
    config.evals.pictures.spaced = True
    # The 101 validation frames are one 7-second stretch of one drive; the
    # training frames span three drives. Usage over as many training frames
    # tells codes the narrow validation split leaves idle from wasted ones.
    config.evals.codebook.train_images = 101
  return config
