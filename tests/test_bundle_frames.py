"""SGC-VQGAN bundles of any image size: encode / decode over images whose sides
are multiples of the encoder's factor, the command lines keeping each photo's
size, and fixed-size bundles of earlier releases keeping their checks."""

import json
import shutil

import jax
import numpy as np
import PIL.Image
import pytest

from sgc_jax.bundle import cli, inference
from sgc_jax.models import conv
from sgc_jax.modes import export, train
from sgc_jax.utils import tree_io
from test_bundle_faults import one_line_error, run_cli
from test_export import bundle  # noqa: F401  (`bundle`: SGC-VQGAN's, module-scoped, any size)
from test_train import tiny_config


@pytest.fixture(scope="module")
def fixed_bundle(data_dir, scenes64, tmp_path_factory):
  """The `bundle` fixture's model exported as bundles were before any-size
  functions: encode / decode of its own size only (the same functions traced
  at images [b, 32, 32, 3] and grids [b, 8, 8])."""
  method = train.build_method(tiny_config(data_dir), scenes64)
  batch, = jax.export.symbolic_shape("b")
  size, grid = method.model_config.resolution, method.model_config.grid

  def fixed(argument):
    shape = (size, size, 3) if len(argument.shape) == 4 else (grid, grid)
    return jax.ShapeDtypeStruct((batch, *shape), argument.dtype)
  functions = {name: (function, fixed(argument))
               for name, (function, argument) in method.export_functions().items()}
  method.export_functions = lambda: functions
  directory = tmp_path_factory.mktemp("fixed") / "bundle"
  export.write_bundle(str(directory), method, method.eval_variables(method.create_train_state(0)),
                      {"step": 0})
  return str(directory)


def images(*shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def save_photo(path, width, height):
  pixels = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), np.uint8)
  PIL.Image.fromarray(pixels).save(path)


