"""PAT: the pyramid networks (bottom-up composition, top-down pictures), the
losses against direct formulas, the open-vocabulary and pyramid evaluators,
and the method through the core over a frozen backbone: the backbone never
moves, 1 and 8 devices agree, held-out classes stay out of training, export
and `sgc-segment`."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from sgc_jax.bundle import inference
from sgc_jax.config_lib import ConfigError
from sgc_jax.configs import pat_scenes
from sgc_jax.core import class_embeddings, loop
from sgc_jax.core.method import Levels, Prediction
from sgc_jax.evaluators import open_vocab, pyramid
from sgc_jax.methods import pat
from sgc_jax.models import codebook as codebook_lib
from sgc_jax.models import pat as pat_model
from sgc_jax.modes import export, train
from sgc_jax.ops import grids
from sgc_jax.runtime import sharding

from test_slotcon_method import train_batches

TEXT_DIM = 32


def tiny_pat_config(data_dir, **model):
  config = pat_scenes.get_config("size=32,steps=4")
  config.data.update(dict(name="sgc_scenes/smoke64", data_dir=data_dir, batch_size=8,
                          worker_count=0))
  config.log_every = 1
  config.checkpoint.update(dict(every=2, keep=3))
  for name in ("reconstruction", "pyramid", "open_vocab", "pictures"):
    config.evals[name]["every"] = 4
  config.evals.pictures.num_examples = 2
  config.model.backbone.update(dict(arch="vit_small", patch_size=8, blocks=(6, 12)))
  config.model.update(dict(strides=(4, 8), dim=32, num_codes=(16, 16), decoder_ch=32,
                           upsample_ch=(32, 32), fuse_ch=32))
  config.model.text.dim = TEXT_DIM
  config.model.update(model)
  return config


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, scenes64):
  """Class embeddings from 'another text encoder': random vectors by name."""
  rng = np.random.default_rng(3)
  path = str(tmp_path_factory.mktemp("text") / "names.npz")
  np.savez(path, **{n: rng.normal(size=TEXT_DIM) for n in scenes64.class_names})
  return path


# ------------------------------------------------------------------ networks


def _net_config(strides=(4, 8, 16), size=32):
  codebook = codebook_lib.CodebookConfig(mode="ema", num_codes=8, dim_sem=32, dim_det=0)
  return pat_model.PATConfig(image_size=size, strides=strides, dim=32,
                             codebooks=(codebook,) * len(strides), decoder_ch=32,
                             upsample_ch=(32, 32), fuse_ch=32, text_dim=16)


def test_area_downsample_is_the_block_mean():
  x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  want = x.reshape(2, 2, 4, 3, 4, 3).mean((2, 4))
  np.testing.assert_allclose(np.asarray(grids.area_downsample(jnp.asarray(x), 4)), want,
                             rtol=1e-6)


def test_composition_is_bottom_up_and_pictures_top_down():
  """c_l holds q_0..q_l (a coarser code never reaches a finer level's c), and
  each level's picture reads its own and the coarser levels only."""
  config = _net_config()
  model = pat_model.PAT(config)
  rng = np.random.default_rng(0)
  maps = (jnp.asarray(rng.normal(size=(2, 4, 4, 24)), jnp.float32),)
  variables = model.init(jax.random.PRNGKey(0), maps)
  qs = [jnp.asarray(rng.normal(size=(2, 32 // s, 32 // s, 32)), jnp.float32)
        for s in config.strides]
  composed = model.apply(variables, qs, method=pat_model.PAT.composed)
  np.testing.assert_array_equal(composed[0], qs[0])
  changed = model.apply(variables, [qs[0], qs[1] + 1.0, qs[2]], method=pat_model.PAT.composed)
  np.testing.assert_array_equal(changed[0], composed[0])
  assert not np.allclose(changed[1], composed[1]) and not np.allclose(changed[2], composed[2])

  def pictures(c):
    return model.apply(variables, c, method=lambda m, c: m.decoder(c))[1]
  base = pictures(composed)
  moved = pictures([composed[0] + 1.0] + list(composed[1:]))
  np.testing.assert_allclose(moved[1], base[1])
  np.testing.assert_allclose(moved[2], base[2])
  assert not np.allclose(moved[0], base[0])
  for s, picture in zip(config.strides, base):
    assert picture.shape == (2, 32 // s, 32 // s, 3)
  out = model.apply(variables, maps, mutable=["codebook"])[0]
  assert out["reconstruction"].shape == (2, 32, 32, 3)
  np.testing.assert_allclose(np.linalg.norm(out["semantic"], axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("strides", (4, 12), "each twice the last"),
    ("strides", (3, 6), "powers of two"),
    ("num_codes", (16,), "1 codebooks for 2 levels"),
    ("upsample_ch", (32,), "one width per x2 stage"),
    ("dim", 48, "multiple of 32"),
])
def test_bad_network_fields_are_config_errors(data_dir, field, value, message):
  config = tiny_pat_config(data_dir, **{field: value})
  with pytest.raises(ConfigError, match=message):
    pat.PATMethod.validate(config)


def test_bad_method_fields_are_config_errors(data_dir, scenes64, text_file):
  config = tiny_pat_config(data_dir, unseen_classes=("ball",))
  with pytest.raises(ConfigError, match="closed vocabulary"):
    pat.PATMethod.validate(config)
  config = tiny_pat_config(data_dir)
  config.data.normalization = "imagenet"
  with pytest.raises(ConfigError, match="symmetric"):
    pat.PATMethod.validate(config)
  config = tiny_pat_config(data_dir, unseen_classes=("zebra",))
  config.model.text.update(dict(kind="file", file=text_file))
  with pytest.raises(ConfigError, match="'zebra' not among the data set's classes"):
    pat.PATMethod.validate_data(config, scenes64)
  config = tiny_pat_config(data_dir)
  config.model.text.kind = "clip"
  with pytest.raises(ConfigError, match="CLIP backbone"):
    pat.PATMethod.validate(config)


def test_coco_recipe_validates_once_given_its_files():
  from sgc_jax.configs import pat_coco
  config = pat_coco.get_config()
  with pytest.raises(ConfigError, match="backbone.kind='clip' with weights"):
    pat.PATMethod.validate(config)
  config.model.backbone.weights = "ViT-B-16.pt"
  config.model.text.vocabulary = "bpe_simple_vocab_16e6.txt.gz"
  pat.PATMethod.validate(config)
  net = pat.pat_config(config, 120)
  assert [net.grid(l) for l in range(4)] == [112, 56, 28, 14]
  assert config.evals.pyramid.every == config.evals.open_vocab.every == 10_000


def test_a_resume_may_change_weights_but_not_the_state_shape(data_dir):
  config = tiny_pat_config(data_dir)
  method = pat.PATMethod(config, sharding.create_mesh(devices=jax.devices()[:1]),
                         [f"c{i}" for i in range(4)])
  saved = config.to_dict()
  now = tiny_pat_config(data_dir, semantic_weight=0.3, semantic_temperature=0.1,
                        fusion_weight=2.0).to_dict()
  assert method.state_config_differences(saved, now) == []
  now = tiny_pat_config(data_dir, num_codes=(16, 32)).to_dict()
  assert method.state_config_differences(saved, now) == [
      "model.num_codes: (16, 16) in the checkpoint, (16, 32) now"]


def test_text_files_are_checked(tmp_path):
  names = ("sky", "ball")
  path = str(tmp_path / "t.npz")
  np.savez(path, sky=np.ones(4), ball=np.array([3.0, 4.0, 0.0, 0.0]))
  np.testing.assert_allclose(class_embeddings.normalize(class_embeddings.from_file(path, names)),
                             [[0.5] * 4, [0.6, 0.8, 0, 0]], rtol=1e-6)
  for arrays, message in (({"sky": np.ones(4)}, "no vector for 'ball'"),
                          ({"sky": np.ones(4), "ball": np.ones(3)}, "shapes"),
                          ({"sky": np.ones(4), "ball": np.full(4, np.nan)}, "finite"),
                          ({"sky": np.ones(4), "ball": np.zeros(4)}, "zero vector")):
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=f"text.file={path}: .*{message}"):
      class_embeddings.from_file(path, names)
  with open(path, "wb") as f:
    f.write(b"not a zip")
  with pytest.raises(ConfigError, match="not a readable .npz"):
    class_embeddings.from_file(path, names)


def test_cross_entropy_ignores_unlabelled_pixels_and_padding():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 4, 4, 5)).astype(np.float32)
  labels = rng.integers(0, 5, size=(3, 4, 4))
  labels[0, :2] = pat.IGNORE
  weight = np.array([1.0, 1.0, 0.0], np.float32)  # the last example is padding
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_p, np.where(labels == pat.IGNORE, 0, labels)[..., None],
                              -1)[..., 0]
  valid = (labels != pat.IGNORE) & (weight[:, None, None] > 0)
  want = -picked[valid].mean()
  got = pat._cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weight))
  assert float(got) == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ evaluators


