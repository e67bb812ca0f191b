"""Real photographs end to end: a CamVid subset (24 training, 8 validation
frames of ../shared/data/camvid) through the folder builder, the CamVid
recipe (2 steps, GAN on), whole-frame evaluation with per-class results
checked against NumPy, and the exported bundle."""

import json
import os

import numpy as np
import PIL.Image
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAMVID = os.path.join(os.path.dirname(ROOT), "shared", "data", "camvid")
if not os.path.isdir(CAMVID):
  pytest.skip(f"{CAMVID} is absent (CamVid is not shipped with the code): skipping the "
              "photograph tests", allow_module_level=True)

from sgc_jax.configs import sgc_camvid  # noqa: E402
from sgc_jax.core import evaluation, loop  # noqa: E402
from sgc_jax.data import folder, pipeline, sources  # noqa: E402
from sgc_jax.modes import eval_checkpoint, export, train  # noqa: E402

SUBSET = {"train": 24, "validation": 8}


@pytest.fixture(scope="module")
def camvid_subset(tmp_path_factory):
  """The first frames of each split, linked into a folder of the same layout,
  prepared as `folder:camvid` under a data_dir."""
  source = tmp_path_factory.mktemp("camvid_subset") / "camvid"
  os.makedirs(source)
  os.symlink(os.path.join(CAMVID, "classes.txt"), source / "classes.txt")
  for split, count in SUBSET.items():
    names = sorted(os.listdir(os.path.join(CAMVID, split, "images")))[:count]
    for kind in ("images", "labels"):
      os.makedirs(source / split / kind)
      for name in names:
        os.symlink(os.path.join(CAMVID, split, kind, name), source / split / kind / name)
  data_dir = str(tmp_path_factory.mktemp("camvid_tfds"))
  folder.prepare(str(source), data_dir, name="camvid")
  return data_dir


@pytest.fixture(scope="module")
def trained(camvid_subset, tmp_path_factory):
  config = sgc_camvid.get_config("quantizer=sgc")
  config.data.data_dir = camvid_subset
  config.data.worker_count = 0
  config.total_steps = 2
  config.loss.disc_start = 1  # the second step trains the generator against the GAN
  config.evals.segmentation.update(probe_images=SUBSET["train"], probe_steps=50)
  config.evals.pictures.num_examples = 2
  workdir = str(tmp_path_factory.mktemp("camvid_run"))
  train.train_and_evaluate(config, workdir)
  results = eval_checkpoint.evaluate_checkpoint(config, workdir)
  return config, workdir, results


def test_the_recipe_reads_camvid_by_name_with_void_as_no_class(camvid_subset):
  dataset = sources.open_dataset("folder:camvid", camvid_subset)
  assert dataset.class_names[:3] == ("sky", "building", "pole")
  assert dataset.num_classes == 11
  record = dataset.split("validation")[0]
  assert record["image"].shape == (360, 480, 3)
  assert (record["segmentation"] == sources.IGNORE_LABEL).any()  # void stays 255


def test_a_folder_name_not_prepared_is_one_line(tmp_path):
  with pytest.raises(sources.DataError, match="not prepared under .*--name=camvid"):
    sources.open_dataset("folder:camvid", str(tmp_path))


def _evaluated_frames(config, method, variables, split="validation"):
  """Every frame of `split` as the evaluators see it (whole, 128x96), with its
  tokens and true labels."""
  dataset = sources.open_dataset(config.data.name, config.data.data_dir)
  examples = pipeline.centred_examples(dataset.split(split), SUBSET[split],
                                       config.data.image_size, frame=pipeline.eval_frame(config))
  images = np.stack([e["image"][0] for e in examples])
  labels = np.stack([e["segmentation"][0] for e in examples])
  indices = np.asarray(method.predict(variables, images).indices)
  return images, labels, indices