def test_square_images_give_the_fixed_size_numbers_bit_for_bit(bundle, fixed_bundle):
  any_size, fixed = inference.load(bundle), inference.load(fixed_bundle)
  assert (any_size.any_size, any_size.factor) == (True, 4)
  assert (fixed.any_size, fixed.factor) == (False, 4)
  ours, theirs = tree_io.flatten(any_size.variables), tree_io.flatten(fixed.variables)
  assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
  square = images(3, 32, 32, 3)
  encoded = any_size.encode(square)
  for got, want in zip(encoded, fixed.encode(square)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(any_size.decode(encoded[0]), fixed.decode(encoded[0]))
  np.testing.assert_array_equal(any_size.call("features", square),
                                fixed.call("features", square))


def test_a_non_square_image_is_its_own_grid_and_decodes_to_its_size(bundle):
  tokenizer = inference.load(bundle)
  photos = images(2, 72, 96, 3)
  indices, semantic = tokenizer.encode(photos)
  assert indices.shape == semantic.shape == (2, 18, 24)
  assert tokenizer.decode(indices).shape == (2, 72, 96, 3)
  assert tokenizer.call("features", photos).shape[:3] == (2, 18, 24)
  # The batch is symbolic too, and the model code computes the same tokens.
  np.testing.assert_array_equal(tokenizer.encode(photos[1:])[0], indices[1:])
  np.testing.assert_array_equal(inference.load(bundle, use_model_code=True).encode(photos)[0],
                                indices)


@pytest.mark.parametrize("height, width", [(1, 1), (2, 2), (1, 3), (2, 5)])
def test_grids_of_a_few_tokens_encode_and_decode(bundle, monkeypatch, height, width):
  """Over symbolic sides every convolution is XLA's, tiny maps' too: the
  numbers are the model code's traced at these sizes with its CPU im2col path
  off. (With it on, maps of 4 pixels at most take it: the same sums rounded
  otherwise, which a 1x1 grid's normalizations enlarge to 1e-3.)"""
  monkeypatch.setattr(conv, "IM2COL_MAX_PIXELS", 0)
  tokenizer, model = inference.load(bundle), inference.load(bundle, use_model_code=True)
  photos = images(2, 4 * height, 4 * width, 3)
  encoded = tokenizer.encode(photos)
  assert encoded[0].shape == encoded[1].shape == (2, height, width)
  for got, want in zip(encoded, model.encode(photos)):
    np.testing.assert_array_equal(got, want)
  decoded = tokenizer.decode(encoded[0])
  assert decoded.shape == photos.shape
  np.testing.assert_array_equal(decoded, model.decode(encoded[0]))


def test_a_model_json_that_names_min_tokens_loads(bundle, tmp_path):
  """The first any-size bundles hold `min_tokens` (5) in model.json: ignored."""
  directory = shutil.copytree(bundle, tmp_path / "bundle")
  description = json.loads((directory / "model.json").read_text())
  (directory / "model.json").write_text(json.dumps({**description, "min_tokens": 5}))
  tokenizer = inference.load(str(directory))
  assert tokenizer.any_size
  indices = np.zeros((1, 3, 3), np.int32)
  np.testing.assert_array_equal(tokenizer.decode(indices), inference.load(bundle).decode(indices))


@pytest.mark.parametrize("shape, message", [
    ((1, 30, 32, 3), r"sides positive multiples of 4 pixels$"),
    ((1, 0, 8, 3), r"sides positive multiples of 4 pixels$"),
    ((32, 32, 3), r"this bundle encodes \[N, H, W, 3\]"),
    ((1, 32, 32, 4), r"this bundle encodes \[N, H, W, 3\]")])
def test_images_of_a_size_the_bundle_does_not_take_are_one_line(bundle, shape, message):
  with pytest.raises(inference.BundleError, match=message) as error:
    inference.load(bundle).encode(np.zeros(shape, np.float32))
  assert len(str(error.value).splitlines()) == 1
  assert str(error.value).startswith(f"images of shape {shape}; ")


@pytest.mark.parametrize("shape", [(1, 0, 8), (1, 8, 0), (8, 8)])
def test_grids_the_bundle_does_not_take_are_one_line(bundle, shape):
  with pytest.raises(inference.BundleError,
                     match=r"this bundle decodes \[N, h, w\] with h, w > 0$") as error:
    inference.load(bundle).decode(np.zeros(shape, np.int32))
  assert len(str(error.value).splitlines()) == 1


def test_a_fixed_size_bundle_keeps_its_checks_and_its_command_lines(fixed_bundle, tmp_path):
  tokenizer = inference.load(fixed_bundle)
  with pytest.raises(inference.BundleError, match=r"shape \(1, 64, 64, 3\); this bundle encodes "
                     r"\[N, 32, 32, 3\]$"):
    tokenizer.encode(np.zeros((1, 64, 64, 3)))
  with pytest.raises(inference.BundleError, match=r"shape \(1, 4, 4\); this bundle decodes "
                     r"\[N, 8, 8\]$"):
    tokenizer.decode(np.zeros((1, 4, 4), np.int32))
  photos = tmp_path / "photos"
  photos.mkdir()
  save_photo(photos / "wide.png", 40, 30)
  tokens, out = tmp_path / "tokens", tmp_path / "out"
  assert cli.tokenize(str(photos), fixed_bundle, str(tokens)) == 1
  with np.load(tokens / "wide.npz") as data:
    assert sorted(data.files) == ["indices", "semantic"] and data["indices"].shape == (8, 8)
    # Resized and centre-cropped, as before.
    want, _ = tokenizer.encode(cli.read_image(str(photos / "wide.png"), 32)[None])
    np.testing.assert_array_equal(data["indices"], want[0])
  assert cli.detokenize(str(tokens), fixed_bundle, str(out)) == 1
  assert PIL.Image.open(out / "wide.png").size == (32, 32)
  np.savez(tokens / "small.npz", indices=np.zeros((6, 6), np.int32))
  line = one_line_error(run_cli("detokenize", tokens, fixed_bundle, out), tokens / "small.npz")
  assert line.endswith("token grid (6, 6), the bundle decodes (8, 8)")


def test_fitted_sizes():
  assert cli.fitted_size(480, 360, 4, 512) == (480, 360)
  assert cli.fitted_size(481, 361, 4, 512) == (480, 360)
  assert cli.fitted_size(482, 362, 4, 512) == (484, 364)  # the nearest multiple
  assert cli.fitted_size(1024, 768, 4, 512) == (512, 384)  # scaled down, aspect kept
  assert cli.fitted_size(2000, 10, 4, 512) == (512, 4)  # one token at least
  assert cli.fitted_size(510, 100, 4, 510) == (508, 100)  # --max_side at most
  assert cli.fitted_size(9, 9, 4, 512) == (8, 8)  # a grid of 2x2 tokens


def test_photos_keep_their_size_through_tokenize_and_detokenize(bundle, tmp_path):
  """480x360 stays 480x360 (a 90x120 grid); 481x361 is tokenized at 480x360
  and written back at 481x361; a photo past --max_side is scaled down to it,
  and written back at its own size; a 9x9 one is a grid of 2x2 tokens. Photos
  of one size share a batch."""
  photos = tmp_path / "photos"
  photos.mkdir()
  for name, width, height in (("exact", 480, 360), ("odd", 481, 361), ("large", 640, 480),
                              ("tiny", 9, 9)):
    save_photo(photos / f"{name}.png", width, height)
  tokens, out = tmp_path / "tokens", tmp_path / "out"
  assert cli.tokenize(str(photos), bundle, str(tokens), batch_size=2, max_side=480) == 4
  tokenizer = inference.load(bundle)
  for name, grid, size in (("exact", (90, 120), (360, 480)), ("odd", (90, 120), (361, 481)),
                           ("large", (90, 120), (480, 640)), ("tiny", (2, 2), (9, 9))):
    with np.load(tokens / f"{name}.npz") as data:
      assert data["indices"].shape == data["semantic"].shape == grid, name
      assert data["original_size"].tolist() == list(size), name
  with np.load(tokens / "odd.npz") as data:
    want, _ = tokenizer.encode(cli.read_photo(str(photos / "odd.png"), (480, 360))[None])
    np.testing.assert_array_equal(data["indices"], want[0])
  assert PIL.Image.open(tokens / "odd_semantic.png").size == (480, 360)
  assert cli.detokenize(str(tokens), bundle, str(out), batch_size=2) == 4
  for name, size in (("exact", (480, 360)), ("odd", (481, 361)), ("large", (640, 480)),
                     ("tiny", (9, 9))):
    assert PIL.Image.open(out / f"{name}.png").size == size, name
  # Written at the decoded size where nothing was resized.
  decoded = tokenizer.decode(np.load(tokens / "exact.npz")["indices"][None])[0]
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / "exact.png")),
                                np.clip(np.rint((decoded + 1) * 127.5), 0, 255))


def test_the_command_lines_refuse_what_an_any_size_bundle_cannot_take_in_one_line(
    bundle, tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  save_photo(photos / "ok.png", 48, 36)
  out = tmp_path / "out"
  line = one_line_error(run_cli("tokenize", photos, bundle, out, "--max_side=3"))
  assert line == "error: --max_side 3: under one token of the bundle (4 pixels)"
  assert not out.exists()
  tokens = tmp_path / "tokens"
  tokens.mkdir()
  np.savez(tokens / "ok.npz", indices=np.zeros((9, 12), np.int32), original_size=[36, 48])
  for original_size, message in (([36.0, 48.0], "original_size of float64[2], expected "
                                   "[height, width], integers"),
                                  ([0, 48], "original_size [0, 48], expected positive sides")):
    np.savez(tokens / "bad.npz", indices=np.zeros((9, 12), np.int32),
             original_size=original_size)
    line = one_line_error(run_cli("detokenize", tokens, bundle, out), tokens / "bad.npz")
    assert message in line, line
  assert not out.exists()