def test_open_vocab_confusion_and_subset_means():
  rng = np.random.default_rng(2)
  predicted = rng.integers(0, 4, size=(3, 6, 6))
  labels = rng.integers(0, 4, size=(3, 6, 6))
  labels[1, 0] = 255
  weight = np.array([1.0, 1.0, 0.0])
  got = np.asarray(open_vocab.confusion(jnp.asarray(predicted), jnp.asarray(labels),
                                        jnp.asarray(weight, jnp.float32), 4))
  keep = (labels < 4) & (weight[:, None, None] > 0)
  want = np.zeros((4, 4))
  np.add.at(want, (predicted[keep], labels[keep]), 1)
  np.testing.assert_array_equal(got, want)
  # IoU = hits / (predicted + true - hits): class 0, 2 / (3 + 3 - 2) = 0.5;
  # class 1, 3 / (4 + 4 - 3) = 0.6; class 2 absent from both.
  matrix = np.array([[2, 1, 0], [1, 3, 0], [0, 0, 0]], np.float64)
  assert open_vocab.class_subset_miou(matrix, (0,)) == pytest.approx(0.5)
  assert open_vocab.class_subset_miou(matrix, (0, 1, 2)) == pytest.approx(0.55)
  assert open_vocab.class_subset_miou(matrix, (2,)) is None
  assert open_vocab.class_subset_miou(matrix, ()) is None


