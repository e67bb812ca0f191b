"""The embedded sgc_scenes data set: determinism, shapes, classes, clips, separability."""

import hashlib

import numpy as np
import pytest

from sgc_jax.data import scenes, sgc_scenes, sources

import separability


def _digest(example):
  h = hashlib.sha256()
  for key in sorted(example):
    h.update(np.ascontiguousarray(example[key]).tobytes())
  return h.hexdigest()


def test_render_is_deterministic_per_seed_split_index():
  a = scenes.render_scene(scenes.scene_rng(0, "train", 7), 64)
  b = scenes.render_scene(scenes.scene_rng(0, "train", 7), 64)
  assert _digest(a) == _digest(b)
  assert _digest(a) != _digest(scenes.render_scene(scenes.scene_rng(0, "train", 8), 64))
  assert _digest(a) != _digest(scenes.render_scene(scenes.scene_rng(0, "validation", 7), 64))
  assert _digest(a) != _digest(scenes.render_scene(scenes.scene_rng(1, "train", 7), 64))


@pytest.mark.parametrize("size", [64, 128, 256])
def test_render_shapes_and_label_ranges(size):
  scene = scenes.render_scene(scenes.scene_rng(0, "train", 3), size)
  assert scene["image"].shape == (size, size, 3) and scene["image"].dtype == np.uint8
  assert scene["segmentation"].shape == (size, size)
  assert scene["segmentation"].dtype == np.uint8
  assert scene["instances"].dtype == np.uint16
  assert scene["segmentation"].max() < scenes.NUM_CLASSES
  # Things carry instance ids, stuff does not.
  is_thing = np.isin(scene["segmentation"], scenes.THING_CLASSES)
  np.testing.assert_array_equal(is_thing, scene["instances"] > 0)


def test_same_scene_at_every_resolution():
  small = scenes.render_scene(scenes.scene_rng(0, "train", 5), 64)["segmentation"]
  large = scenes.render_scene(scenes.scene_rng(0, "train", 5), 256)["segmentation"]
  agreement = (large[2::4, 2::4] == small).mean()
  assert agreement > 0.95, agreement


def test_clips_keep_instance_identity_and_move():
  clip = scenes.render_clip(scenes.scene_rng(0, "train", 11), 64, num_frames=4)
  assert clip["image"].shape == (4, 64, 64, 3)
  for instance in np.unique(clip["instances"][0])[1:]:
    classes = [np.unique(clip["segmentation"][t][clip["instances"][t] == instance])
               for t in range(4)]
    for frame_classes in classes:  # an instance is one class in every frame it shows
      assert len(frame_classes) <= 1
      if len(frame_classes):
        np.testing.assert_array_equal(frame_classes, classes[0])
  assert (clip["instances"][0] != clip["instances"][3]).any()  # things moved
  stuff = clip["instances"][0] == 0
  still = stuff & (clip["instances"][3] == 0)
  np.testing.assert_array_equal(clip["segmentation"][0][still], clip["segmentation"][3][still])


def test_built_data_set_is_deterministic(tmp_path, scenes64):
  """A second build, in another directory, gives the same records."""
  other = sgc_scenes.build("smoke64", str(tmp_path))
  first, second = scenes64.split("validation"), other.as_data_source("validation")
  assert len(first) == len(second) == 128
  for index in (0, 17, 127):
    assert _digest(first[index]) == _digest(sources.native_record(second[index]))


def test_builder_features_and_metadata(scenes64, clips64):
  info = scenes64.builder.info
  assert info.metadata["class_names"] == list(scenes.CLASS_NAMES)
  assert len(info.metadata["class_names"]) >= 8
  assert info.splits["train"].num_examples == 512
  record = scenes64.split("train")[0]
  assert record["image"].shape == (64, 64, 3)
  clip = clips64.split("train")[0]
  assert clips64.num_frames == 4
  assert clip["image"].shape == (4, 64, 64, 3)
  assert clip["segmentation"].shape == (4, 64, 64)
  configs = {c.name: c for c in sgc_scenes.SgcScenes.BUILDER_CONFIGS}
  assert {configs[n].image_size for n in ("res64", "res128", "res256")} == {64, 128, 256}
  assert configs["res64"].num_train >= 10_000


def test_colour_alone_does_not_give_the_class_away(scenes64):
  train = [scenes64.split("train")[i] for i in range(192)]
  valid = [scenes64.split("validation")[i] for i in range(96)]
  train_images = np.stack([r["image"] for r in train])
  train_labels = np.stack([r["segmentation"] for r in train]).ravel()
  valid_images = np.stack([r["image"] for r in valid])
  valid_labels = np.stack([r["segmentation"] for r in valid]).ravel()
  c = scenes.NUM_CLASSES
  colour_only = separability.nearest_mean_accuracy(
      separability.colour_features(train_images), train_labels,
      separability.colour_features(valid_images), valid_labels, c)
  colour_gaussian = separability.gaussian_classifier_accuracy(
      separability.colour_features(train_images), train_labels,
      separability.colour_features(valid_images), valid_labels, c)
  texture_and_colour = separability.gaussian_classifier_accuracy(
      separability.texture_features(train_images), train_labels,
      separability.texture_features(valid_images), valid_labels, c)
  print(f"\npixel accuracy on validation: colour nearest-mean {colour_only:.3f}, "
        f"colour Gaussian {colour_gaussian:.3f}, texture+colour Gaussian "
        f"{texture_and_colour:.3f}")
  assert colour_only < 0.6
  assert colour_gaussian < 0.6
  assert texture_and_colour > colour_gaussian + 0.15