def _numpy_iou(predicted_pixels, labels, num_classes):
  labelled = labels < num_classes
  confusion = np.zeros((num_classes + 1, num_classes))
  np.add.at(confusion, (np.minimum(predicted_pixels[labelled], num_classes),
                        labels[labelled]), 1)
  hits = np.diag(confusion[:num_classes])
  union = confusion.sum(0) + confusion[:num_classes].sum(1) - hits
  with np.errstate(invalid="ignore"):
    return np.where(union > 0, hits / union, np.nan), confusion.sum(0)


def test_whole_frames_give_per_class_results_that_numpy_recomputes(trained):
  config, workdir, results = trained
  with open(os.path.join(workdir, "eval", "eval.json")) as f:
    saved = json.load(f)
  with open(os.path.join(CAMVID, "classes.txt")) as f:
    assert saved["class_names"] == f.read().split()
  dataset, method, state, _ = train.restore_latest(config, workdir)
  variables = loop.prediction_variables(method, state, dataset, config)
  images, labels, indices = _evaluated_frames(config, method, variables)
  assert images.shape == (8, 96, 128, 3) and indices.shape == (8, 24, 32)
  factor = 4
  unit_class = method.units(variables).classes
  names = dataset.class_names

  def enlarge(token_map):
    return np.repeat(np.repeat(token_map, factor, 1), factor, 2)

  zero_shot, pixels = _numpy_iou(enlarge(unit_class[indices]), labels, len(names))
  # Many-to-one: each code predicts the class most of its pixels hold.
  code_pixels = np.zeros((len(unit_class), len(names)))
  big = enlarge(indices)
  labelled = labels < len(names)
  np.add.at(code_pixels, (big[labelled], labels[labelled]), 1)
  majority, _ = _numpy_iou(code_pixels.argmax(1)[big], labels, len(names))
  for k, name in enumerate(names):
    for key, expected in (("zero_shot_iou", zero_shot[k]), ("majority_iou", majority[k])):
      got = saved[f"{key}/{name}"]
      if np.isnan(expected):
        assert got is None, (key, name)
      else:
        assert got == pytest.approx(expected, abs=1e-6), (key, name)
    assert saved[f"pixel_share/{name}"] == pytest.approx(pixels[k] / pixels.sum(), abs=1e-6)
    for key in ("probe_iou", "hungarian_iou", "token_share", "units"):
      assert f"{key}/{name}" in saved
  # Void (255) counts nowhere: the class shares of labelled pixels sum to 1.
  assert sum(saved[f"pixel_share/{n}"] for n in names) == pytest.approx(1.0)
  assert saved["zero_shot_miou"] == pytest.approx(np.nanmean(zero_shot), abs=1e-6)
  table = open(os.path.join(workdir, "eval", "eval.md")).read()
  assert "whole frames at 128x96" in table and "| bicyclist |" in table
  assert evaluation.class_columns(saved, names)[0][0] == "zero_shot_iou"
  # Usage on held-out and on training frames (the recipe's 101; the subset has 24).
  assert saved["codebook_usage"] == pytest.approx(
      np.unique(indices).size / len(unit_class), abs=1e-9)
  _, _, train_indices = _evaluated_frames(config, method, variables, "train")
  assert train_indices.shape == (24, 24, 32)
  assert saved["train_codebook_usage"] == pytest.approx(
      np.unique(train_indices).size / len(unit_class), abs=1e-9)
  assert "codebook usage, training images" in table


def test_the_sheet_and_the_per_class_chart_are_written(trained):
  _, workdir, _ = trained
  sheet = np.asarray(PIL.Image.open(os.path.join(workdir, "eval", "reconstructions.png")))
  chart = np.asarray(PIL.Image.open(os.path.join(workdir, "eval", "per_class.png")))
  # Five columns of 128-pixel-wide frames (photo, reconstruction, labels,
  # semantic map, codes) with 2-pixel gaps.
  assert sheet.shape[1] == 5 * 128 + 6 * 2
  assert chart.shape[0] > 11 * 20  # a row per class


