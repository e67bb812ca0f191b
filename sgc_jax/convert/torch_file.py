"""Reads PyTorch state dicts (`torch.save` zip files, Lightning `.ckpt`) without
torch, and `.npz` files of the same flat `name -> array` layout.

The pickle inside a torch file is read by a restricted unpickler: tensors are
rebuilt from their storages as NumPy arrays, plain containers are kept, and
any other class is replaced by an inert placeholder (nothing in the file is
ever executed).
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class WeightFileError(ValueError):
  """A weight file that cannot be read or does not hold what is expected."""


class _Placeholder(dict):
  """Stands in for any class the file names that is not a tensor or a container."""

  def __init__(self, *args, **kwargs):
    super().__init__()
    self.args = args

  def __setstate__(self, state):
    self.state = state


def _placeholder_class(module: str, name: str):
  return type(name, (_Placeholder,), {"__module__": module})


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused
  if not size:
    return np.array(storage[offset])
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *unused):
  del unused
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch" and name in _STORAGE_DTYPES:
      return name
    return _placeholder_class(module, name)

  def persistent_load(self, pid):
    kind, storage_type, key = pid[0], pid[1], pid[2]
    if kind != "storage":
      raise WeightFileError(f"unknown persistent record {kind!r}")
    if key not in self._storages:
      dtype = _STORAGE_DTYPES.get(storage_type if isinstance(storage_type, str)
                                  else type(storage_type).__name__)
      if dtype is None:
        raise WeightFileError(f"unsupported tensor storage {storage_type!r}")
      raw = self._archive.read(f"{self._prefix}data/{key}")
      if dtype == "bfloat16":
        import ml_dtypes
        dtype = ml_dtypes.bfloat16
      self._storages[key] = np.frombuffer(raw, dtype=dtype)
    return self._storages[key]


def load_torch(path: str):
  """The object a `torch.save` zip file holds, tensors as NumPy arrays."""
  if not zipfile.is_zipfile(path):
    raise WeightFileError(
        f"{path}: not a torch zip file (legacy torch<1.6 format or not a checkpoint); "
        "re-save it with torch.save(obj, path) from torch>=1.6")
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if not pickles:
      raise WeightFileError(f"{path}: zip file without data.pkl, not a torch file")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
      raise WeightFileError(f"{path}: big-endian tensors are not supported")
    with archive.open(pickles[0]) as file:
      return _Unpickler(file, archive, prefix).load()


def load_state_dict(path: str, key: str | None = "state_dict") -> dict[str, np.ndarray]:
  """A flat `name -> array` dict from a torch file (its `key` entry when there
  is one, as in Lightning checkpoints) or an `.npz`."""
  if not os.path.exists(path):
    raise WeightFileError(f"{path}: no such weight file")
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {name: np.asarray(value) for name, value in data.items()}
  loaded = load_torch(path)
  if key and isinstance(loaded, dict) and key in loaded:
    loaded = loaded[key]
  if not isinstance(loaded, dict):
    raise WeightFileError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
  tensors = {k: v for k, v in loaded.items() if isinstance(v, np.ndarray)}
  if not tensors:
    raise WeightFileError(f"{path}: no tensors found (keys: {list(loaded)[:8]})")
  return tensors


def require(state_dict: dict[str, np.ndarray], name: str, shape: tuple[int, ...],
            source: str) -> np.ndarray:
  """state_dict[name], checked to exist and to have `shape`."""
  if name not in state_dict:
    raise WeightFileError(f"{source}: missing tensor {name!r}")
  value = state_dict[name]
  if tuple(value.shape) != tuple(shape):
    raise WeightFileError(f"{source}: tensor {name!r} has shape {tuple(value.shape)}, "
                          f"expected {tuple(shape)}")
  return np.asarray(value, np.float32)


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch OIHW convolution weight -> Flax HWIO kernel."""
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))

