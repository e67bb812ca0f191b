"""`sgc_scenes`: the embedded, rendered TFDS data set (no download).

    tfds.builder("sgc_scenes/res64", data_dir=DIR).download_and_prepare(
        file_format="array_record")

Images are PNG-encoded here (with Pillow) so that neither building nor reading
needs TensorFlow. Rendering runs in a pool of processes; every example is seeded
by (seed, split, index), so the bytes do not depend on the pool size.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from sgc_jax.data import scenes

_DESCRIPTION = """\
Rendered scenes of 4 "stuff" classes (sky, water, grass, soil) and 6 "thing"
classes (ball, crate, cone, star, tire, leaf). A class is carried by shape,
texture and colour statistics together; colour palettes overlap between classes.
Random layouts, scales, rotations and occlusion. Per-pixel class and instance
maps. The `clips*` configs hold short sequences with moving things and instance
ids that are consistent over the frames.
"""


@dataclasses.dataclass(kw_only=True)
class SgcScenesConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  num_frames: int = 0  # 0: still images; >0: clips of that many frames
  num_train: int = 20_000
  num_validation: int = 2_000
  seed: int = 0


def _config(name, **kwargs):
  return SgcScenesConfig(name=name, description=f"{name}: {kwargs}", **kwargs)


def encode_png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def _render_example(args) -> dict:
  """Renders and encodes one example (runs in a worker process)."""
  config_fields, split, index = args
  image_size, num_frames, seed = config_fields
  rng = scenes.scene_rng(seed, split, index)
  if num_frames:
    clip = scenes.render_clip(rng, image_size, num_frames)
    return {"image": [encode_png(frame) for frame in clip["image"]],
            "segmentation": clip["segmentation"], "instances": clip["instances"]}
  scene = scenes.render_scene(rng, image_size)
  return {"image": encode_png(scene["image"]),
          "segmentation": scene["segmentation"], "instances": scene["instances"]}


class SgcScenes(tfds.core.GeneratorBasedBuilder):
  """Rendered semantic scenes with class and instance maps."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      _config("res64", image_size=64, num_train=20_000, num_validation=2_000),
      _config("res128", image_size=128, num_train=10_000, num_validation=1_000),
      _config("res256", image_size=256, num_train=4_000, num_validation=500),
      _config("clips64", image_size=64, num_frames=4, num_train=5_000,
              num_validation=500),
      # Small versions for tests, benchmarks and a first look.
      _config("smoke64", image_size=64, num_train=512, num_validation=128),
      _config("smoke128", image_size=128, num_train=256, num_validation=64),
      _config("smoke_clips64", image_size=64, num_frames=4, num_train=128,
              num_validation=32),
  ]
  DEFAULT_CONFIG_NAME = "res64"

  def _info(self) -> tfds.core.DatasetInfo:
    size, frames = self.builder_config.image_size, self.builder_config.num_frames
    image = tfds.features.Image(shape=(size, size, 3), encoding_format="png")
    map_shape = (frames, size, size) if frames else (size, size)
    features = {
        "image": tfds.features.Sequence(image, length=frames) if frames else image,
        "segmentation": tfds.features.Tensor(shape=map_shape, dtype=np.uint8,
                                             encoding="zlib"),
        "instances": tfds.features.Tensor(shape=map_shape, dtype=np.uint16,
                                          encoding="zlib"),
    }
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(
            class_names=list(scenes.CLASS_NAMES),
            stuff_classes=[scenes.CLASS_NAMES[c] for c in
                           (scenes.SKY, *scenes.GROUND_CLASSES)],
            ignore_label=255,
        ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is rendered
    config = self.builder_config
    return {"train": self._generate_examples("train", config.num_train),
            "validation": self._generate_examples("validation",
                                                  config.num_validation)}

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    fields = (config.image_size, config.num_frames, config.seed)
    jobs = ((fields, split, index) for index in range(num_examples))
    processes = min(os.cpu_count() or 1, 8)
    # `spawn`: the parent may hold JAX threads, which do not survive a fork.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
      for index, example in enumerate(pool.imap(_render_example, jobs,
                                                chunksize=64)):
        yield index, example


def build(config_name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Builds `sgc_scenes/<config_name>` under `data_dir` unless it exists."""
  builder = tfds.builder(f"sgc_scenes/{config_name}", data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