def test_open_vocab_reports_each_class_map_per_class():
  from types import SimpleNamespace
  from sgc_jax.core import evaluation
  from sgc_jax.modes.eval_checkpoint import markdown
  # [predicted, true]: class a 2 / (4 + 3 - 2) = 0.4; b 3 / (4 + 4 - 3) = 0.6;
  # c in neither; d 1 / (1 + 2 - 1) = 0.5 (held out).
  matrix = np.array([[2, 1, 0, 1], [1, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], np.float64)
  method = SimpleNamespace(num_classes=4, unseen_class_ids=(3,),
                           class_names=("a", "b", "c", "d"))
  results = open_vocab.OpenVocab("v", {"every": 1}).finish(
      {"pat": matrix, "branch": np.eye(4)}, None, SimpleNamespace(method=method))
  assert [results[f"pat_map_iou/{c}"] for c in "abcd"] == pytest.approx([0.4, 0.6, None, 0.5])
  assert results["pat_miou"] == pytest.approx(0.5)
  assert results["pat_miou_unseen"] == pytest.approx(0.5)
  assert [results[f"branch_map_iou/{c}"] for c in "abd"] == [1.0, 1.0, 1.0]
  columns = evaluation.class_columns(results, method.class_names)
  assert columns == [("pat_map_iou", "pat map IoU", ".3f"),
                     ("branch_map_iou", "branch map IoU", ".3f")]
  table = markdown({**results, "class_names": list(method.class_names)})
  assert "| class | pat map IoU | branch map IoU |" in table
  assert "| b | 0.600 | 1.000 |" in table


def test_pyramid_evaluator_measures_each_level_against_its_grid():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(-1, 1, size=(2, 1, 16, 16, 3)), jnp.float32)
  target = grids.area_downsample(x[:, 0], 4)
  indices = (jnp.asarray(rng.integers(0, 5, size=(2, 4, 4))),
             jnp.asarray(rng.integers(0, 3, size=(2, 2, 2))))
  pictures = (target, grids.area_downsample(x[:, 0], 8) + 0.5)
  batch = {"image": x, "mask": jnp.array([True, True])}
  sums = pyramid.Pyramid("p", {"every": 1}).batch_sums(
      Prediction(indices[0], levels=Levels(indices, pictures)), batch, None, (5, 3))
  assert float(sums["l1_0"]) == 0 and float(sums["psnr_0"]) == 2 * 100  # psnr's cap
  clipped = np.minimum(np.asarray(pictures[1]), 1.0)  # the evaluator clips to [-1, 1]
  want = np.abs(clipped - np.asarray(grids.area_downsample(x[:, 0], 8))).mean((1, 2, 3))
  np.testing.assert_allclose(float(sums["l1_1"]), want.sum(), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(sums["usage_0"]),
                                np.bincount(np.asarray(indices[0]).ravel(), minlength=5))


