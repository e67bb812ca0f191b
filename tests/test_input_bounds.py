"""Inputs that declare more than they hold, or other than they hold: .npz files
whose members claim arrays past the file's memory budget (refused from their
headers, before anything is inflated), and bundles whose model.json
disagrees with their variables (refused at load, naming both)."""

import functools
import io
import os
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import PIL.Image
import pytest

from sgc_jax.bundle import inference
from sgc_jax.convert import clip, dino, inception, lpips, slotcon, taming, torch_file
from sgc_jax.utils import tree_io
from test_bundle_faults import run_cli, copy_bundle, edit_json, one_line_error
from test_export import ROOT, bundle  # noqa: F401  (`bundle`: a module-scoped fixture)

BOMB_SHAPE = (2 ** 29,)  # float32: 2 GiB, past the 1 GiB floor of a small file's budget.
MAX_PEAK = 64 << 20  # What refusing a bomb may allocate in-process (tracemalloc).
MAX_RSS = 400 << 20  # And a command's peak resident memory, imports included.


def npy_header(shape, descr="<f4", fortran_order=False) -> bytes:
  buffer = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      buffer, {"descr": descr, "fortran_order": fortran_order, "shape": shape})
  return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def _deflated_zeros(shape, descr) -> tuple[bytes, int, int]:
  """(raw deflate stream, CRC-32, inflated size) of a .npy of zeros: its
  header, then 1 MiB blocks of zeros, each compressed after a full flush,
  so that one compressed block serves for all."""
  header, chunk = npy_header(shape, descr), 1 << 20
  nbytes = int(np.prod(shape)) * np.dtype(descr).itemsize
  assert nbytes % chunk == 0
  compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
  head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
  block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
  crc, zeros = zlib.crc32(header), bytes(chunk)
  for _ in range(nbytes // chunk):
    crc = zlib.crc32(zeros, crc)
  return head + block * (nbytes // chunk) + compressor.flush(), crc, len(header) + nbytes


def write_bomb(path, name="params/w", shape=BOMB_SHAPE, descr="<f4"):
  """A zip of one deflated member `name`.npy: an honest .npy of zeros of
  `shape`, 2 GiB by default in a file of 2 MB (zipfile would deflate it for
  a minute; this writes the entry by hand)."""
  data, crc, size = _deflated_zeros(shape, descr)
  name = f"{name}.npy".encode()
  local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, zipfile.ZIP_DEFLATED, 0, 0, crc,
                      len(data), size, len(name), 0) + name
  central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, zipfile.ZIP_DEFLATED, 0,
                        0, crc, len(data), size, len(name), 0, 0, 0, 0, 0, 0) + name
  end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
  with open(path, "wb") as f:
    f.write(local + data + central + end)
  return str(path)


def write_members(path, members, compression=zipfile.ZIP_DEFLATED):
  """A zip of {member name: bytes}, each as it is (headers that lie included)."""
  with zipfile.ZipFile(path, "w", compression) as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return str(path)


def refused_within_bounds(call, error_type, *names, match="memory budget"):
  """`call()` raises `error_type`, one line naming `names`, fast and without
  allocating what the file declares. Returns the message."""
  tracemalloc.start()
  start = time.monotonic()
  try:
    with pytest.raises(error_type, match=match) as error:
      call()
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  message = str(error.value)
  assert peak < MAX_PEAK, f"{peak} bytes allocated: {message}"
  assert time.monotonic() - start < 10, message
  assert "\n" not in message
  for name in names:
    assert str(name) in message, message
  return message


