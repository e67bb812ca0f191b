"""SlotCon through the core: the overlap alignment of the two views, a short
run (finite losses, the teacher's EMA and centre as the official formulas),
1 vs 8 devices, evaluation and export."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.bundle import inference
from sgc_jax.configs import slotcon_scenes
from sgc_jax.core import ema, loop
from sgc_jax.methods import slotcon
from sgc_jax.modes import eval_checkpoint, export, train
from sgc_jax.runtime import sharding


def _image_coordinate_dots(box, flip, size):
  """dots [h, w, 2] of a view: the (x, y) image coordinates its feature pixels
  see (a crop `box` = (y0, x0, y1, x1) of the unit square, flipped or not)."""
  centres = (np.arange(size) + 0.5) / size
  xs = box[1] + centres * (box[3] - box[1])
  ys = box[0] + centres * (box[2] - box[0])
  if flip:
    xs = xs[::-1]
  return np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), -1).astype(np.float32)


def test_the_aligned_overlaps_of_two_views_see_the_same_image_points():
  rng = np.random.default_rng(0)
  size = 8
  for _ in range(20):
    boxes = np.zeros((1, 2, 4), np.float32)
    for v in range(2):
      y0, x0 = rng.uniform(0, 0.2, 2)
      boxes[0, v] = (y0, x0, y0 + rng.uniform(0.6, 0.8), x0 + rng.uniform(0.6, 0.8))
    flips = rng.uniform(size=(1, 2)) < 0.5
    coords = slotcon.overlap_boxes(jnp.asarray(boxes), jnp.asarray(flips))
    aligned = [np.asarray(slotcon.align(
        jnp.asarray(_image_coordinate_dots(boxes[0, v], flips[0, v], size))[None],
        coords[:, v], jnp.asarray(flips[:, v])))[0] for v in range(2)]
    # Both show the overlap, un-flipped, at the same points of the image: the
    # centres of an 8 x 8 grid over it. (Bins at the overlap's edge sample
    # within half a pixel of a crop's edge, where bilinear sampling clamps, as
    # torchvision's does: compared inside.)
    top, left = boxes[0, :, 0].max(), boxes[0, :, 1].max()
    bottom, right = boxes[0, :, 2].min(), boxes[0, :, 3].min()
    centres = (np.arange(size) + 0.5) / size
    expected = np.stack(np.broadcast_arrays(
        (left + centres * (right - left))[None, :], (top + centres * (bottom - top))[:, None]), -1)
    for view in aligned:
      np.testing.assert_allclose(view[1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-5)


def shrink(config, data_dir):
  """A recipe of sgc_scenes cut to a test: smoke64, batch 8, a log line
  every step, checkpoints at 2 and 4, evaluators at 4 on 16 probe images."""
  config.data.update(dict(name="sgc_scenes/smoke64", data_dir=data_dir, batch_size=8,
                          worker_count=0))
  config.log_every = 1
  config.checkpoint.update(dict(every=2, keep=3))
  config.evals.codebook.every = 4
  config.evals.segmentation.update(dict(probe_images=16, probe_steps=20))
  config.evals.pictures.update(dict(every=4, num_examples=2))
  return config


def tiny_slotcon_config(data_dir, **overrides):
  config = shrink(slotcon_scenes.get_config("size=32,steps=4"), data_dir)
  config.model.update(dict(dim_hidden=64, dim_out=32, num_prototypes=8))
  config.update(overrides)
  return config


def train_batches(config, mesh, dataset):
  """The config's training batches on `mesh` (one data shard, seed 0)."""
  from sgc_jax.data import pipeline, views
  spec = pipeline.PipelineSpec(split="train", global_batch_size=config.data.batch_size,
                               image_size=config.data.image_size, train=True,
                               num_views=config.data.num_views,
                               crop=views.CropSpec(**config.data.crop), seed=0, num_shards=1,
                               normalization=config.data.normalization)
  return pipeline.InputPipeline(dataset.split("train"), spec, mesh)


def _run(config, mesh, dataset, steps):
  method = slotcon.SlotConMethod(config, mesh, dataset.class_names)
  state = method.create_train_state(config.seed)
  batches = train_batches(config, mesh, dataset)
  step, history = None, []
  for _ in range(steps):
    batch = next(batches)
    step = step or method.jit_train_step(None, batch)
    before = jax.device_get((state.params["net"], state.teacher_params, state.center))
    state, metrics = step(state, batch)
    history.append((before, jax.device_get(metrics)))
  return state, history