# ------------------------------------------------------------------ the method


def _run(config, mesh, dataset, steps):
  method = pat.PATMethod.build(config, mesh, dataset)
  state = method.initial_state(method.create_train_state(config.seed))
  batches = train_batches(config, mesh, dataset)
  step, history = None, []
  for _ in range(steps):
    batch = next(batches)
    step = step or method.jit_train_step(False, batch)
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  return method, state, history


def test_backbone_frozen_held_out_classes_and_one_and_eight_devices(data_dir, scenes64,
                                                                    text_file):
  config = tiny_pat_config(data_dir, unseen_classes=("ball", "star"))
  config.model.text.update(dict(kind="file", file=text_file))
  config.model.codebook.mode = "sgc"
  one = sharding.create_mesh(devices=jax.devices()[:1])
  method, state_1, history_1 = _run(config, one, scenes64, 2)
  _, state_8, history_8 = _run(config, sharding.create_mesh(), scenes64, 2)
  for m1, m8 in zip(history_1, history_8):
    assert np.isfinite(m1["loss/total"]) and m1["loss/semantic"] > 0
    assert float(m8["loss/total"]) == pytest.approx(float(m1["loss/total"]), rel=1e-4)
  for a, b in zip(jax.tree.leaves((state_1.params, state_1.codebook)),
                  jax.tree.leaves((state_8.params, state_8.codebook))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-5)
  initial = method.initial_state(method.create_train_state(config.seed))
  for got, want in zip(jax.tree.leaves(state_1.backbone), jax.tree.leaves(initial.backbone)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(initial.params),
                                                 jax.tree.leaves(state_1.params))]
  assert all(moved)
  size = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))  # noqa: E731
  assert size(state_1.opt_state) < 2 * size(state_1.params) + 16
  # Held-out classes: no training label, no code of theirs (sgc allocates the seen ones).
  names = scenes64.class_names
  for name in ("ball", "star"):
    assert method.train_label[names.index(name)] == pat.IGNORE
  seen = [i for i in range(len(names)) if names[i] not in ("ball", "star")]
  np.testing.assert_array_equal(method.train_label[seen], np.arange(len(seen)))
  code_class = np.asarray(state_1.codebook["codebook_0"]["code_class"])
  assert set(code_class) == set(range(len(seen)))


def test_gan_phase_and_a_term_turned_off_through_the_loop(data_dir, scenes64, tmp_path):
  """One GAN step through the core's loop with the semantic term off (the
  progress bar names it: the loop shows what is left)."""
  config = tiny_pat_config(data_dir, semantic_weight=0.0)
  config.loss.update(dict(disc_start=0, disc_weight=0.5))
  config.total_steps = 1
  config.evals = {}
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 1 and "loss/semantic" not in metrics
  assert metrics["loss/gan"] != 0 and np.isfinite(metrics["disc_loss"])
  assert 0 < metrics["adaptive_weight"] <= config.loss.max_adaptive_weight
  _, method, state, _ = loop.restore_latest(pat.PATMethod, config, workdir)
  assert method.phase(0) is True
  initial = method.create_train_state(config.seed)
  assert not np.allclose(jax.tree.leaves(initial.disc_params)[0],
                         jax.tree.leaves(state.disc_params)[0])


