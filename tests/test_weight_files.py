"""Weight files as untrusted input: torch-format files crafted here without
torch, read by `sgc_jax.convert.torch_file` and the importer CLIs."""

import collections
import os
import pickle
import pickletools
import re
import resource
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import torch_reference as ref
from sgc_jax.convert import torch_file

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "tiny_checkpoint.pt")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------ a torch-format writer


class Op(bytes):
  """Pickle opcodes, written as they are."""


def encode(value) -> bytes:
  """Protocol-2 opcodes that push `value` (dicts, tuples, str and scalars)."""
  if isinstance(value, Op):
    return value
  if isinstance(value, dict):
    return b"}(" + b"".join(encode(k) + encode(v) for k, v in value.items()) + b"u"
  if isinstance(value, tuple):
    return b"(" + b"".join(map(encode, value)) + b"t"
  if isinstance(value, str):
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data
  return pickle.dumps(value, 2)[2:-1]  # None, bool, int, float: no memo


def global_(module, name):
  return Op(f"c{module}\n{name}\n".encode())


def call(function, *args):
  return Op(encode(function) + encode(args) + b"R")


def ordered_dict(items: dict):
  """An OrderedDict as torch writes state dicts: REDUCE, then SETITEMS."""
  pairs = b"".join(encode(k) + encode(v) for k, v in items.items())
  return Op(call(global_("collections", "OrderedDict")) + b"(" + pairs + b"u")


def tensor(key, offset, size, stride, numel, dtype="FloatStorage"):
  """torch._utils._rebuild_tensor_v2 on a persistent storage record."""
  storage = Op(encode(("storage", global_("torch", dtype), key, "cpu", numel)) + b"Q")
  return call(global_("torch._utils", "_rebuild_tensor_v2"), storage, offset, size, stride,
              False, call(global_("collections", "OrderedDict")))


def write(path, obj, storages: dict, byteorder=b"little", compression=zipfile.ZIP_STORED,
          pickle_bytes=None, skip=()):
  """A torch.save-style zip: archive/data.pkl, archive/byteorder, archive/data/KEY."""
  entries = {"archive/data.pkl": (b"\x80\x02" + encode(obj) + b".") if pickle_bytes is None
             else pickle_bytes, "archive/byteorder": byteorder}
  entries.update({f"archive/data/{k}": v for k, v in storages.items()})
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in entries.items():
      if name not in skip:
        archive.writestr(name, data, compress_type=compression)
  return str(path)


STORAGE = np.arange(12, dtype=np.float32)


def one_tensor_file(path, offset=0, size=(3, 4), stride=(4, 1), numel=12, data=None,
                    dtype="FloatStorage", **kwargs):
  """A state dict {"w": one tensor on storage "0"} (STORAGE unless `data`)."""
  obj = {"state_dict": ordered_dict({"w": tensor("0", offset, size, stride, numel, dtype)})}
  return write(path, obj, {"0": STORAGE.tobytes() if data is None else data}, **kwargs)


def valid_file(path, **kwargs):
  """A Lightning-style checkpoint with every tensor layout the loader reads."""
  import ml_dtypes
  half = np.array([1.5, -2.25, 3], np.float16)
  bf16 = np.array([1.234375, -8], ml_dtypes.bfloat16)
  state = ordered_dict({
      "matrix": tensor("0", 0, (3, 4), (4, 1), 12),
      "transposed": tensor("0", 0, (4, 3), (1, 4), 12),
      "view": tensor("0", 2, (3,), (2,), 12),  # offset and stride
      "broadcast": tensor("0", 1, (2, 3), (0, 1), 12),
      "scalar": tensor("0", 5, (), (), 12),
      "empty": tensor("0", 12, (0, 3), (3, 1), 12),
      "steps": tensor("1", 0, (2,), (1,), 2, "LongStorage"),
      "half": tensor("2", 0, (3,), (1,), 3, "HalfStorage"),
      "bf16": tensor("3", 0, (2,), (1,), 2, "BFloat16Storage"),
      "param": call(global_("torch._utils", "_rebuild_parameter"),
                    tensor("4", 0, (2,), (1,), 2), True, ordered_dict({})),
  })
  namespace = Op(global_("argparse", "Namespace") + b")\x81" + encode({"lr": 0.1}) + b"b")
  obj = {"state_dict": state, "epoch": 3, "hyper_parameters": namespace}
  storages = {"0": STORAGE.tobytes(), "1": np.array([7, -2], np.int64).tobytes(),
              "2": half.tobytes(), "3": bf16.tobytes(), "4": np.ones(2, np.float32).tobytes()}
  return write(path, obj, storages, **kwargs)


