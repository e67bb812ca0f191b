"""Damaged bundles and hostile inputs: one-line errors naming the file, no
traceback, nothing written; never a silently different output."""

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import PIL.Image
import pytest

from sgc_jax.bundle import cli, inference
from sgc_jax.utils import tree_io
from test_export import ROOT, bundle  # noqa: F401  (`bundle`: a module-scoped fixture)


def run_cli(command, source, bundle_dir, out, *options):
  return subprocess.run(
      [sys.executable, "-c", "import sys; from sgc_jax.bundle import cli; "
       f"cli.{command}_main(sys.argv[1:])", str(source), "--bundle", str(bundle_dir),
       "--out", str(out), *options], cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_line_error(result, *names) -> str:
  """The command failed with exit status 1 and one line `error: ...` naming `names`."""
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  for name in names:
    assert str(name) in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("images")
  PIL.Image.fromarray(np.full((40, 30, 3), 100, np.uint8)).save(directory / "ok.png")
  return directory


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tokens")
  np.savez(directory / "ok.npz", indices=np.arange(64, dtype=np.int32).reshape(8, 8))
  return directory


def copy_bundle(bundle_dir, parent):
  """A copy without the files' digests (as bundles of the previous release), so
  that the loader's own checks, not the digest, meet each damage."""
  directory = shutil.copytree(bundle_dir, parent / "bundle")
  edit_json(lambda d: d.pop("sha256"))(directory / "model.json")
  return directory


def truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def edit_json(change):
  def fault(path):
    description = json.loads(path.read_text())
    change(description)
    path.write_text(json.dumps(description))
  return fault


def reshape_leaf(path):  # One leaf of another shape than the model's.
  flat = tree_io.flatten(tree_io.load(str(path)))
  flat["params/conv_out/kernel"] = np.zeros((3, 3, 64, 4), np.float32)
  np.savez(path, **flat)


BUNDLE_FAULTS = {  # id: (file, fault, what the message says)
    "encode_truncated": ("encode.jax_export", truncate, "damaged or incompatible"),
    "encode_garbage": ("encode.jax_export", lambda p: p.write_bytes(b"\x07" * 100),
                       "damaged or incompatible"),
    "decode_empty": ("decode.jax_export", lambda p: p.write_bytes(b""),
                     "damaged or incompatible"),
    "variables_truncated": ("variables.npz", truncate, r"unreadable \(BadZipFile"),
    "variables_reshaped": ("variables.npz", reshape_leaf,
                           r"params/conv_out/kernel is float32\[3, 3, 64, 4\], \S*/"
                           r"encode.jax_export takes float32\[3, 3, 32, 3\]"),
    "json_bad": ("model.json", lambda p: p.write_text('{"format": '), "unreadable"),
    "json_list": ("model.json", lambda p: p.write_text("[]"), "a JSON list, not an object"),
    "json_no_grid": ("model.json", edit_json(lambda d: d.pop("grid")), "no 'grid'"),
    "json_grid_string": ("model.json", edit_json(lambda d: d.update(grid="8")),
                         "grid is '8', expected a positive integer"),
    "json_names": ("model.json", edit_json(lambda d: d.update(class_names=[1])),
                   "expected a list of names"),
    "json_sha256": ("model.json", edit_json(lambda d: d.update(sha256="abc")),
                    "sha256 is 'abc', expected"),
    "variables_digest_differs": ("variables.npz",  # Listed in model.json, then one byte more.
                           lambda p: (add_digests(p.parent), p.write_bytes(p.read_bytes() + b"0")),
                           r"damaged \(its SHA-256 differs from the one model.json lists\)"),
    "json_grid_other": ("model.json", edit_json(lambda d: d.update(grid=4)),
                        r"encode.jax_export: float32\[b,4\*h,4\*w,3\] -> int32\[b,h,w\], "
                        r"int32\[b,h,w\], .*model.json \(image_size 32, grid 4\) needs "
                        r"float32\[b,32,32,3\] -> int32\[b,4,4\], int32\[b,4,4\] \(fixed "
                        r"size\) or float32\[b,8\*h,8\*w,3\] -> int32\[b,h,w\], "
                        r"int32\[b,h,w\] \(any size\)"),
}


@pytest.mark.parametrize("fault", BUNDLE_FAULTS)
def test_damaged_bundle_is_one_bundle_error_naming_the_file(bundle, images_dir, tmp_path, fault):
  name, damage, message = BUNDLE_FAULTS[fault]
  directory = copy_bundle(bundle, tmp_path)
  damage(directory / name)
  with pytest.raises(inference.BundleError, match=message) as error:
    inference.load(str(directory))
  assert str(directory / name) in str(error.value)
  if fault in ("encode_truncated", "variables_truncated", "variables_reshaped", "json_no_grid",
               "json_bad"):  # Tracebacks through the CLI before.
    result = run_cli("tokenize", images_dir, directory, tmp_path / "out")
    one_line_error(result, directory / name)
    assert not (tmp_path / "out").exists()


def test_model_code_checks_model_config_and_variables(bundle, tmp_path):
  directory = copy_bundle(bundle, tmp_path)
  reshape_leaf(directory / "variables.npz")
  with pytest.raises(inference.BundleError, match=r"variables.npz: params/conv_out/kernel is "
                     r"float32\[3, 3, 64, 4\], the model of model_config takes"):
    inference.load(str(directory), use_model_code=True)
  edit_json(lambda d: d["model_config"].pop("codebook"))(directory / "model.json")
  with pytest.raises(inference.BundleError, match="model.json: model_config: KeyError"):
    inference.load(str(directory), use_model_code=True)


def test_bundles_of_the_first_release_load_as_sgc_vqgan(bundle, tmp_path):
  """No "method", "functions" or "sha256" in model.json: SGC-VQGAN's encode /
  decode, the same numbers; a bundle naming an unknown function is an error."""
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  directory = copy_bundle(bundle, tmp_path)
  edit_json(lambda d: (d.pop("method"), d.pop("functions")))(directory / "model.json")
  for use_model_code in (False, True):
    old = inference.load(str(directory), use_model_code=use_model_code)
    assert old.method == "sgc_vqgan" and sorted(old.functions) == ["decode", "encode"]
    for got, want in zip(old.encode(images), inference.load(bundle).encode(images)):
      np.testing.assert_array_equal(got, want)
  edit_json(lambda d: d.update(functions=["encode", "../x"]))(directory / "model.json")
  with pytest.raises(inference.BundleError, match=r"functions is \['encode', '../x'\], "
                     "expected a list of function names"):
    inference.load(str(directory))
  edit_json(lambda d: d.update(functions=["encode", "segment"]))(directory / "model.json")
  with pytest.raises(inference.BundleError, match=r"bundle without segment.jax_export"):
    inference.load(str(directory))


def test_missing_files_and_other_versions_stay_one_line(bundle, images_dir, tmp_path):
  directory = copy_bundle(bundle, tmp_path)
  os.remove(directory / "decode.jax_export")
  with pytest.raises(inference.BundleError, match="bundle without decode.jax_export"):
    inference.load(str(directory))
  edit_json(lambda d: d.update(version=2))(directory / "model.json")
  one_line_error(run_cli("tokenize", images_dir, directory, tmp_path / "out"),
                 directory / "model.json", "bundle version 2")
  assert not (tmp_path / "out").exists()


def add_digests(directory):
  """Lists the files' SHA-256 in model.json, the optional integrity check."""
  edit_json(lambda d: d.update(sha256={
      name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
      for name in ("variables.npz", "encode.jax_export", "decode.jax_export")}))(
          directory / "model.json")


@pytest.mark.parametrize("name", ["variables.npz", "encode.jax_export", "decode.jax_export"])
def test_exported_bundles_list_digests_and_any_change_is_caught(bundle, tmp_path, name):
  directory = shutil.copytree(bundle, tmp_path / "bundle")
  listed = json.loads((directory / "model.json").read_text())["sha256"]
  assert listed[name] == hashlib.sha256((directory / name).read_bytes()).hexdigest()
  data = bytearray((directory / name).read_bytes())
  data[len(data) // 2] ^= 1  # one bit
  (directory / name).write_bytes(bytes(data))
  with pytest.raises(inference.BundleError, match=rf"{name}: damaged \(its SHA-256 differs"):
    inference.load(str(directory))


# slow: in a clean-clone CI rehearsal (checkout at another path, so the
# serialized bytes, which hold source paths, differ and the seeds hit other
# bytes) one corruption of a bundle WITHOUT digests made XLA's lowering of the
# loaded function run for over 25 minutes. Bundles this project writes carry
# digests and fail at load; a digest-less (first-release) bundle is the case
# left open: see the issue notes.
@pytest.mark.slow
def test_corrupted_encode_function_is_a_clean_error_or_runs(bundle, tmp_path):
  """20 random 3-byte corruptions: a BundleError naming the file at load or
  first call, never another exception. Without digests one may still parse
  and compute something else (a changed byte can swap an operand: seen, with
  other seeds); with them (model.json's "sha256") each is an error at load."""
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  intact = inference.load(bundle).encode(images)
  plain, listed = copy_bundle(bundle, tmp_path / "plain"), copy_bundle(bundle, tmp_path / "listed")
  add_digests(listed)
  assert all(np.array_equal(*pair) for pair in zip(inference.load(str(listed)).encode(images),
                                                   intact))
  data = (plain / "encode.jax_export").read_bytes()
  outcomes = []
  for seed in range(20):
    rng = np.random.default_rng(seed)
    damaged = bytearray(data)
    for position in rng.integers(0, len(data), 3):
      damaged[position] ^= int(rng.integers(1, 256))
    for directory in (plain, listed):
      (directory / "encode.jax_export").write_bytes(damaged)
    with pytest.raises(inference.BundleError, match="SHA-256 differs"):
      inference.load(str(listed))
    try:
      outputs = inference.load(str(plain)).encode(images)
    except inference.BundleError as error:
      assert str(plain / "encode.jax_export") in str(error)
      outcomes.append("error")
      continue
    assert [(x.shape, x.dtype) for x in outputs] == [(x.shape, x.dtype) for x in intact]
    same = all(np.array_equal(*pair) for pair in zip(outputs, intact))
    outcomes.append("same" if same else "changed")
  assert outcomes.count("error") >= 10, outcomes  # The corruptions reach the checks.


def test_clashing_stems_and_batch_sizes_are_refused_before_any_work(bundle, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for name in ("ok.png", "ok.jpg"):
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / name)
  out = tmp_path / "out"
  one_line_error(run_cli("tokenize", images, bundle, out), images / "ok.jpg", images / "ok.png")
  os.remove(images / "ok.jpg")
  for batch_size in ("-1", "0"):
    line = one_line_error(run_cli("tokenize", images, bundle, out, f"--batch_size={batch_size}"))
    assert f"--batch_size {batch_size}" in line
  assert not out.exists()
  # The same output name from .npz and .NPZ tokens.
  tokens = tmp_path / "tokens"
  tokens.mkdir()
  np.savez(tokens / "t.npz", indices=np.zeros((8, 8), np.int32))
  shutil.copy(tokens / "t.npz", tokens / "t.NPZ")
  with pytest.raises(cli.InputError, match="both would write t"):
    cli.detokenize(str(tokens), bundle, str(out))


def png_claiming(path, width, height):
  """A PNG whose header says `width` x `height` (its pixel data: one pixel's)."""
  PIL.Image.new("1", (1, 1)).save(path)
  data = bytearray(path.read_bytes())
  data[16:24] = struct.pack(">II", width, height)  # IHDR, then its CRC.
  data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
  path.write_bytes(data)


def test_huge_and_extreme_images_are_refused_by_their_header(bundle, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  png_claiming(images / "bomb.png", 30000, 30000)
  PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a_ok.png")
  out = tmp_path / "out"
  one_line_error(run_cli("tokenize", images, bundle, out), images / "bomb.png", "decompression bomb")
  os.remove(images / "bomb.png")
  PIL.Image.new("L", (1, 150000)).save(images / "thin.png")  # Was 3.1 GB resized.
  one_line_error(run_cli("tokenize", images, bundle, out), images / "thin.png",
                 "1x150000 pixels, an aspect ratio past 64:1")
  assert not out.exists()
  # Past Pillow's warning limit (below its error limit) is refused too, and
  # 64:1 is the last aspect ratio read.
  png_claiming(tmp_path / "large.png", 10000, 10000)
  with pytest.raises(cli.InputError, match="large.png: refused"):
    cli.read_image(str(tmp_path / "large.png"), 32)
  PIL.Image.new("RGB", (64, 1)).save(tmp_path / "wide.png")
  assert cli.read_image(str(tmp_path / "wide.png"), 32).shape == (32, 32, 3)
  PIL.Image.new("RGB", (65, 1)).save(tmp_path / "wide.png")
  with pytest.raises(cli.InputError, match="65x1 pixels"):
    cli.read_image(str(tmp_path / "wide.png"), 32)


TOKEN_FAULTS = {  # id: (write bad.npz, what the message says)
    "empty": (lambda p: p.write_bytes(b""), r"not a readable .npz \(EOFError"),
    "out_of_range": (lambda p: np.savez(p, indices=np.full((8, 8), 64, np.int32)),
                     r"token indices in \[64, 64\], the bundle has 64 codes"),
    "float": (lambda p: np.savez(p, indices=np.zeros((8, 8), np.float32)),
              "token indices of dtype float32, integers expected"),
    "grid": (lambda p: np.savez(p, indices=np.zeros((2, 8, 8), np.int32)),
             r"token grid \(2, 8, 8\), the bundle decodes \(h, w\) grids with h, w > 0"),
}


@pytest.mark.parametrize("fault", TOKEN_FAULTS)
def test_bad_token_file_is_one_line_naming_it(bundle, tokens_dir, tmp_path, fault):
  write, message = TOKEN_FAULTS[fault]
  tokens = shutil.copytree(tokens_dir, tmp_path / "tokens")
  write(tokens / "bad.npz")
  out = tmp_path / "out"
  line = one_line_error(run_cli("detokenize", tokens, bundle, out), tokens / "bad.npz")
  assert "ok.npz" not in line and re.search(message, line), line
  assert not out.exists()


def test_token_files_checked_in_process(tmp_path):
  path = tmp_path / "t.npz"
  for content, message in ((b"PK\x03\x04 cut", "not a readable .npz"),
                           (b"\x93NUMPY garbage", "not a readable .npz")):
    path.write_bytes(content)
    with pytest.raises(cli.InputError, match=message):
      cli.read_tokens(str(path), 8, 64)
  np.savez(path, other=np.zeros(3))
  with pytest.raises(cli.InputError, match="no 'indices' array"):
    cli.read_tokens(str(path), 8, 64)
  np.savez(path, indices=np.full((8, 8), -1))
  with pytest.raises(cli.InputError, match=r"in \[-1, -1\]"):
    cli.read_tokens(str(path), 8, 64)