def test_trains_evaluates_exports_and_segments_through_the_core(data_dir, scenes64, text_file,
                                                                tmp_path):
  config = tiny_pat_config(data_dir, unseen_classes=("ball",))
  config.model.text.update(dict(kind="file", file=text_file))
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 4 and np.isfinite(metrics["loss/total"])
  for key in ("pat_miou_seen", "pat_miou_unseen", "branch_miou", "psnr_0", "psnr_1",
              "codebook_usage_1", "psnr", "ssim"):
    assert 0 <= metrics[f"val/{key}"] <= (100 if "psnr" in key else 1), key
  assert "val/baseline_miou" not in metrics  # a DINO backbone has no text space
  written = os.listdir(os.path.join(workdir, "images"))
  assert {name.split("_")[0] for name in written} == {"reconstructions", "levels"}, written
  dataset, method, state, _ = loop.restore_latest(pat.PATMethod, config, workdir)
  variables = loop.prediction_variables(method, state, dataset, config)
  images = np.stack([scenes64.split("validation")[i]["image"] for i in range(3)])
  images = images[:, :32, :32].astype(np.float32) / 127.5 - 1

  bundle = export.export_checkpoint(config, workdir)
  description = json.load(open(os.path.join(bundle, "model.json")))
  assert description["method"] == "pat" and description["grids"] == [8, 4]
  assert description["unseen_classes"] == ["ball"]
  predictions = jax.jit(method.predict)(variables, images)
  subset = np.asarray(variables["text"])[[1, 4]]
  for use_model_code in (False, True):
    loaded = inference.load(bundle, use_model_code=use_model_code)
    indices = loaded.call("encode_levels", images)
    np.testing.assert_array_equal(indices[0], predictions.indices)
    np.testing.assert_allclose(loaded.call("decode_levels", indices), predictions.reconstruction,
                               atol=1e-5)
    np.testing.assert_array_equal(loaded.call("segment", images),
                                  predictions.class_maps["pat"])
    two = loaded.call("segment_with_text", (images, subset))
    # Among two classes, a pixel takes the one of the two it scores higher.
    logits = np.asarray(method.net.class_logits(variables, images, jnp.asarray(
        np.asarray(variables["text"])))["pat"])
    np.testing.assert_array_equal(two, np.argmax(logits[..., [1, 4]], -1))

  folder = tmp_path / "images"
  folder.mkdir()
  for i, image in enumerate(images):
    PIL.Image.fromarray(((image + 1) * 127.5).round().astype(np.uint8)).save(folder / f"{i}.png")
  out = tmp_path / "out"
  run = lambda *args: subprocess.run(  # noqa: E731
      [sys.executable, "-c", "import sys; from sgc_jax.bundle import cli; "
       "cli.segment_main(sys.argv[1:])", str(folder), "--bundle", bundle, "--out",
       str(out), *args], capture_output=True, text=True)
  bad = run("--classes", "sky,zebra")
  assert bad.returncode == 1 and not out.exists(), bad.stderr
  assert bad.stderr.strip().splitlines() == [
      "error: --classes: 'zebra' not among the classes of this closed-vocabulary bundle ("
      + ", ".join(scenes64.class_names) + "); a bundle with a text tower (CLIP) takes any names"]
  good = run("--classes", "grass, water")
  assert good.returncode == 0, good.stderr
  assert (out / "classes.txt").read_text().split("\n")[:2] == ["grass", "water"]
  got = np.stack([np.asarray(PIL.Image.open(out / f"{i}_classes.png")) for i in range(3)])
  names = list(scenes64.class_names)
  want = np.argmax(logits[..., [names.index("grass"), names.index("water")]], -1)
  np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ over CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  """(weights .npz, vocabulary) of a tiny CLIP the test makes, whose text
  tower reads the tiny BPE vocabulary of tests/test_clip.py."""
  from sgc_jax.convert import clip as clip_convert
  from sgc_jax.models import clip
  from test_clip import TINY_MERGES, _vocab_file, clip_state_dict, write_state_dict
  config = clip.CLIPConfig(vision_width=32, vision_layers=3, vision_heads=4, patch_size=8,
                           image_size=32, embed_dim=TEXT_DIM, context_length=12, vocab_size=527,
                           text_width=24, text_heads=2, text_layers=2)
  folder = tmp_path_factory.mktemp("clip")
  pth = write_state_dict(str(folder / "clip.pt"), clip_state_dict(config))
  weights = str(folder / "clip.npz")
  assert clip_convert.main([pth, weights, "--vision_heads", "4", "--text_heads", "2"]) in (0,
                                                                                          None)
  return weights, _vocab_file(folder / "bpe.txt.gz", TINY_MERGES)