VALID = {
    "matrix": np.arange(12.).reshape(3, 4), "transposed": np.arange(12.).reshape(3, 4).T,
    "view": [2, 4, 6], "broadcast": [[1, 2, 3], [1, 2, 3]], "scalar": 5.0,
    "empty": np.zeros((0, 3)), "steps": [7, -2], "half": [1.5, -2.25, 3],
    "bf16": [1.234375, -8], "param": [1, 1],
}


def state_dict_file(path, state_dict: dict[str, np.ndarray]):
  """float32 arrays -> a torch file of contiguous tensors, one storage each."""
  tensors, storages = {}, {}
  for i, (name, value) in enumerate(state_dict.items()):
    value = np.ascontiguousarray(value, np.float32)
    strides = tuple(s // 4 for s in value.strides)
    tensors[name] = tensor(str(i), 0, value.shape, strides, value.size)
    storages[str(i)] = value.tobytes()
  return write(path, {"state_dict": ordered_dict(tensors)}, storages)


# ------------------------------------------------------------------ valid files


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_valid_file_loads_exact_values(tmp_path, compression):
  state_dict = torch_file.load_state_dict(valid_file(tmp_path / "ok.ckpt",
                                                     compression=compression))
  assert sorted(state_dict) == sorted(VALID)
  for name, want in VALID.items():
    np.testing.assert_array_equal(state_dict[name].astype(np.float64), want, err_msg=name)
  assert state_dict["steps"].dtype == np.int64 and state_dict["half"].dtype == np.float16
  assert state_dict["scalar"].shape == () and state_dict["empty"].shape == (0, 3)
  assert state_dict["transposed"].flags.writeable


# ------------------------------------------------------------------ tensor records


@pytest.mark.parametrize("offset, size, stride, problem", [
    (0, (100,), (1,), "reach element 99 of a storage of 12"),
    (0, (2,), (2 ** 40,), "reach element 1099511627776"),
    (0, (3, 4), (4, 2 ** 62), "reach element 13835058055282163720 of a storage of 12"),
    (11, (2,), (-1,), r"stride \(-1,\) is not a tuple of naturals"),
    (-1, (2,), (1,), "storage offset -1"),
    (12, (), (), "reach element 12 of a storage of 12"),
    (13, (0,), (1,), "offset 13 past its storage"),
    (0, (3, -4), (4, 1), r"size \(3, -4\) is not a tuple of naturals"),
    (0, (3, 4), (4,), "differ in length"),
    (0, (2.0,), (1,), r"size \(2\.0,\) is not a tuple of naturals"),
    (0.5, (2,), (1,), "storage offset 0.5"),
    (0, (True,), (1,), r"size \(True,\) is not a tuple of naturals"),
    (0, (1,) * 40, (0,) * 40, "40 dimensions"),
    (0, (2 ** 20, 2 ** 20, 2 ** 20), (0, 0, 0), "more than 17179869184 elements"),
    (0, (1, 2 ** 70), (0, 0), r"size \(1, a 71-bit int\): more than"),
    (0, Op(call(global_("builtins", "tuple"), (3,))), (1,), "'builtins.tuple' object"),
])
def test_tensor_records_are_checked_against_their_storage(tmp_path, offset, size, stride,
                                                          problem):
  path = one_tensor_file(tmp_path / "bad.pth", offset, size, stride)
  with pytest.raises(torch_file.WeightFileError, match=problem) as error:
    torch_file.load_state_dict(path)
  assert str(error.value).startswith(f"{path}: tensor 'w': ")


def test_huge_claims_fail_before_allocating(tmp_path, monkeypatch):
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # A stride-0 "6 GiB" tensor on one float.
  path = one_tensor_file(tmp_path / "broadcast.pth", 0, (3 * 2 ** 29,), (0,), 1,
                         data=b"\0" * 4)
  with pytest.raises(torch_file.WeightFileError,
                     match="tensor 'w' needs 6442450944 bytes, past this file's memory budget"):
    torch_file.load_state_dict(path)
  # A zip bomb: a deflated storage of 64 MiB of zeros in a 64 KiB file.
  zeros = bytes(64 << 20)
  path = one_tensor_file(tmp_path / "bomb.pth", 0, (len(zeros) // 4,), (1,), len(zeros) // 4,
                         data=zeros, compression=zipfile.ZIP_DEFLATED)
  assert os.path.getsize(path) < 1 << 17
  with pytest.raises(torch_file.WeightFileError, match=r"storage inflates to 67108864 bytes"):
    torch_file.load_state_dict(path)
  # Uncompressed entries within the expansion cap, past the memory budget in all.
  path = write(tmp_path / "many.pth", {"state_dict": ordered_dict({
      f"w{i}": tensor(str(i), 0, (1 << 18,), (1,), 1 << 18) for i in range(4)})},
      {str(i): bytes(1 << 20) for i in range(4)})
  monkeypatch.setattr(torch_file, "_MIN_BUDGET", 5 << 20)
  monkeypatch.setattr(torch_file, "_BUDGET_PER_FILE_BYTE", 1)
  with pytest.raises(torch_file.WeightFileError,
                     match="tensor 'w2'.* needs 1048576 bytes, past this file's memory budget"):
    torch_file.load_state_dict(path)
  # The process's peak (KiB) did not grow by the claims (the 64 MiB are the test's own).
  assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 << 10


# ------------------------------------------------------------------ the pickle


def test_globals_in_the_file_run_nothing(tmp_path):
  marker = tmp_path / "ran"
  command = f"touch {marker}"
  calls = {
      "system": call(global_("os", "system"), command),
      "posix": call(global_("posix", "system"), command),
      "subprocess": call(global_("subprocess", "check_call"), ("sh", "-c", command)),
      "eval": call(global_("builtins", "eval"), f"__import__('os').system({command!r})"),
      "newobj": Op(global_("subprocess", "Popen") + encode((command,)) + b"\x81"),
  }
  path = write(tmp_path / "evil.pth", {"state_dict": ordered_dict(
      {"w": tensor("0", 0, (2,), (1,), 12), **calls})}, {"0": STORAGE.tobytes()})
  np.testing.assert_array_equal(torch_file.load_state_dict(path)["w"], [0, 1])
  with torch_file._TorchFile(path) as file:
    loaded = file.load()["state_dict"]
  assert not marker.exists()
  assert isinstance(loaded["system"], torch_file._Placeholder)
  assert type(loaded["system"]).global_name == "os.system"
  assert loaded["system"].args == (command,)


def _build(target, state):
  return {"state_dict": ordered_dict({"w": tensor("0", 0, (2,), (1,), 12),
                                      "x": Op(encode(target) + encode(state) + b"b")})}


@pytest.mark.parametrize("target, state", [
    (global_("collections", "OrderedDict"), {"__init__": 1}),
    (global_("collections", "OrderedDict"), (None, {"__init__": 1})),
    (global_("torch._utils", "_rebuild_tensor_v2"), (None, {"__defaults__": (1,)})),
    (global_("torch._utils", "_rebuild_tensor_v2"), {"__doc__": "changed"}),
    (global_("torch._utils", "_rebuild_parameter"), (None, {"function": 1})),
    (global_("torch", "FloatStorage"), {"x": 1}),
    (global_("os", "system"), {"args": 1}),
    (tensor("0", 0, (2,), (1,), 12), (None, {"offset": -1})),
], ids=["odict-dict", "odict-slots", "rebuild-slots", "rebuild-dict", "parameter-slots",
        "storage-type", "placeholder-class", "tensor-slots"])
def test_build_changes_nothing_shared(tmp_path, target, state):
  def snapshot():
    """OrderedDict's attributes, and those of the module's classes and functions."""
    state = {"OrderedDict": dict(vars(collections.OrderedDict))}
    for name, value in vars(torch_file).items():
      if isinstance(value, type):
        value = dict(vars(value))
      elif hasattr(value, "__code__"):
        value = (value.__code__, value.__defaults__, value.__kwdefaults__, value.__doc__,
                 dict(vars(value)))
      state[name] = value
    return state

  before = snapshot()
  path = write(tmp_path / "build.pth", _build(target, state), {"0": STORAGE.tobytes()})
  with pytest.raises(torch_file.WeightFileError, match=f"^{re.escape(path)}: .*data.pkl"):
    torch_file.load_state_dict(path)
  assert snapshot() == before
  # The same load still works afterwards.
  np.testing.assert_array_equal(torch_file.load_state_dict(valid_file(tmp_path / "ok.pth"))[
      "view"], [2, 4, 6])


def test_build_on_a_placeholder_instance_is_kept(tmp_path):
  obj = Op(global_("argparse", "Namespace") + b")\x81" + encode({"lr": 0.1}) + b"b")
  with torch_file._TorchFile(write(tmp_path / "ns.pth", {"hp": obj}, {})) as file:
    loaded = file.load()
  assert loaded["hp"].state == {"lr": 0.1}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_scan_accepts_what_pickle_writes(protocol):
  nested = ()
  for _ in range(900):
    nested = (nested,)
  shared = (1, (2.5, "x"))
  obj = {"rows": [(i, str(i)) for i in range(3000)], "shared": [shared] * 3,
         "nested": {nested: frozenset({shared})}, "bytes": b"\0" * 1000, "big": 2 ** 200}
  data = pickle.dumps(obj, protocol)
  assert torch_file._scan_pickle(data, 10 ** 6) == sum(1 for _ in pickletools.genops(data))


def test_pickle_scan_limits():
  # The depth is carried through the memo: 600 tuples deep, memoized, fetched
  # twice into a pair, then 500 more.
  deep = b"\x80\x02)" + b"\x85" * 600 + b"q\x00h\x00h\x00\x86" + b"\x85" * 500 + b"."
  with pytest.raises(torch_file.WeightFileError, match="tuples nested more than 1000 deep"):
    torch_file._scan_pickle(deep, 10 ** 6)
  with pytest.raises(torch_file.WeightFileError, match="more than 100 pickle opcodes"):
    torch_file._scan_pickle(pickle.dumps(list(range(1000)), 2), 100)


# ------------------------------------------------------------------ broken files


def _broken(kind, tmp_path):
  """A file broken as `kind`, and what its error says."""
  path = tmp_path / f"{kind}.pth"
  valid = valid_file(tmp_path / "valid.pth")
  if kind == "notzip":
    path.write_bytes(b"\x80\x02}q\x00.")
    return str(path), "not a torch zip file"
  if kind == "truncated":
    path.write_bytes(open(valid, "rb").read()[:-100])
    return str(path), "not a torch zip file"
  if kind == "empty":
    path.write_bytes(b"")
    return str(path), "not a torch zip file"
  if kind == "bad-crc":
    data = bytearray(open(valid, "rb").read())
    position = data.index(STORAGE[1:].tobytes())
    data[position] ^= 1
    path.write_bytes(bytes(data))
    return str(path), r"cannot read tensor '\w+''s storage \(BadZipFile: Bad CRC-32"
  if kind == "no-data.pkl":
    return valid_file(path, skip=("archive/data.pkl",)), "zip file without data.pkl"
  if kind == "missing-storage":
    return (valid_file(path, skip=("archive/data/1",)),
            "tensor 'steps': missing storage record 'archive/data/1'")
  if kind == "odd-storage-size":
    return (one_tensor_file(path, data=STORAGE.tobytes()[:-1]),
            "tensor 'w': odd storage size: 'archive/data/0' holds 47 bytes")
  if kind == "short-storage":
    return (one_tensor_file(path, data=STORAGE.tobytes()[:-4]),
            "'archive/data/0' holds 44 bytes, the pickle claims 12 float32 elements")
  if kind == "unknown-dtype":
    return (one_tensor_file(path, dtype="ComplexFloatStorage"),
            "data.pkl: storage '0': unsupported tensor type 'torch.ComplexFloatStorage'")
  if kind == "big-endian":
    return valid_file(path, byteorder=b"big"), "big-endian tensors are not supported"
  if kind == "garbage-pickle":
    return one_tensor_file(path, pickle_bytes=b"\x80\x02\xff\xfe"), "unreadable data.pkl"
  if kind == "empty-pickle":
    return one_tensor_file(path, pickle_bytes=b""), "unreadable data.pkl"
  if kind == "unterminated-pickle":
    return one_tensor_file(path, pickle_bytes=b"\x80\x02}("), "unreadable data.pkl"
  if kind == "persistent-id":
    return (one_tensor_file(path, pickle_bytes=b"\x80\x02X\x01\x00\x00\x00xQ."),
            "data.pkl: unknown persistent record 'x'")
  if kind == "memo-index":
    return (one_tensor_file(path, pickle_bytes=b"\x80\x02Nr\xf0\xff\xff\x7f."),
            "memo index 2147483632 at opcode 3")
  if kind == "deep-tuple-key":  # Segfaulted the C unpickler's dict insertion.
    return (one_tensor_file(path, pickle_bytes=b"\x80\x02})" + b"\x85" * 10 ** 6 + b"Ns."),
            "tuples nested more than 1000 deep")
  if kind == "not-a-state-dict":
    return one_tensor_file(path, pickle_bytes=b"\x80\x02K\x05."), "holds 5, not a state dict"
  if kind == "no-tensors":
    return write(path, {"a": 1}, {}), "no tensors found \\(keys: 'a'\\)"
  if kind == "int-key":
    return (write(path, {7: tensor("0", 0, (1,), (1,), 12)}, {"0": STORAGE.tobytes()}),
            "a tensor under the key 7, not a string")
  if kind == "bad-npz":
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 not really")
    return str(path), "unreadable .npz"
  raise ValueError(kind)


BROKEN = ["notzip", "truncated", "empty", "bad-crc", "no-data.pkl", "missing-storage",
          "odd-storage-size", "short-storage", "unknown-dtype", "big-endian", "garbage-pickle",
          "empty-pickle", "unterminated-pickle", "persistent-id", "memo-index",
          "deep-tuple-key", "not-a-state-dict", "no-tensors", "int-key", "bad-npz"]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_files_name_the_file(tmp_path, kind):
  path, problem = _broken(kind, tmp_path)
  with pytest.raises(torch_file.WeightFileError, match=problem) as error:
    torch_file.load_state_dict(path)
  assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


# ------------------------------------------------------------------ the importer CLIs


def test_write_npz_leaves_nothing_when_it_fails(tmp_path):
  with pytest.raises(ValueError, match="contains '/'"):
    torch_file.write_npz({"a/b": np.zeros(2)}, str(tmp_path / "out"))
  assert os.listdir(tmp_path) == []
  assert torch_file.write_npz({"a": {"b": np.ones(2)}}, str(tmp_path / "out")) == str(
      tmp_path / "out.npz")
  assert os.listdir(tmp_path) == ["out.npz"]


def _run(module, *args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", f"sgc_jax.convert.{module}", *args],
                        capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("module", ["lpips", "inception", "taming"])
def test_importer_cli_ends_a_bad_file_with_one_error_line(tmp_path, module):
  bad = one_tensor_file(tmp_path / "bad.pth", 0, (2,), (2 ** 40,))
  args = {"lpips": ["--vgg", bad, "--heads", bad], "inception": [bad],
          "taming": [bad, "--resolution", "16"]}[module]
  result = _run(module, *args, "--out", str(tmp_path / "out.npz"), cwd=tmp_path)
  assert result.returncode == 1, result.stderr
  assert result.stderr.startswith(f"error: {bad}: tensor 'w': ")
  assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
  assert sorted(os.listdir(tmp_path)) == ["bad.pth"]


def test_taming_cli_converts_a_crafted_checkpoint(tmp_path):
  from sgc_jax.convert import taming
  sd = ref.taming_state_dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,),
                             z_channels=32, embed_dim=8, num_codes=16)
  path = state_dict_file(tmp_path / "last.ckpt", sd)
  result = _run("taming", path, "--resolution", "16", "--out", "vqgan", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "vqgan.npz"]
  want = taming.convert(sd, taming.infer_model_config(sd, 16))
  got = taming.load(str(tmp_path / "vqgan.npz"), None)
  np.testing.assert_array_equal(got["codebook"]["embedding"], want["codebook"]["embedding"])
  np.testing.assert_array_equal(got["encoder"]["conv_in"]["kernel"],
                                want["encoder"]["conv_in"]["kernel"])


def test_taming_cli_rejects_another_architecture_in_one_line(tmp_path):
  sd = {"encoder.conv_in.weight": np.zeros((32, 3, 3, 3))}
  path = state_dict_file(tmp_path / "other.ckpt", sd)
  result = _run("taming", path, "--resolution", "16", "--out", "out.npz", cwd=tmp_path)
  assert (result.returncode, result.stderr) == (
      1, f"error: {path}: not a taming VQGAN state dict: no 'post_quant_conv.weight'\n")
  assert sorted(os.listdir(tmp_path)) == ["other.ckpt"]


# ------------------------------------------------------------------ random damage


def mutate_and_load(paths, count, seed=0):
  """Loads `count` randomly damaged copies of the valid files at `paths`: byte
  flips in data.pkl, in a storage (the zip rewritten, so it stays consistent)
  or anywhere in the file. Each must end in WeightFileError or load; a storage
  flip keeps every name, shape and dtype, a whole-file flip that loads changes
  no value. Any other exception, or a crash, fails the calling test."""
  torch_file._MIN_BUDGET = 16 << 20  # Keeps damaged size claims cheap to reach.
  rng = np.random.default_rng(seed)
  originals = []
  for path in paths:
    with zipfile.ZipFile(path) as archive:
      entries = {name: archive.read(name) for name in archive.namelist()}
    originals.append((open(path, "rb").read(), entries, torch_file.load_state_dict(path)))
  outcomes = collections.Counter()
  for i in range(count):
    raw, entries, want = originals[i % len(originals)]
    mode = ("pickle", "storage", "file")[i % 3]
    if mode == "file":
      data = bytearray(raw)
    else:
      names = [n for n in entries
               if (n.endswith("/data.pkl") if mode == "pickle" else "/data/" in n)]
      name = names[rng.integers(len(names))]
      data = bytearray(entries[name])
    for _ in range(rng.integers(1, 4)):
      if data:
        data[rng.integers(len(data))] = rng.integers(256)
    path = "mutated.pth"  # In the working directory.
    if mode == "file":
      open(path, "wb").write(bytes(data))
    else:
      with zipfile.ZipFile(path, "w") as archive:
        for entry, value in entries.items():
          archive.writestr(entry, bytes(data) if entry == name else value)
    try:
      got = torch_file.load_state_dict(path)
    except torch_file.WeightFileError:
      outcomes[mode, "error"] += 1
      continue
    outcomes[mode, "loaded"] += 1
    if mode != "pickle":
      assert sorted(got) == sorted(want)
      for key, value in want.items():
        assert (got[key].shape, got[key].dtype) == (value.shape, value.dtype), key
        if mode == "file":
          np.testing.assert_array_equal(got[key], value)
  print(dict(outcomes))


def test_randomly_damaged_files_fail_cleanly_or_load(tmp_path):
  paths = [FIXTURE, valid_file(tmp_path / "valid.ckpt")]
  code = ("import sys, test_weight_files as t; "
          "t.mutate_and_load(sys.argv[1:], 900)")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(__file__)]))
  result = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  print(result.stdout)