def test_one_and_eight_devices_agree_and_the_teacher_follows_the_official_ema(data_dir, scenes64):
  """Batch norm over the global batch and keys gathered over it make this a
  real test: 8 shards must give the 1-device numbers."""
  config = tiny_slotcon_config(data_dir)
  one = sharding.create_mesh(devices=jax.devices()[:1])
  state_1, history_1 = _run(config, one, scenes64, 2)
  state_8, history_8 = _run(config, sharding.create_mesh(), scenes64, 2)
  for (_, m1), (_, m8) in zip(history_1, history_8):
    for name in ("loss/group", "loss/contrast"):
      assert np.isfinite(m1[name])
      assert float(m8[name]) == pytest.approx(float(m1[name]), rel=1e-4, abs=1e-5), name
  chex.assert_trees_all_close(state_1.teacher_params, state_8.teacher_params,
                              rtol=1e-4, atol=1e-5)
  # The teacher: momentum m_k = 1 - (1 - 0.99)(cos(pi k / K) + 1) / 2 at step k,
  # applied to the student of before the step.
  (student, teacher, _), metrics = history_1[1]
  momentum = 1 - (1 - 0.99) * (np.cos(np.pi * 1 / config.total_steps) + 1) / 2
  assert float(metrics["teacher_momentum"]) == pytest.approx(momentum, rel=1e-6)
  _, history_after = history_1[0], None
  expected = jax.tree.map(lambda t, s: momentum * t + (1 - momentum) * s, teacher, student)
  chex.assert_trees_all_close(state_1.teacher_params, expected, rtol=1e-6, atol=1e-7)
  assert float(ema.cosine_momentum(0, 4, 0.99)) == pytest.approx(0.99)


def test_trains_resumes_evaluates_and_exports_through_the_core(data_dir, scenes64, tmp_path):
  config = tiny_slotcon_config(data_dir)
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 4 and np.isfinite(metrics["loss/total"])
  assert 0 < metrics["val/hungarian_miou"] <= 1 and 0 < metrics["val/majority_pixel_accuracy"] <= 1
  for name in ("segments", "unit_maps"):
    assert os.path.exists(os.path.join(workdir, "images", f"{name}_0000004.png"))
  results = eval_checkpoint.evaluate_checkpoint(config, workdir)
  assert results["method"] == "slotcon" and 0 < results["probe_miou"] <= 1
  untrained = eval_checkpoint.evaluate_checkpoint(config, str(tmp_path / "init"), initial=True)
  assert untrained["step"] == 0 and 0 < untrained["hungarian_miou"] <= 1
  bundle = export.export_checkpoint(config, workdir)
  description = json.load(open(os.path.join(bundle, "model.json")))
  assert description["method"] == "slotcon" and description["functions"] == ["features",
                                                                             "segment"]
  _, method, state, _ = loop.restore_latest(slotcon.SlotConMethod, config, workdir)
  images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  loaded = inference.load(bundle)
  segments = loaded.call("segment", images)
  assert segments.shape == (3, 32, 32) and segments.max() < 8
  functions = dict(method.export_functions())
  want = jax.jit(functions["segment"][0])(method.eval_variables(state), images)
  np.testing.assert_array_equal(segments, np.asarray(want))
  features = loaded.call("features", images)
  assert features.shape == (3, 4, 4, 512)  # the teacher backbone's (ResNet-18: 512)
  want = jax.jit(functions["features"][0])(method.eval_variables(state), images)
  np.testing.assert_allclose(features, np.asarray(want), rtol=1e-5, atol=1e-5)
  # The dense-feature protocol ran in --mode=eval on those backbone features.
  for key in ("feature_hungarian_miou", "feature_probe_miou"):
    assert 0 < results[key] <= 1, key


@pytest.mark.slow  # three compilations of the step: 1 to 3 minutes on 2 cores
def test_a_contrast_capacity_holding_every_slot_gives_the_dense_loss(data_dir, scenes64):
  mesh = sharding.create_mesh(devices=jax.devices()[:1])
  losses = {}
  for capacity in (0, 8 * 8, 3):  # batch 8 x 8 prototypes = 64 slots
    config = tiny_slotcon_config(data_dir)
    config.model.contrast_capacity = capacity
    _, history = _run(config, mesh, scenes64, 1)
    losses[capacity] = history[0][1]
  assert float(losses[64]["loss/contrast"]) == pytest.approx(float(losses[0]["loss/contrast"]),
                                                             rel=1e-5)
  assert float(losses[64]["loss/group"]) == float(losses[0]["loss/group"])
  assert int(losses[64]["slots_over_capacity"]) == 0
  assert int(losses[3]["slots_over_capacity"]) > 0
  assert float(losses[3]["loss/contrast"]) != pytest.approx(float(losses[0]["loss/contrast"]))


@pytest.mark.slow  # three short runs: 2 to 4 minutes on 2 cores
def test_resume_is_exact(data_dir, tmp_path):
  """Photometric views, the teacher's EMA and the centre all resume bit-exactly:
  a run resumed from its step-2 checkpoint ends where the straight run does."""
  import shutil
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  config = tiny_slotcon_config(data_dir)
  train.train_and_evaluate(config, straight)
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
  assert train.train_and_evaluate(config, resumed)["step"] == 4
  states = [loop.restore_latest(slotcon.SlotConMethod, config, w)[2] for w in (straight, resumed)]
  chex.assert_trees_all_equal(states[0], states[1])
