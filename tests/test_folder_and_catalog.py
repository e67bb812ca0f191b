"""User folders and TFDS catalog adapters: good data reads, bad data names itself."""

import os
import struct
import zlib

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from sgc_jax.data import folder, sources


def _make_folder(root, bad=None):
  """Three good images of different sizes and modes, with label maps."""
  rng = np.random.default_rng(0)
  os.makedirs(root / "images")
  os.makedirs(root / "labels")
  (root / "classes.txt").write_text("road\ncar\ntree\n")
  for name, mode, (w, h) in [("rgb", "RGB", (40, 30)), ("grey", "L", (33, 50)),
                             ("rgba", "RGBA", (64, 64))]:
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    PIL.Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(
        root / "images" / f"{name}.png")
    label = rng.integers(0, 3, (h, w), dtype=np.uint8)
    label[0, 0] = 255  # unlabeled pixels are allowed
    PIL.Image.fromarray(label).save(root / "labels" / f"{name}.png")
  if bad == "broken_image":
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    PIL.Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "labels" / "broken.png")
  elif bad == "wrong_size":
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "small.png")
    PIL.Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / "labels" / "small.png")
  elif bad == "out_of_range":
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "odd.png")
    PIL.Image.fromarray(np.full((8, 8), 7, np.uint8)).save(root / "labels" / "odd.png")
  elif bad == "rgb_label":
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "col.png")
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "labels" / "col.png")
  elif bad == "missing_label":
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "lone.png")
  return root


def test_folder_of_mixed_images_reads_back_as_rgb_with_labels(tmp_path):
  source_dir = _make_folder(tmp_path / "src")
  path = folder.prepare(str(source_dir), str(tmp_path / "tfds"))
  dataset = sources.open_dataset(f"folder:{path}", None)
  assert dataset.class_names == ("road", "car", "tree")
  records = [dataset.split("train")[i] for i in range(3)]
  shapes = sorted(r["image"].shape for r in records)
  assert shapes == [(30, 40, 3), (50, 33, 3), (64, 64, 3)]
  for r in records:
    assert r["segmentation"].shape == r["image"].shape[:2]
    assert set(np.unique(r["segmentation"])) <= {0, 1, 2, 255}
  grey = next(r for r in records if r["image"].shape == (50, 33, 3))
  np.testing.assert_array_equal(grey["image"][..., 0], grey["image"][..., 2])


def test_folder_without_labels_is_all_unlabeled(tmp_path):
  source_dir = _make_folder(tmp_path / "src")
  for name in os.listdir(source_dir / "labels"):
    os.remove(source_dir / "labels" / name)
  os.rmdir(source_dir / "labels")
  os.remove(source_dir / "classes.txt")  # unlabelled data needs no class list
  path = folder.prepare(str(source_dir), str(tmp_path / "tfds"))
  dataset = sources.open_dataset(f"folder:{path}", None)
  assert dataset.class_names == ()
  record = dataset.split("train")[0]
  assert (record["segmentation"] == sources.IGNORE_LABEL).all()


@pytest.mark.parametrize("bad, file_name, problem", [
    ("broken_image", "broken.jpg", "not a readable image"),
    ("wrong_size", "small.png", "label map is 8x9, its image is 8x8"),
    ("out_of_range", "odd.png", "label 7 is out of range for 3 classes"),
    ("rgb_label", "col.png", "must be single-channel"),
    ("missing_label", "lone.png", "label map missing"),
])
def test_bad_files_stop_the_build_with_name_and_problem(tmp_path, bad, file_name, problem):
  source_dir = _make_folder(tmp_path / "src", bad=bad)
  with pytest.raises(sources.DataError) as error:
    folder.prepare(str(source_dir), str(tmp_path / "tfds"))
  assert file_name in str(error.value) and problem in str(error.value)


def test_skip_bad_builds_without_them_and_reports_them(tmp_path, capsys):
  source_dir = _make_folder(tmp_path / "src", bad="out_of_range")
  path = folder.prepare(str(source_dir), str(tmp_path / "tfds"), skip_bad=True)
  dataset = sources.open_dataset(f"folder:{path}", None)
  assert len(dataset.split("train")) == 3
  skipped = dataset.builder.info.metadata["skipped_files"]
  assert len(skipped) == 1 and "odd.png" in skipped[0]
  assert "odd.png" in capsys.readouterr().err