def test_over_clip_open_vocabulary_fusion_export_and_any_class_names(data_dir, scenes64,
                                                                     tiny_clip, tmp_path):
  from sgc_jax.convert import clip as clip_convert
  from sgc_jax.models import clip, clip_tokenizer
  weights, vocabulary = tiny_clip
  config = tiny_pat_config(data_dir, unseen_classes=("ball", "crate"), fusion_weight=0.5)
  config.model.backbone.update(dict(kind="clip", arch=None, weights=weights, blocks=(1, 3)))
  config.model.text.update(dict(kind="clip", vocabulary=vocabulary,
                                templates=("a photo of a {}.", "a {}")))
  config.total_steps = 2
  for name in ("reconstruction", "pyramid", "open_vocab", "pictures"):
    config.evals[name]["every"] = 2
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  for key in ("baseline_miou", "baseline_miou_unseen", "pat_miou_unseen", "branch_miou_seen"):
    assert 0 <= metrics[f"val/{key}"] <= 1, key
  dataset, method, state, _ = loop.restore_latest(pat.PATMethod, config, workdir)
  variables = loop.prediction_variables(method, state, dataset, config)

  # The class embeddings: the text tower on each prompt, unit vectors
  # averaged over the templates, normalised.
  fields, loaded = clip_convert.load(weights)
  tower = clip.text_tower(clip_convert.config(fields))
  tokenizer = clip_tokenizer.Tokenizer(vocabulary)
  for i, name in enumerate(scenes64.class_names):
    prompts = [f"a photo of a {name}.", f"a {name}"]
    vectors = np.asarray(tower.apply({"params": loaded["params"]["text"]},
                                     tokenizer.tokenize(prompts, 12)), np.float64)
    mean = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(np.asarray(variables["text"])[i], mean / np.linalg.norm(mean),
                               rtol=1e-4, atol=1e-6)
  # Fused = baseline + fusion_weight x branch; the baseline is the MaskCLIP
  # features' cosine with the class embeddings / baseline_temperature.
  images = np.stack([scenes64.split("validation")[i]["image"] for i in range(2)])
  images = images[:, :32, :32].astype(np.float32) / 127.5 - 1
  text = jnp.asarray(variables["text"])
  logits = method.net.class_logits(variables, jnp.asarray(images), text)
  np.testing.assert_allclose(logits["pat"], logits["baseline"] + 0.5 * logits["branch"],
                             rtol=1e-5, atol=1e-5)
  vision = clip.vision_tower(clip_convert.config(fields), dense="maskclip")
  mean, std = np.asarray(clip.MEAN), np.asarray(clip.STD)
  dense = np.asarray(vision.apply({"params": loaded["params"]["visual"]},
                                  ((images + 1) / 2 - mean) / std)["dense"], np.float64)
  dense /= np.linalg.norm(dense, axis=-1, keepdims=True)
  coarse = dense @ np.asarray(text, np.float64).T / config.model.baseline_temperature
  want = jax.image.resize(coarse, (2, 32, 32, coarse.shape[-1]), "bilinear")
  np.testing.assert_allclose(logits["baseline"], want, rtol=1e-3, atol=1e-3)

  bundle = export.export_checkpoint(config, workdir)
  loaded_bundle = inference.load(bundle)
  assert "embed_text" in loaded_bundle.functions
  assert os.path.isfile(os.path.join(bundle, "vocabulary.txt.gz"))
  from sgc_jax.bundle import cli
  from sgc_jax.convert import clip as clip_convert
  names = ["zebra", "sky"]
  vectors = cli.embed_with_bundle(loaded_bundle, names)
  want = class_embeddings.embed_class_names(clip_convert.text_tower(weights), vocabulary,
                                            ("a photo of a {}.", "a {}"), names)
  np.testing.assert_allclose(vectors, want / np.linalg.norm(want, axis=1, keepdims=True),
                             rtol=1e-4, atol=1e-6)
  folder = tmp_path / "images"
  folder.mkdir()
  for i, image in enumerate(images):
    PIL.Image.fromarray(((image + 1) * 127.5).round().astype(np.uint8)).save(folder / f"{i}.png")
  out = tmp_path / "out"
  run = subprocess.run(
      [sys.executable, "-c", "import sys; from sgc_jax.bundle import cli; "
       "cli.segment_main(sys.argv[1:])", str(folder), "--bundle", bundle, "--out",
       str(out), "--classes", "zebra,sky"], capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  got = np.stack([np.asarray(PIL.Image.open(out / f"{i}_classes.png")) for i in range(2)])
  np.testing.assert_array_equal(got, loaded_bundle.call("segment_with_text", (images, vectors)))
