"""Faults of the command lines: the bundle CLIs on bundles of every method
(each CLI works where the bundle has what it needs and refuses the others in
one line), and the entry point's coordinator address, config file and data set
name: one line on stderr, exit status 1, never a traceback."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from sgc_jax.bundle import cli, inference
from sgc_jax.methods import acseg, pat, slotcon
from sgc_jax.modes import export
from sgc_jax.runtime import distributed, sharding

from test_acseg import tiny_acseg_config
from test_export import ROOT, bundle  # noqa: F401  (`bundle`: SGC-VQGAN's, module-scoped)
from test_pat import tiny_pat_config
from test_slotcon_method import tiny_slotcon_config

CPU_ONLY = ("cpu",)  # Bundles for this machine only: half the export's compile time.


def one_line_error(result, *names) -> str:
  """The command failed with exit status 1 and one line `...error: ...` naming `names`."""
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and "error: " in lines[0], result.stderr[-3000:]
  for name in names:
    assert str(name) in lines[0], lines[0]
  return lines[0]


def run_cli(command, source, bundle_dir, out, *options):
  return subprocess.run(
      [sys.executable, "-c", "import sys; from sgc_jax.bundle import cli; "
       f"cli.{command}_main(sys.argv[1:])", str(source), "--bundle", str(bundle_dir),
       "--out", str(out), *options], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _mesh():
  return sharding.create_mesh(devices=jax.devices()[:1])


# ------------------------------------------------------------------ bundles


@pytest.fixture(scope="module")
def slotcon_bundle(data_dir, scenes64, tmp_path_factory):
  config = tiny_slotcon_config(data_dir)
  method = slotcon.SlotConMethod(config, _mesh(), scenes64.class_names)
  directory = str(tmp_path_factory.mktemp("slotcon") / "bundle")
  return export.write_bundle(directory, method, method.eval_variables(
      method.create_train_state(0)), {"step": 0}, CPU_ONLY)


@pytest.fixture(scope="module")
def acseg_bundle(data_dir, scenes64, slotcon_bundle, tmp_path_factory):
  """Over the SlotCon bundle; the concept classifier's centres drawn at random
  (its k-means fit is ACSeg's own test's business)."""
  config = tiny_acseg_config(data_dir, slotcon_bundle)
  method = acseg.ACSegMethod(config, _mesh(), scenes64.class_names)
  variables = method.eval_variables(method.create_train_state(0))
  dim = acseg._pixels(method.backbone, config.data.image_size).shape[-1]
  rng = np.random.default_rng(0)
  variables["classifier"] = {
      "centres": jnp.asarray(rng.normal(size=(method.num_clusters, dim)), jnp.float32),
      "mean": jnp.zeros((dim,), jnp.float32)}
  directory = str(tmp_path_factory.mktemp("acseg") / "bundle")
  return export.write_bundle(directory, method, variables, {"step": 0}, CPU_ONLY)


@pytest.fixture(scope="module")
def pat_bundle(data_dir, scenes64, tmp_path_factory):
  """Learned class embeddings: a closed vocabulary, no text file needed."""
  config = tiny_pat_config(data_dir)
  config.model.text.kind = "learned"
  method = pat.PATMethod.build(config, _mesh(), scenes64)
  directory = str(tmp_path_factory.mktemp("pat") / "bundle")
  return export.write_bundle(directory, method, method.eval_variables(
      method.create_train_state(0)), {"step": 0}, CPU_ONLY)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for name, size in (("a.png", (40, 30)), ("b.png", (32, 32))):
    PIL.Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(directory / name)
  return directory



# ------------------------------------------------- each CLI on every method


@pytest.mark.parametrize("method", ["slotcon", "acseg"])
def test_tokenize_and_detokenize_refuse_a_bundle_without_encode_decode(
    method, slotcon_bundle, acseg_bundle, images_dir, tmp_path):
  directory = {"slotcon": slotcon_bundle, "acseg": acseg_bundle}[method]
  tokens = tmp_path / "tokens"
  tokens.mkdir()
  np.savez(tokens / "a.npz", indices=np.zeros((16, 16), np.int32))
  line = one_line_error(run_cli("tokenize", images_dir, directory, tmp_path / "out"), directory)
  assert f"a {method} bundle has no encoder: sgc-tokenize needs encode" in line
  line = one_line_error(run_cli("detokenize", tokens, directory, tmp_path / "out"), directory)
  assert f"a {method} bundle has no decoder: sgc-detokenize needs decode" in line
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["tokenize", "detokenize", "segment"])
def test_an_out_that_is_a_file_is_one_line(command, bundle, images_dir, tmp_path):
  out = tmp_path / "out"
  out.write_text("a user's file")
  line = one_line_error(run_cli(command, images_dir, bundle, out), out)
  assert line == f"error: {out}: exists and is a file, not a folder"
  assert out.read_text() == "a user's file"


def test_segment_refuses_a_bundle_without_segment(bundle, images_dir, tmp_path):
  line = one_line_error(run_cli("segment", images_dir, bundle, tmp_path / "out"), bundle)
  assert "a sgc_vqgan bundle has no segment function" in line
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method, unit, count", [("slotcon", "prototype", 8),
                                                 ("acseg", "cluster", 10)])
def test_segment_on_a_bundle_that_segments_images_alone(method, unit, count, slotcon_bundle,
                                                        acseg_bundle, images_dir, tmp_path):
  """SlotCon's and ACSeg's `segment` take images only: each pixel's prototype
  or cluster, named `prototype_k` / `cluster_k`; class names are refused."""
  directory = {"slotcon": slotcon_bundle, "acseg": acseg_bundle}[method]
  line = one_line_error(run_cli("segment", images_dir, directory, tmp_path / "bad", "--classes",
                            "sky,water"), "--classes")
  assert f"a {method} bundle segments into its own {count} segments ({unit}_0, ...)" in line
  assert not (tmp_path / "bad").exists()
  out = tmp_path / "out"
  assert cli.segment(str(images_dir), directory, str(out), batch_size=1) == 2
  assert (out / "classes.txt").read_text().splitlines() == [f"{unit}_{k}" for k in range(count)]
  model = inference.load(directory)
  for name in ("a", "b"):
    image = cli.read_image(str(images_dir / f"{name}.png"), 32)
    want = model.call("segment", image[None])[0]
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / f"{name}_classes.png")), want)
    assert np.asarray(PIL.Image.open(out / f"{name}.png")).shape == (32, 32, 3)


def test_segment_past_256_classes_writes_16_bit_maps_and_checks_the_count(
    slotcon_bundle, images_dir, tmp_path):
  """A SlotCon bundle said to segment into 300 prototypes (its maps stay in
  0..7): 16-bit class PNGs; segment names that are not a list of names are one line."""
  directory = shutil.copytree(slotcon_bundle, tmp_path / "bundle")

  def set_segment_names(value):
    description = json.loads((directory / "model.json").read_text())
    description["segment_names"] = value
    (directory / "model.json").write_text(json.dumps(description))

  set_segment_names([f"prototype_{k}" for k in range(300)])
  out = tmp_path / "out"
  assert cli.segment(str(images_dir), str(directory), str(out), batch_size=1) == 2
  assert len((out / "classes.txt").read_text().splitlines()) == 300
  with PIL.Image.open(out / "a_classes.png") as written:
    assert written.mode.startswith("I")  # 16-bit
    image = cli.read_image(str(images_dir / "a.png"), 32)
    np.testing.assert_array_equal(np.asarray(written),
                                  inference.load(slotcon_bundle).call("segment", image[None])[0])
  set_segment_names("8")
  line = one_line_error(run_cli("segment", images_dir, directory, tmp_path / "bad"),
                        directory / "model.json")
  assert "segment_names is '8', expected a list of names" in line


def test_pat_tokenizes_every_level_and_detokenizes_them(pat_bundle, images_dir, tmp_path):
  """A PAT bundle's tokens: one NAME.npz per image, `indices_0` (the finest
  level) to `indices_{L-1}`; sgc-detokenize decodes such files."""
  model = inference.load(pat_bundle)
  grids = model.description["grids"]
  tokens = tmp_path / "tokens"
  assert cli.tokenize(str(images_dir), pat_bundle, str(tokens), batch_size=1) == 2
  assert sorted(os.listdir(tokens)) == ["a.npz", "b.npz"]
  image = cli.read_image(str(images_dir / "a.png"), 32)
  want = model.call("encode_levels", image[None])
  with np.load(tokens / "a.npz") as data:
    assert sorted(data.files) == [f"indices_{level}" for level in range(len(grids))]
    for level, grid in enumerate(grids):
      assert data[f"indices_{level}"].shape == (grid, grid)
      np.testing.assert_array_equal(data[f"indices_{level}"], want[level][0])
  out = tmp_path / "decoded"
  assert cli.detokenize(str(tokens), pat_bundle, str(out)) == 2
  decoded = model.call("decode_levels", tuple(level for level in want))[0]
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / "a.png")),
                                np.clip(np.rint((decoded + 1) * 127.5), 0, 255))


def test_pat_detokenize_checks_each_level(pat_bundle, tmp_path):
  grids, codes = (json.load(open(os.path.join(pat_bundle, "model.json")))[k]
                  for k in ("grids", "level_codes"))
  tokens = tmp_path / "tokens"
  tokens.mkdir()
  levels = {f"indices_{l}": np.zeros((g, g), np.int32) for l, g in enumerate(grids)}
  np.savez(tokens / "ok.npz", **levels)
  np.savez(tokens / "small.npz", **{**levels, "indices_1": np.zeros((2, 2), np.int32)})
  line = one_line_error(run_cli("detokenize", tokens, pat_bundle, tmp_path / "out"),
                        tokens / "small.npz")
  assert f"indices_1: token grid (2, 2), the bundle decodes ({grids[1]}, {grids[1]})" in line
  os.remove(tokens / "small.npz")
  np.savez(tokens / "range.npz", **{**levels, "indices_0": np.full((grids[0],) * 2, codes[0])})
  line = one_line_error(run_cli("detokenize", tokens, pat_bundle, tmp_path / "out"),
                        tokens / "range.npz")
  assert f"indices_0: token indices in [{codes[0]}, {codes[0]}], the bundle has {codes[0]}" in line
  os.remove(tokens / "range.npz")
  np.savez(tokens / "flat.npz", indices=np.zeros((grids[0],) * 2, np.int32))
  line = one_line_error(run_cli("detokenize", tokens, pat_bundle, tmp_path / "out"),
                        tokens / "flat.npz")
  assert "no 'indices_0' array" in line
  assert not (tmp_path / "out").exists()


def test_pat_segments_into_its_own_classes(pat_bundle, scenes64, images_dir, tmp_path):
  """An untrained PAT's class maps are rounding noise (its tokens' maps are
  flat, GroupNorm scales them up): compared at one batch size."""
  out = tmp_path / "out"
  assert cli.segment(str(images_dir), pat_bundle, str(out), batch_size=1) == 2
  assert (out / "classes.txt").read_text().splitlines() == list(scenes64.class_names)
  model = inference.load(pat_bundle)
  image = cli.read_image(str(images_dir / "b.png"), 32)
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / "b_classes.png")),
                                model.call("segment_with_text",
                                           (image[None], model.variables["text"]))[0])
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / "b_classes.png")),
                                model.call("segment", image[None])[0])


def test_a_pat_bundle_of_the_older_function_names_loads_under_the_current_ones(
    pat_bundle, images_dir, tmp_path):
  """Older PAT bundles held `segment` (images, class embeddings), `segment_known`
  (images), `encode` and `decode` (every level): they load as
  `segment_with_text`, `segment`, `encode_levels` and `decode_levels`."""
  directory = shutil.copytree(pat_bundle, tmp_path / "old")
  description = json.loads((directory / "model.json").read_text())
  old_names = {"segment": "segment_known", "segment_with_text": "segment",
               "encode_levels": "encode", "decode_levels": "decode"}
  for new in ("segment", "segment_with_text", "encode_levels", "decode_levels"):
    os.rename(directory / f"{new}.jax_export", directory / f"{new}.tmp")
  for new, old in old_names.items():
    os.rename(directory / f"{new}.tmp", directory / f"{old}.jax_export")
  description["functions"] = [old_names.get(n, n) for n in description["functions"]]
  description["sha256"] = {
      (f"{old_names[n[:-len('.jax_export')]]}.jax_export"
       if n[:-len(".jax_export")] in old_names else n): digest
      for n, digest in description["sha256"].items()}
  (directory / "model.json").write_text(json.dumps(description))
  old, new = inference.load(str(directory)), inference.load(pat_bundle)
  assert sorted(old.functions) == sorted(new.functions)
  image = cli.read_image(str(images_dir / "b.png"), 32)[None]
  np.testing.assert_array_equal(old.call("segment", image), new.call("segment", image))
  text = new.variables["text"]
  np.testing.assert_array_equal(old.call("segment_with_text", (image, text)),
                                new.call("segment_with_text", (image, text)))
  for got, want in zip(old.call("encode_levels", image), new.call("encode_levels", image)):
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------- the entry point's inputs


def _main(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "sgc_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("address", ["127.0.0.1:1234", "localhost:1", "node-3.cluster:65535",
                                     "[::1]:1234", "[fe80::1:2]:80", "10.0.0.2:08080"])
def test_coordinator_addresses_that_pass(address):
  distributed.check_coordinator_address(address)


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:abc", "127.0.0.1:0",
                                     "127.0.0.1:65536", ":1234", "127.0.0.1:", "::1:1234",
                                     "[::1]", "[::1]:", "[nothex]:12", "[]:12", "host:12:34",
                                     "a b:12", "127.0.0.1:+12", "127.0.0.1:-1", "127.0.0.1: 12",
                                     "127.0.0.1:\u0663", "", "[::1]:99999"])
def test_coordinator_addresses_that_are_refused(address):
  with pytest.raises(ValueError, match=r"^--coordinator_address=.*: expected HOST:PORT"):
    distributed.check_coordinator_address(address)
  with pytest.raises(ValueError, match=r"^--coordinator_address=.*: expected HOST:PORT"):
    distributed.initialize(address, 2, 0, timeout=5)


@pytest.mark.parametrize("address", ["127.0.0.1:abc", "nonsense"])
def test_a_bad_coordinator_address_is_one_line(address):
  """Before: a segfault (rc 139) and an IndexError traceback."""
  result = _main("--config=configs/sgc_scenes.py", "--mode=data",
                 f"--coordinator_address={address}", "--num_processes=2", "--process_id=0")
  line = one_line_error(result, f"--coordinator_address={address}: expected HOST:PORT")
  assert line.startswith("error: ")


@pytest.fixture(scope="module")
def config_files(tmp_path_factory):
  directory = tmp_path_factory.mktemp("configs")
  files = {"int": "def get_config():\n  return 42\n",
           "none": "def get_config():\n  return None\n",
           "dict": "def get_config():\n  return {'data': {}}\n",
           "no_get_config": "CONFIG = 1\n",
           "empty": "import ml_collections\ndef get_config():\n"
                    "  return ml_collections.ConfigDict()\n",
           "no_argument": "from sgc_jax.configs import sgc_scenes\ndef get_config():\n"
                          "  return sgc_scenes.get_config()\n",
           "raises": "def get_config():\n  raise RuntimeError('boom')\n",
           "bad_import": "import sgc_jax_no_such_module\n"}
  for name, text in files.items():
    (directory / f"{name}.py").write_text(text)
  return directory


@pytest.mark.parametrize("name, argument, message", [
    ("missing", "", "cannot read it ([Errno 2] No such file or directory"),
    ("int", "", "get_config() returned int 42, expected an ml_collections.ConfigDict"),
    ("none", "", "get_config() returned None, expected an ml_collections.ConfigDict"),
    ("dict", "", "get_config() returned dict {'data': {}}, expected an ml_collections.ConfigDict"),
    ("no_get_config", "", "no get_config function"),
    ("empty", "", "no field data, which sgc_jax configs have"),
    ("no_argument", ":x", "TypeError: get_config() takes 0 positional arguments but 1 was given"),
    ("raises", "", "boom"),  # One line before: kept.
    ("bad_import", "", "No module named 'sgc_jax_no_such_module'"),
])
def test_a_bad_config_file_is_one_line(config_files, name, argument, message):
  path = config_files / f"{name}.py"
  result = _main(f"--config={path}{argument}", "--mode=data")
  line = one_line_error(result, message)
  assert line.startswith("config error: ")
  if name not in ("raises", "bad_import"):
    assert line.startswith(f"config error: --config={path}{argument}: "), line


def test_a_missing_config_file_with_overrides_is_one_line(tmp_path):
  path = tmp_path / "missing.py"
  result = _main(f"--config={path}", "--config.data.name=x", "--mode=data")
  one_line_error(result, f"config error: --config={path}: cannot read it")
  result = _main(f"--config={tmp_path}", "--mode=data")  # A directory.
  one_line_error(result, f"config error: --config={tmp_path}: cannot read it", "directory")


@pytest.mark.parametrize("name, problem", [
    ("sgc_scenes/nope", "sgc_scenes has no config 'nope'"),
    ("sgc_scenes/", "sgc_scenes has no config ''"),
    ("sgc_scenes_x", "not sgc_scenes/CONFIG"),
])
def test_an_unknown_sgc_scenes_config_is_one_line(tmp_path, name, problem):
  result = _main("--config=configs/sgc_scenes.py", f"--config.data.name={name}", "--mode=data",
                 f"--config.data.data_dir={tmp_path}")
  line = one_line_error(result, f"data error: config.data.name={name!r}: {problem}",
                        "sgc_scenes/res64", "sgc_scenes/smoke64")
  assert os.listdir(tmp_path) == [], "nothing is built"


def test_a_bench_of_an_unusable_config_is_one_line():
  """Before: the ConfigError's traceback."""
  result = subprocess.run(
      [sys.executable, "-m", "sgc_jax.tools.bench", "train", "--config=configs/acseg_scenes.py",
       "--batch_size=8", "--steps=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  line = one_line_error(result, "config.model.backbone.weights: kind 'bundle' needs a bundle "
                        "directory")
  assert line.startswith("config error: ")