def test_missing_classes_file_is_named(tmp_path):
  source_dir = _make_folder(tmp_path / "src")
  os.remove(source_dir / "classes.txt")
  with pytest.raises(sources.DataError, match="classes.txt: missing"):
    folder.prepare(str(source_dir), str(tmp_path / "tfds"))


def _write_catalog_metadata(name, split, data_dir):
  """The metadata files a real `download_and_prepare` leaves, from the real builder.

  Building the catalog builder's DatasetInfo needs TensorFlow (its code uses tf
  dtypes); sgc_jax then reads the data set from these files alone, TF-free.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
      name=split, shard_lengths=[3], num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=builder.data_path, dataset_name=builder.name, split=split,
          filetype_suffix="array_record"))]))
  builder.data_path.mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(builder.data_path)
  builder.info.features.save_config(str(builder.data_path))


@pytest.mark.parametrize("name, num_classes", [
    ("coco/2017_panoptic", 133),
    ("cityscapes/semantic_segmentation", 19),
    ("scene_parse150", 100),
])
def test_catalog_adapters_on_mock_data(name, num_classes, tmp_path):
  _write_catalog_metadata(name, "validation", str(tmp_path))
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path)):
    dataset = sources.open_dataset(name, str(tmp_path))
    assert dataset.num_classes == num_classes
    assert len(dataset.split("validation")) == 3
    raw_records = [dataset.builder.as_data_source("validation")[i] for i in range(3)]
  for raw in raw_records:
    # The mock draws every variable shape on its own; real label maps have their
    # image's size.
    image_key = "image_left" if "image_left" in raw else "image"
    height, width = np.asarray(raw[image_key]).shape[:2]
    for key in ("panoptic_image", "segmentation_label", "annotation"):
      if key in raw:
        label = np.asarray(raw[key])
        raw[key] = np.resize(label, (height, width, label.shape[-1]))
    if "annotation" in raw:  # ADE categories are 0..100; the mock draws 0..255
      raw["annotation"][..., 0] %= 101
    record = dataset.adapter(raw)
    sources.check_record(record, num_classes, name)
    assert record["image"].shape == (height, width, 3)
    labels = np.unique(record["segmentation"])
    assert ((labels < num_classes) | (labels == sources.IGNORE_LABEL)).all()


def test_cityscapes_label_ids_map_to_train_ids():
  label = np.array([[7, 26], [0, 33]], np.uint8)[..., None]
  record = sources.cityscapes_record({"image_left": np.zeros((2, 2, 3), np.uint8),
                                      "segmentation_label": label})
  np.testing.assert_array_equal(record["segmentation"], [[0, 13], [255, 18]])


def test_coco_panoptic_segments_take_their_object_labels():
  ids = np.array([[0, 5], [300, 300]])
  rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
  record = sources.coco_panoptic_record({
      "image": np.zeros((2, 2, 3), np.uint8), "panoptic_image": rgb,
      "panoptic_objects": {"id": np.array([5, 300]), "label": np.array([17, 101])}})
  np.testing.assert_array_equal(record["segmentation"], [[255, 17], [101, 101]])
  np.testing.assert_array_equal(record["instances"], [[0, 1], [2, 2]])


def test_unprepared_catalog_data_set_is_an_error_not_a_download(tmp_path):
  with pytest.raises(sources.DataError, match="not prepared"):
    sources.open_dataset("cityscapes/semantic_segmentation", str(tmp_path))


def test_images_that_share_a_stem_are_refused(tmp_path):
  source_dir = _make_folder(tmp_path / "src")
  PIL.Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(source_dir / "images" / "rgba.jpg")
  with pytest.raises(sources.DataError, match=r"share a label map: rgba\.jpg and rgba\.png"):
    folder.prepare(str(source_dir), str(tmp_path / "tfds"))


def test_a_changed_source_is_rebuilt_not_reused(tmp_path, capfd):
  source_dir = _make_folder(tmp_path / "src", bad="broken_image")
  data_dir = str(tmp_path / "tfds")
  path = folder.prepare(str(source_dir), data_dir, skip_bad=True)
  assert len(sources.open_dataset(f"folder:{path}", None).split("train")) == 3
  assert folder.prepare(str(source_dir), data_dir, skip_bad=True) == path  # unchanged: reused
  assert "rebuilding" not in capfd.readouterr().err
  # The broken image fixed and a new one added: both are in the rebuilt set.
  PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(source_dir / "images" / "broken.jpg")
  PIL.Image.fromarray(np.ones((6, 6, 3), np.uint8)).save(source_dir / "images" / "new.png")
  PIL.Image.fromarray(np.zeros((6, 6), np.uint8)).save(source_dir / "labels" / "new.png")
  assert folder.prepare(str(source_dir), data_dir, skip_bad=True) == path
  assert "changed since it was built" in capfd.readouterr().err
  dataset = sources.open_dataset(f"folder:{path}", None)
  assert len(dataset.split("train")) == 5
  assert tfds.builder_from_directory(path).info.metadata["skipped_files"] == []


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
  root = tmp_path / "src"
  os.makedirs(root / "images")
  (root / "classes.txt").write_text("a\n")
  ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
  PIL.Image.fromarray(ramp).save(root / "images" / "ramp.png")
  assert PIL.Image.open(root / "images" / "ramp.png").mode == "I;16"
  path = folder.prepare(str(root), str(tmp_path / "tfds"))
  image = sources.open_dataset(f"folder:{path}", None).split("train")[0]["image"]
  np.testing.assert_allclose(image[..., 0], np.round(ramp / 257.0), atol=1)


def test_text_that_is_not_utf8_names_the_file(tmp_path):
  source_dir = _make_folder(tmp_path / "src")
  (source_dir / "classes.txt").write_bytes("route\nvoiture\narbre à pain\n".encode("latin-1"))
  with pytest.raises(sources.DataError, match=r"classes\.txt: not UTF-8 text"):
    folder.prepare(str(source_dir), str(tmp_path / "tfds"))
  (source_dir / "classes.txt").write_text("road\ncar\ntree\n")
  bad_name = os.fsencode(str(source_dir / "images")) + b"/caf\xe9.png"
  with open(bad_name, "wb") as f:
    PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(f, format="PNG")
  with open(os.fsencode(str(source_dir / "labels")) + b"/caf\xe9.png", "wb") as f:
    PIL.Image.fromarray(np.zeros((4, 4), np.uint8)).save(f, format="PNG")
  with pytest.raises(sources.DataError, match=r"caf.\.png: the file name is not valid UTF-8"):
    folder.prepare(str(source_dir), str(tmp_path / "tfds"))


def _png_header_only(width, height):
  """A PNG whose header claims width x height, with one tiny (invalid) data chunk."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
          chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind, message", [
    ("truncated", r"bad\.png: not a readable image"),
    ("empty", r"bad\.png: not a readable image"),
    ("huge_header", r"bad\.png: not a readable image .*exceeds limit"),
    ("symlink_loop", r"bad\.png: not a readable image .*symbolic links"),
    ("empty_classes", r"classes\.txt: 0 classes"),
])
def test_bad_files_that_already_name_themselves_keep_doing_so(tmp_path, kind, message):
  source_dir = _make_folder(tmp_path / "src")
  bad = source_dir / "images" / "bad.png"
  if kind == "truncated":
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])
  elif kind == "empty":
    bad.write_bytes(b"")
  elif kind == "huge_header":  # 200 Mpx: over PIL's decompression-bomb limit
    bad.write_bytes(_png_header_only(20000, 10000))
  elif kind == "symlink_loop":
    os.symlink(bad, bad)
  else:
    (source_dir / "classes.txt").write_text("\n\n")
  PIL.Image.fromarray(np.zeros((32, 32), np.uint8)).save(source_dir / "labels" / "bad.png")
  with pytest.raises(sources.DataError, match=message):
    folder.prepare(str(source_dir), str(tmp_path / "tfds"))
