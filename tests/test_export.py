"""Export to an inference bundle, the bundle without the model code, the CLIs."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from sgc_jax.bundle import cli, inference
from sgc_jax.modes import export, train
from test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bundle(data_dir, scenes64, tmp_path_factory):
  config = tiny_config(data_dir)
  method = train.build_method(config, scenes64)
  state = method.create_train_state(0)
  directory = str(tmp_path_factory.mktemp("bundle"))
  export.write_bundle(directory, method, method.eval_variables(state), {"step": 0})
  return directory


def test_bundle_runs_without_the_model_code_and_matches_it(bundle, tmp_path):
  images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  script = f"""
import sys
import numpy as np
from sgc_jax.bundle import inference
tokenizer = inference.load({bundle!r})
images = np.load({str(tmp_path / "images.npy")!r})
indices, semantic = tokenizer.encode(images)
one, _ = tokenizer.encode(images[:1])  # the batch dimension is symbolic
assert (one == indices[:1]).all()
np.savez({str(tmp_path / "out.npz")!r}, indices=indices, semantic=semantic,
         decoded=tokenizer.decode(indices))
loaded = sorted(m for m in sys.modules if m.startswith(("sgc_jax", "flax", "optax", "orbax")))
assert loaded == ["sgc_jax", "sgc_jax.bundle", "sgc_jax.bundle.inference", "sgc_jax.runtime",
                  "sgc_jax.runtime.compiler", "sgc_jax.utils", "sgc_jax.utils.tree_io"], loaded
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  exported = np.load(tmp_path / "out.npz")
  model = inference.load(bundle, use_model_code=True)
  indices, semantic = model.encode(images)
  np.testing.assert_array_equal(exported["indices"], indices)
  np.testing.assert_array_equal(exported["semantic"], semantic)
  assert indices.shape == (3, 8, 8) and 0 <= indices.min() and indices.max() < 64
  np.testing.assert_allclose(exported["decoded"], model.decode(indices), atol=1e-5)
  assert exported["decoded"].shape == (3, 32, 32, 3)


def test_bundle_errors(bundle, tmp_path):
  with pytest.raises(inference.BundleError, match="not an sgc_jax bundle"):
    inference.load(str(tmp_path))
  tokenizer = inference.load(bundle)
  with pytest.raises(inference.BundleError, match=r"this bundle encodes \[N, H, W, 3\] with "
                     "sides positive multiples of 4 pixels"):
    tokenizer.encode(np.zeros((1, 30, 30, 3)))
  with pytest.raises(inference.BundleError, match="has 64 codes"):
    tokenizer.decode(np.full((1, 8, 8), 64))


def test_tokenize_and_detokenize_cli(bundle, tmp_path):
  images_dir = tmp_path / "images"
  images_dir.mkdir()
  rng = np.random.default_rng(0)
  for name, size in (("a.png", (40, 30)), ("b.jpg", (32, 32)), ("c.png", (17, 50))):
    PIL.Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(images_dir / name)
  (images_dir / "broken.png").write_bytes(b"not a png")

  def run_cli(*args):
    return subprocess.run([sys.executable, "-c",
                           "import sys; from sgc_jax.bundle import cli; "
                           f"cli.{args[0]}(sys.argv[1:])", *args[1:]],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)

  result = run_cli("tokenize_main", str(images_dir), "--bundle", bundle, "--out", str(tmp_path / "t"))
  assert result.returncode != 0
  assert result.stderr.strip().endswith(f"error: {images_dir / 'broken.png'}: not a readable "
                                        "image (cannot identify image file "
                                        f"'{images_dir / 'broken.png'}')")
  os.remove(images_dir / "broken.png")
  tokens = tmp_path / "tokens"
  assert cli.tokenize(str(images_dir), bundle, str(tokens), batch_size=2) == 3
  assert sorted(os.listdir(tokens)) == ["a.npz", "a_semantic.png", "b.npz", "b_semantic.png",
                                        "c.npz", "c_semantic.png"]
  # Each photo keeps its aspect: 30x40 pixels, 8x10 tokens of 4x4 pixels.
  assert np.load(tokens / "a.npz")["indices"].shape == (10, 8)
  assert np.asarray(PIL.Image.open(tokens / "a_semantic.png")).shape == (40, 32, 3)
  # The CLI's tokens are the tokenizer's tokens of the image resized to whole
  # tokens (50x17 -> 52x16).
  direct, _ = inference.load(bundle).encode(
      cli.read_photo(str(images_dir / "c.png"), (52, 16))[None])
  np.testing.assert_array_equal(np.load(tokens / "c.npz")["indices"], direct[0])

  out = tmp_path / "decoded"
  assert cli.detokenize(str(tokens), bundle, str(out)) == 3
  assert np.asarray(PIL.Image.open(out / "b.png")).shape == (32, 32, 3)
  assert np.asarray(PIL.Image.open(out / "c.png")).shape == (17, 50, 3)  # the photo's size
  np.savez(tokens / "d.npz", indices=np.zeros((4, 0), np.int32))
  result = run_cli("detokenize_main", str(tokens), "--bundle", bundle, "--out", str(out))
  assert result.returncode != 0
  assert (f"error: {tokens / 'd.npz'}: token grid (4, 0), the bundle decodes (h, w) grids with "
          "h, w > 0") in result.stderr


def test_the_bundle_features_are_the_encoders_tokens_and_make_an_acseg_backbone(
    bundle, data_dir, scenes64):
  """SGC-VQGAN's bundle holds `features` (the tokens z the method predicts), so
  ACSeg can take it as a frozen backbone (kind=bundle, symmetric inputs)."""
  import jax
  from sgc_jax.core import backbones
  from test_acseg import tiny_acseg_config
  config = tiny_config(data_dir)
  method = train.build_method(config, scenes64)
  variables = method.eval_variables(method.create_train_state(0))
  images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  want = np.asarray(jax.jit(method.predict)(variables, images).features)
  np.testing.assert_allclose(inference.load(bundle).call("features", images), want,
                             rtol=1e-5, atol=1e-5)
  acseg_config = tiny_acseg_config(data_dir, bundle)
  backbone = backbones.build(acseg_config.model.backbone, 32)
  assert backbone.normalization == "symmetric"
  np.testing.assert_allclose(np.asarray(backbone.features(backbone.load(), images)), want,
                             rtol=1e-5, atol=1e-5)