# Runs a command and prints its peak resident memory (kilobytes): from a fresh
# small process, because Linux starts a child's ru_maxrss at the high-water
# mark of the memory it was forked with, and pytest's is large.
_MEASURED = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
print(usage.ru_maxrss)
sys.exit(child.returncode)
"""


def run_measured(args, cwd=ROOT):
  """(the finished command, as subprocess.run returns it, its peak resident bytes)."""
  result = subprocess.run([sys.executable, "-c", _MEASURED, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
  return result, int(result.stdout) * 1024


# ------------------------------------------------------------------ the reader


def test_honest_npz_reads_back_identical(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
      "params/dense/kernel": rng.normal(size=(5, 7)).astype(np.float32),
      "fortran": np.asfortranarray(rng.normal(size=(3, 4))),
      "big_endian": rng.normal(size=(6,)).astype(">f8"),
      "scalar": np.int64(7),
      "empty": np.zeros((0, 3), np.int32),
      "flags": rng.uniform(size=(4, 4)) > 0.5,
      "names": np.array(["a", "bcd"]),
      "records": np.array([(1, 2.5)], [("i", "<i4"), ("x", "<f8")]),
      "half": np.arange(4, dtype=np.float16),
  }
  for save in (np.savez, np.savez_compressed):
    path = str(tmp_path / f"{save.__name__}.npz")
    save(path, **arrays)
    with np.load(path) as expected:
      reference = {name: expected[name] for name in expected.files}
    for read in (tree_io.read_npz, torch_file.load_state_dict,
                 lambda p: tree_io.flatten(tree_io.load(p))):
      got = read(path)
      assert sorted(got) == sorted(reference)
      for name, value in reference.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        assert got[name].flags.f_contiguous == value.flags.f_contiguous, name
        np.testing.assert_array_equal(got[name], value)
        assert got[name].flags.writeable, name
    with tree_io.NpzFile(path) as data:  # As np.load's NpzFile, for the token reader.
      assert "scalar" in data and "other" not in data and sorted(data.files) == sorted(arrays)
      assert data["scalar"] == 7


def test_memory_budget_is_the_torch_file_rule():
  assert tree_io.memory_budget(1000) == 1 << 30
  assert tree_io.memory_budget(1 << 30) == 64 << 30
  assert (torch_file._MIN_BUDGET, torch_file._BUDGET_PER_FILE_BYTE) == (
      tree_io.MIN_BUDGET, tree_io.BUDGET_PER_FILE_BYTE)


def test_bomb_is_refused_from_its_header(tmp_path):
  path = write_bomb(tmp_path / "bomb.npz")
  assert os.path.getsize(path) < 3 << 20
  for read in (tree_io.read_npz, tree_io.load, tree_io.NpzFile):
    message = refused_within_bounds(lambda: read(path), tree_io.NpzError, path, "'params/w'")
    assert "float32[536870912], 2147483648 bytes" in message


def test_members_that_lie_are_refused(tmp_path):
  def refused(members, match):
    path = write_members(tmp_path / "lie.npz", members)
    refused_within_bounds(lambda: tree_io.read_npz(path), tree_io.NpzError, path, match=match)

  # The header claims 2 GiB, the member holds 400 bytes: np.load allocated the 2 GiB.
  refused({"w.npy": npy_header(BOMB_SHAPE) + bytes(400)},
          r"'w' declares float32\[536870912\], 2147483648 bytes, past")
  # Each within the budget, not both: 1 GiB each in a file of a few hundred bytes.
  refused({"a.npy": npy_header((2 ** 28,)) + bytes(40), "b.npy": npy_header((2 ** 28,))},
          r"its arrays declare at least 2147483648 bytes in all, past")
  refused({"w.npy": npy_header((1000,)) + bytes(40)},
          r"'w' declares float32\[1000\], 4000 bytes, but its member holds 40")
  refused({"w.npy": npy_header((10,)) + bytes(400)},
          r"'w' declares float32\[10\], 40 bytes, but its member holds 400")
  refused({"w.npy": npy_header((-5, 2)) + bytes(40)}, r"'w' declares float32\[-5, 2\]$")
  refused({"w.npy": npy_header((2,), "|O") + bytes(16)}, r"'w' holds Python objects")
  refused({"w.npy": npy_header((2,)) + bytes(8), "notes.txt": b"hello"},
          "member 'notes.txt' is not an array")
  # A header whose length field claims 4 GiB (version 2.0): not read past numpy's limit.
  refused({"w.npy": b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 32 - 1) + bytes(100)},
          "header of 4294967295 bytes")


def test_object_arrays_are_refused_as_np_load_refuses_them(tmp_path):
  path = str(tmp_path / "objects.npz")
  np.savez(path, ok=np.zeros(3), objects=np.array([1, None], object))
  refused_within_bounds(lambda: tree_io.read_npz(path), tree_io.NpzError, path,
                        match="'objects' holds Python objects")


def test_damaged_npz_raises_what_np_load_raises(tmp_path):
  """Damage (not a zip, a bad CRC): what zipfile / numpy raise, which the
  callers wrap in their own errors as before."""
  path = tmp_path / "bad.npz"
  path.write_bytes(b"")
  with pytest.raises(EOFError):
    tree_io.read_npz(str(path))
  path.write_bytes(b"PK\x03\x04 cut")
  with pytest.raises(zipfile.BadZipFile):
    tree_io.read_npz(str(path))
  np.savez(path, w=np.arange(1000, dtype=np.float32))
  data = bytearray(path.read_bytes())
  data[data.index(npy_header((1000,))) + 300] ^= 1  # Stored, not deflated: one value.
  path.write_bytes(bytes(data))
  with pytest.raises(zipfile.BadZipFile, match="Bad CRC"):
    tree_io.read_npz(str(path))


# ------------------------------------------------------------------ the entry points

IMPORTERS = {  # id: the .npz branch of each importer's load
    "torch_file": torch_file.load_state_dict,
    "dino": dino.load,
    "clip": clip.load,
    "inception": inception.load,
    "taming": lambda path: taming.load(path, None),
    "slotcon": lambda path: slotcon.load(path, None),
    "lpips": lpips.load_params,
}


@pytest.mark.parametrize("importer", IMPORTERS)
def test_importers_refuse_a_bomb_from_its_header(tmp_path, importer):
  path = write_bomb(tmp_path / "bomb.npz")
  refused_within_bounds(lambda: IMPORTERS[importer](path), torch_file.WeightFileError, path,
                        "'params/w'")


def test_bundle_variables_bomb_is_a_bundle_error(bundle, tmp_path):  # noqa: F811
  directory = copy_bundle(bundle, tmp_path)
  write_bomb(directory / "variables.npz")
  refused_within_bounds(lambda: inference.load(str(directory)), inference.BundleError,
                        directory / "variables.npz", "'params/w'")


CONVERTERS = {  # id: the command line, given the .npz and an output path
    "dino": lambda source, out: ["-m", "sgc_jax.convert.dino", source, out],
    "clip": lambda source, out: ["-m", "sgc_jax.convert.clip", source, out],
    "inception": lambda source, out: ["-m", "sgc_jax.convert.inception", source, "--out", out],
    "taming": lambda source, out: ["-m", "sgc_jax.convert.taming", source, "--resolution",
                                   "256", "--out", out],
    "slotcon": lambda source, out: ["-m", "sgc_jax.convert.slotcon", source, "--out", out],
    "lpips": lambda source, out: ["-m", "sgc_jax.convert.lpips", "--vgg", source, "--heads",
                                  source, "--out", out],
}


@pytest.mark.parametrize("converter", CONVERTERS)
def test_converter_command_refuses_a_bomb_in_bounded_memory(tmp_path, converter):
  path = write_bomb(tmp_path / "bomb.npz")
  out = tmp_path / "out.npz"
  result, rss = run_measured([sys.executable, *CONVERTERS[converter](path, str(out))])
  line = one_line_error(result, path)
  assert "memory budget" in line and rss < MAX_RSS, (rss, line)
  assert not out.exists()


def test_detokenize_refuses_a_token_bomb_in_bounded_memory(bundle, tmp_path):  # noqa: F811
  tokens = tmp_path / "tokens"
  tokens.mkdir()
  np.savez(tokens / "ok.npz", indices=np.zeros((8, 8), np.int32))
  path = write_bomb(tokens / "bomb.npz", "indices")
  out = tmp_path / "out"
  result, rss = run_measured([
      sys.executable, "-c", "import sys; from sgc_jax.bundle import cli; "
      "cli.detokenize_main(sys.argv[1:])", str(tokens), "--bundle", bundle,
      "--out", str(out)])
  line = one_line_error(result, path)
  assert "memory budget" in line and rss < MAX_RSS, (rss, line)
  assert not out.exists()


def test_tokenize_refuses_a_variables_bomb_in_bounded_memory(bundle, tmp_path):  # noqa: F811
  directory = copy_bundle(bundle, tmp_path)
  write_bomb(directory / "variables.npz")
  images = tmp_path / "images"
  images.mkdir()
  PIL.Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(images / "a.png")
  result, rss = run_measured([
      sys.executable, "-c", "import sys; from sgc_jax.bundle import cli; "
      "cli.tokenize_main(sys.argv[1:])", str(images), "--bundle", str(directory),
      "--out", str(tmp_path / "out")])
  line = one_line_error(result, directory / "variables.npz")
  assert "memory budget" in line and rss < MAX_RSS, (rss, line)


# ------------------------------------------------------------------ model.json, variables


def test_num_codes_other_than_the_codebook_is_refused_at_load(bundle, tmp_path):  # noqa: F811
  directory = copy_bundle(bundle, tmp_path)
  edit_json(lambda d: d.update(num_codes=10))(directory / "model.json")
  for use_model_code in (False, True):
    with pytest.raises(inference.BundleError,
                       match=r"model.json: num_codes is 10, but codebook/codebook/centres in "
                       r"\S*variables.npz holds 64 codes \(float32\[64, 16\]\)") as error:
      inference.load(str(directory), use_model_code=use_model_code)
    assert str(directory / "model.json") in str(error.value)
  tokens = tmp_path / "tokens"  # The commands: one line naming model.json, before any output.
  tokens.mkdir()
  np.savez(tokens / "a.npz", indices=np.zeros((8, 8), np.int32))
  result = run_cli("detokenize", tokens, directory, tmp_path / "out")
  one_line_error(result, directory / "model.json")
  assert not (tmp_path / "out").exists()


def test_num_codes_check_follows_listed_digests(bundle, tmp_path):  # noqa: F811
  """A bundle that lists digests: model.json is not among them, so an edited
  num_codes meets the codebook check."""
  directory = shutil.copytree(bundle, tmp_path / "bundle")
  edit_json(lambda d: d.update(num_codes=256))(directory / "model.json")
  with pytest.raises(inference.BundleError, match="num_codes is 256, but .*holds 64 codes"):
    inference.load(str(directory))
