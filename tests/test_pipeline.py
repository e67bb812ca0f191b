"""The grain input pipeline: sharding, views and their correspondence, resume, errors."""

import json

import jax
import numpy as np
import pytest

from sgc_jax.core import checkpoint
from sgc_jax.data import pipeline, sources, views
from sgc_jax.runtime import sharding


def _source(num_records, height=48, width=48, coordinates=False, num_classes=4):
  """Records whose `instances` say who they are: the record id, or source coordinates."""
  rng = np.random.default_rng(0)
  records = []
  for index in range(num_records):
    if coordinates:
      yy, xx = np.mgrid[:height, :width]
      instances = yy * width + xx + 1
    else:
      instances = np.full((height, width), index + 1)
    records.append({
        "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "segmentation": rng.integers(0, num_classes, (height, width), dtype=np.uint8),
        "instances": instances.astype(np.int32)})
  return sources.CheckedSource(records, sources.native_record, num_classes, "synthetic")


def _ids(batch):
  ids = np.asarray(batch["instances"])[:, 0, 0, 0] - 1
  return ids[np.asarray(batch["mask"])]


@pytest.fixture(scope="module")
def mesh():
  return sharding.create_mesh()


def test_batches_are_global_arrays_sharded_on_the_batch_axes(scenes64, mesh):
  spec = pipeline.PipelineSpec(split="train", global_batch_size=16, image_size=32,
                               train=True, num_views=2)
  batch = next(pipeline.InputPipeline(scenes64.split("train"), spec, mesh))
  assert jax.device_count() == 8
  assert batch["image"].shape == (16, 2, 32, 32, 3)
  assert batch["image"].dtype == np.float32
  assert batch["segmentation"].shape == (16, 2, 32, 32)
  assert batch["box"].shape == (16, 2, 4) and batch["flip"].shape == (16, 2)
  assert batch["image"].sharding.is_equivalent_to(sharding.batch_sharding(mesh), 5)
  assert len(batch["image"].addressable_shards) == 8
  image = np.asarray(batch["image"])
  assert -1.0 <= image.min() and image.max() <= 1.0
  assert image.min() < -0.5 and image.max() > 0.5


def test_two_processes_read_disjoint_shards_covering_the_split(mesh):
  source = _source(64)
  spec = pipeline.PipelineSpec(split="train", global_batch_size=16, image_size=16,
                               train=True)
  seen = []
  for process in range(2):
    batches = pipeline.InputPipeline(source, spec, mesh, process_index=process,
                                     process_count=2)
    # One epoch of this process's 32 records: 4 local batches of 8.
    seen.append(np.concatenate([_ids(batches.next_local()) for _ in range(4)]))
  assert len(set(seen[0]) & set(seen[1])) == 0
  assert sorted(np.concatenate(seen)) == list(range(64))


def test_one_process_with_two_shards_equals_two_processes(mesh):
  source = _source(40)
  spec = pipeline.PipelineSpec(split="train", global_batch_size=8, image_size=16,
                               train=True, num_views=2, num_shards=2, seed=3)
  single = pipeline.InputPipeline(source, spec, mesh, process_index=0, process_count=1)
  parts = [pipeline.InputPipeline(source, spec, mesh, process_index=p, process_count=2)
           for p in range(2)]
  for _ in range(3):
    whole = single.next_local()
    halves = [p.next_local() for p in parts]
    for key in whole:
      np.testing.assert_array_equal(whole[key],
                                    np.concatenate([h[key] for h in halves]))


def test_evaluation_pass_covers_every_record_once_with_padding(mesh):
  source = _source(37)
  spec = pipeline.PipelineSpec(split="validation", global_batch_size=16,
                               image_size=16, train=False)
  ids = []
  counts = []
  for process in range(2):
    batches = pipeline.InputPipeline(source, spec, mesh, process_index=process,
                                     process_count=2)
    local = []
    while True:
      try:
        local.append(batches.next_local())
      except StopIteration:
        break
    counts.append(len(local))
    ids += [i for b in local for i in _ids(b)]
    assert all(len(b["mask"]) == 8 for b in local)
  assert counts[0] == counts[1] == 3  # ceil(19 / 8): both processes step together
  assert sorted(ids) == list(range(37))