def _small(config, data_dir):
  config.data.data_dir = data_dir
  config.data.worker_count = 0
  config.data.batch_size = 8
  config.total_steps = 2
  if "segmentation" in config.evals:
    config.evals.segmentation.update(probe_images=SUBSET["train"], probe_steps=20)
  config.evals.pictures.num_examples = 2
  return config


def test_slotcon_then_acseg_over_its_teacher_on_whole_frames(camvid_subset, tmp_path):
  from sgc_jax.configs import acseg_scenes, slotcon_scenes
  slotcon = _small(slotcon_scenes.get_config("size=64,data=camvid,steps=2"), camvid_subset)
  train.train_and_evaluate(slotcon, str(tmp_path / "slotcon"))
  bundle = export.export_checkpoint(slotcon, str(tmp_path / "slotcon"))
  acseg = _small(acseg_scenes.get_config("size=64,data=camvid,steps=2"), camvid_subset)
  acseg.model.backbone.weights = bundle
  acseg.model.classifier_images = SUBSET["train"]
  train.train_and_evaluate(acseg, str(tmp_path / "acseg"))
  for run in ("slotcon", "acseg"):
    config = slotcon if run == "slotcon" else acseg
    results = eval_checkpoint.evaluate_checkpoint(config, str(tmp_path / run))
    assert results["images"] == SUBSET["validation"]
    assert len([k for k in results if k.startswith("hungarian_iou/")]) == 11
    assert 0 <= results["hungarian_miou"] <= 1
    md = open(tmp_path / run / "eval" / "eval.md").read()
    assert "whole frames at 64x48" in md


def test_pat_on_whole_frames(camvid_subset, tmp_path):
  from sgc_jax.configs import pat_scenes
  config = _small(pat_scenes.get_config("size=64,data=camvid,steps=2"), camvid_subset)
  train.train_and_evaluate(config, str(tmp_path / "pat"))
  results = eval_checkpoint.evaluate_checkpoint(config, str(tmp_path / "pat"))
  assert results["images"] == SUBSET["validation"] and 0 <= results["pat_miou"] <= 1
  assert results["psnr_0"] > 0  # the finest level's picture, on a 12x16 grid


def test_a_whole_480x360_photo_tokenizes_and_decodes_back_to_480x360(trained, tmp_path):
  import sgc_jax
  from sgc_jax.bundle import cli
  config, workdir, _ = trained
  bundle = export.export_checkpoint(config, workdir)
  photos = tmp_path / "photos"
  os.makedirs(photos)
  name = sorted(os.listdir(os.path.join(CAMVID, "validation", "images")))[0]
  os.symlink(os.path.join(CAMVID, "validation", "images", name), photos / name)
  assert cli.tokenize(str(photos), bundle, str(tmp_path / "tokens")) == 1
  stem = os.path.splitext(name)[0]
  with np.load(tmp_path / "tokens" / f"{stem}.npz") as tokens:
    assert tokens["indices"].shape == (90, 120)  # 4x4-pixel tokens of the whole frame
    assert tokens["original_size"].tolist() == [360, 480]
  semantic = PIL.Image.open(tmp_path / "tokens" / f"{stem}_semantic.png")
  assert semantic.size == (480, 360)
  assert cli.detokenize(str(tmp_path / "tokens"), bundle, str(tmp_path / "decoded")) == 1
  decoded = PIL.Image.open(tmp_path / "decoded" / f"{stem}.png")
  assert decoded.size == (480, 360) and decoded.mode == "RGB"
  # The Python API gives the same tokens.
  tokenizer = sgc_jax.load_bundle(bundle)
  photo = np.asarray(PIL.Image.open(photos / name).convert("RGB"), np.float32) / 127.5 - 1
  indices, _ = tokenizer.encode(photo[None])
  with np.load(tmp_path / "tokens" / f"{stem}.npz") as tokens:
    np.testing.assert_array_equal(np.asarray(indices)[0], tokens["indices"])