def test_view_correspondence_maps_a_token_to_the_same_source_point():
  height, width, size, grid = 96, 128, 64, 8
  source = _source(4, height, width, coordinates=True)
  make_views = pipeline.MakeViews(size, 2, views.CropSpec(min_area=0.2, min_overlap=0.3))
  checked = 0
  for seed in range(20):
    example = make_views.random_map(source[seed % 4], np.random.default_rng(seed))
    index, valid = views.token_correspondence(example["box"][0], example["flip"][0],
                                              example["box"][1], example["flip"][1], grid)
    centre = np.arange(grid) * (size // grid) + size // (2 * grid)
    coords = [example["instances"][v][np.ix_(centre, centre)].ravel() - 1 for v in (0, 1)]
    ya, xa = np.divmod(coords[0], width)
    yb, xb = np.divmod(coords[1][index], width)
    box_b = example["box"][1]
    tolerance_y = (box_b[2] - box_b[0]) * height / grid + 1
    tolerance_x = (box_b[3] - box_b[1]) * width / grid + 1
    assert valid.any()
    assert (np.abs(ya - yb)[valid] <= tolerance_y).all()
    assert (np.abs(xa - xb)[valid] <= tolerance_x).all()
    # Invalid tokens look at source points outside view B's box.
    y_norm, x_norm = (ya + 0.5) / height, (xa + 0.5) / width
    inside = ((y_norm >= box_b[0]) & (y_norm <= box_b[2]) &
              (x_norm >= box_b[1]) & (x_norm <= box_b[3]))
    margin = ~valid & inside
    assert margin.mean() < 0.15  # only tokens on B's border, by rounding
    checked += valid.sum()
  assert checked > 500


def test_flip_reverses_token_columns():
  box = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
  index, valid = views.token_correspondence(box, False, box, True, 4)
  assert valid.all()
  np.testing.assert_array_equal(index.reshape(4, 4), np.arange(16).reshape(4, 4)[:, ::-1])


def test_clip_views_are_distinct_frames_of_one_camera(clips64, mesh):
  spec = pipeline.PipelineSpec(split="train", global_batch_size=8, image_size=32,
                               train=True, num_views=2)
  batch = pipeline.InputPipeline(clips64.split("train"), spec, mesh).next_local()
  assert (batch["frame"][:, 0] < batch["frame"][:, 1]).all()
  np.testing.assert_array_equal(batch["box"][:, 0], batch["box"][:, 1])
  np.testing.assert_array_equal(batch["flip"][:, 0], batch["flip"][:, 1])


def test_resume_replays_exactly_the_same_batches(scenes64, mesh):
  spec = pipeline.PipelineSpec(split="train", global_batch_size=8, image_size=32,
                               train=True, num_views=2, worker_count=2, seed=5)
  first = pipeline.InputPipeline(scenes64.split("train"), spec, mesh)
  for _ in range(3):
    next(first)
  state = first.get_state()
  straight = [np.asarray(next(first)["image"]) for _ in range(3)]
  resumed = pipeline.InputPipeline(scenes64.split("train"), spec, mesh)
  resumed.set_state(state)
  again = [np.asarray(next(resumed)["image"]) for _ in range(3)]
  for a, b in zip(straight, again):
    np.testing.assert_array_equal(a, b)
  # Checkpoints of the first release stored this state in another layout.
  decoded = json.loads(state)
  legacy = {"process_0": json.dumps({
      "shards": [int(k) for k in decoded["shards"]], "batches_done": decoded["batches_done"],
      "loaders": list(decoded["shards"].values())})}
  assert checkpoint._current_data_format(legacy) == decoded
  fresh = pipeline.InputPipeline(scenes64.split("train"), spec, mesh)
  assert not np.array_equal(np.asarray(next(fresh)["image"]), straight[0])


def test_a_label_out_of_range_names_the_record(mesh):
  records = [_source(3)[i] for i in range(3)]
  records[2]["segmentation"][5, 5] = 9
  source = sources.CheckedSource(records, sources.native_record, 4, "my_data train")
  with pytest.raises(sources.DataError, match="my_data train record 2: label 9 is out of range"):
    source[2]


def test_batch_size_must_divide_over_devices_and_shards(mesh):
  spec = pipeline.PipelineSpec(split="train", global_batch_size=12, image_size=16,
                               train=True)
  with pytest.raises(ValueError, match="batch size 12 must be divisible by 8"):
    pipeline.InputPipeline(_source(16), spec, mesh)


def test_normalizations_match_their_formulas_and_invert_for_pictures():
  pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
  symmetric = pipeline.normalize(pixels, "symmetric")
  np.testing.assert_array_equal(symmetric, pixels.astype(np.float32) / 127.5 - 1.0)
  imagenet = pipeline.normalize(pixels, "imagenet")
  expected = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(imagenet, expected, rtol=1e-5, atol=1e-5)
  for name in pipeline.NORMALIZATIONS:
    np.testing.assert_allclose(pipeline.to_symmetric(pipeline.normalize(pixels, name), name),
                               symmetric, atol=1e-5)


def test_photometric_views_are_reproducible_and_leave_geometry_and_labels_alone(scenes64):
  record = scenes64.split("train")[0]
  plain = pipeline.MakeViews(32, 2, views.CropSpec())
  coloured = pipeline.MakeViews(32, 2, views.CropSpec(), photometric="slotcon")
  a = coloured.random_map(record, np.random.default_rng(3))
  b = coloured.random_map(record, np.random.default_rng(3))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  reference = plain.random_map(record, np.random.default_rng(3))
  for key in ("box", "flip", "segmentation"):
    np.testing.assert_array_equal(a[key], reference[key])
  # View 1 is always blurred (p = 1): never the plain pixels.
  assert not np.array_equal(a["image"][0], reference["image"][0])
