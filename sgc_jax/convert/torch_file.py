"""Reads PyTorch state dicts (`torch.save` zip files, Lightning `.ckpt`) and the
parameters of TorchScript archives (`torch.jit.save`) without torch, and `.npz`
files of the same flat `name -> array` layout.

Weight files are untrusted input. A file that cannot be read ends in a
`WeightFileError` whose message begins with the file's path; nothing in a file
is executed, and nothing it holds can change this process:

* The pickle inside is read by a restricted unpickler that hands it inert
  objects only: tensor records, `OrderedDict`s, and for any other global a
  fresh placeholder class (calling it records the arguments, runs nothing).
  The functions it may call are immutable per-load objects, so BUILD cannot
  set attributes on anything shared. Before unpickling, the opcodes are scanned
  for what the C unpickler turns into unbounded memory or C recursion.
* Only the state dict's tensors are built, each after checking its size,
  stride and offset against its storage record, and the record's size against
  the pickle's claim.
* Memory is bounded by the file: one load allocates at most
  max(1 GiB, 64 x the file's size) bytes (entries read, tensors built, 128
  bytes per pickle opcode), checked before each allocation. Torch's tensors
  need about the file's size twice (storages, then copies); the 1 GiB floor
  leaves room for the broadcast (stride-0) tensors of small files. A compressed
  entry may not expand to more than 64 x the file's size (torch writes entries
  uncompressed), which stops zip bombs before anything is inflated.
* An `.npz` is read by `tree_io.read_npz`, within the same budget
  (`tree_io.memory_budget`): every member's .npy header is checked against it
  before anything is inflated.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import reprlib
import zipfile

import numpy as np
from flax import traverse_util

from sgc_jax.utils import tree_io

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# tree_io's rule for every untrusted file (its .npz reader applies it too); here
# so that tests can shrink it for torch files alone.
_MIN_BUDGET, _BUDGET_PER_FILE_BYTE = tree_io.MIN_BUDGET, tree_io.BUDGET_PER_FILE_BYTE
_MAX_ELEMENTS, _MAX_DIMS = 1 << 34, 32
# Hashing a dict key recurses in C with no limit: a 1 MB pickle of nested
# tuples segfaults. Real pickles nest a few levels.
_MAX_TUPLE_DEPTH = 1000
# An opcode makes at most one object, of at most about this many bytes.
_BYTES_PER_OPCODE = 128

_REPR = reprlib.Repr()
_REPR.maxstring = 120


class WeightFileError(ValueError):
  """A weight file that cannot be read or does not hold what is expected. The
  message is one line, beginning with the file's path where there is one."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).splitlines()))


def _brief(value, nested: bool = False) -> str:
  """A short description of an untrusted value, safe to format: never the
  repr of a container or of an object the file made."""
  if value is None or type(value) in (bool, float) or (type(value) is int and
                                                       abs(value) < 1 << 64):
    return repr(value)
  if type(value) is int:
    return f"a {value.bit_length()}-bit int"
  if type(value) is str:
    return _REPR.repr(value)
  if type(value) is tuple and not nested and len(value) <= _MAX_DIMS:
    items = [_brief(v, nested=True) for v in value]
    return f"({', '.join(items)}{',' if len(items) == 1 else ''})"
  if isinstance(value, type) and issubclass(value, _Placeholder):
    return _REPR.repr(value.global_name)
  if isinstance(value, _Placeholder):
    return f"a {_REPR.repr(type(value).global_name)} object"
  return f"a {type(value).__name__.strip('_')}"


def _describe(error: Exception) -> str:
  """An exception raised on malformed input, briefly (its text may quote the file)."""
  return f"{type(error).__name__}: {str(error)[:200]}"


# ------------------------------------------------------------------ what the pickle gets


class _Frozen:
  """Objects the pickle can reach: no __dict__, no __setstate__ and no setattr,
  so a BUILD opcode on one fails instead of changing it."""
  __slots__ = ()

  def __init__(self, **fields):
    for name, value in fields.items():
      object.__setattr__(self, name, value)

  def __setattr__(self, name, value):
    raise WeightFileError(f"the pickle sets attribute {_brief(name)} of a "
                          f"{type(self).__name__.strip('_')}")


class _Function(_Frozen):
  """A function the pickle may call; a new one for each global it names."""
  __slots__ = ("function",)

  def __call__(self, *args):
    return self.function(*args)


class _Storage(_Frozen):
  """A storage record: `data/{key}` in the archive, `numel` elements of a dtype."""
  __slots__ = ("key", "dtype_name", "numel")


class _Tensor(_Frozen):
  """A tensor record; becomes an array only when used, after its checks."""
  __slots__ = ("storage", "offset", "size", "stride")


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused
  return _Tensor(storage=storage, offset=offset, size=size, stride=stride)


def _rebuild_parameter(data, *unused):
  del unused
  if not isinstance(data, _Tensor):
    raise WeightFileError(f"a parameter holds {_brief(data)}, not a tensor")
  return data


_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Placeholder(dict):
  """An instance of a class the file names that is neither a tensor nor a
  container: it keeps its arguments and state. (BUILD on the class itself
  calls `__setstate__` unbound, which fails.)"""
  global_name = "?"

  def __init__(self, *args, **kwargs):
    super().__init__()
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    self.state = state


class _Unpickler(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) in _FUNCTIONS:
      return _Function(function=_FUNCTIONS[module, name])
    if module == "torch" and name in _STORAGE_DTYPES:
      return name
    # A class per global: NEWOBJ needs a type, and no two globals share one.
    return type("Placeholder", (_Placeholder,), {"global_name": f"{module}.{name}"})

  def persistent_load(self, pid):
    if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
      raise WeightFileError(f"unknown persistent record {_brief(pid)}")
    _, storage_type, key, _, numel = pid
    if type(key) is not str or type(numel) is not int or numel < 0:
      raise WeightFileError(f"storage record {_brief(key)} of {_brief(numel)} elements")
    if type(storage_type) is not str or storage_type not in _STORAGE_DTYPES:
      raise WeightFileError(f"storage {_brief(key)}: unsupported tensor type "
                            f"{_brief(storage_type)}")
    return _Storage(key=key, dtype_name=storage_type, numel=numel)


def _scan_pickle(data: bytes, max_opcodes: int) -> int:
  """The number of opcodes in `data`, after rejecting what the C unpickler
  cannot be trusted with: more than `max_opcodes`, memo indices past the
  opcodes so far (the memo is an array sized by the largest index: 5 bytes
  could allocate 32 GiB), and tuples nested deeper than _MAX_TUPLE_DEPTH. Only
  tuple depths are tracked, conservatively: tuples and frozensets are the only
  hashable containers a pickle makes, and they are immutable, so a depth
  recorded in the memo stays true."""
  mark, stack, memo, count = object(), [], {}, 0
  for count, (op, arg, _) in enumerate(pickletools.genops(data), 1):
    if count > max_opcodes:
      raise WeightFileError(f"more than {max_opcodes} pickle opcodes")
    if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
      index = len(memo) if op.name == "MEMOIZE" else arg
      if index > count:
        raise WeightFileError(f"memo index {index} at opcode {count}")
      memo[index] = stack[-1] if stack and stack[-1] is not mark else 0
      continue
    if op.name in ("GET", "BINGET", "LONG_BINGET"):
      stack.append(memo.get(arg, 0))
      continue
    if op.name == "MARK":
      stack.append(mark)
      continue
    popped, below = [], len(op.stack_before)
    if pickletools.markobject in op.stack_before:
      while stack and stack[-1] is not mark:
        popped.append(stack.pop())
      if stack:
        stack.pop()
      below = op.stack_before.index(pickletools.markobject)
    for _ in range(min(below, len(stack))):
      popped.append(stack.pop())
    depth = max((d for d in popped if d is not mark), default=0)
    if op.name in ("EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET"):
      depth += 1
      if depth > _MAX_TUPLE_DEPTH:
        raise WeightFileError(f"tuples nested more than {_MAX_TUPLE_DEPTH} deep")
    stack.extend([depth] * len(op.stack_after))
  return count


# ------------------------------------------------------------------ the archive


def _dtype(name: str) -> np.dtype:
  dtype = _STORAGE_DTYPES[name]
  if dtype == "bfloat16":
    import ml_dtypes
    dtype = ml_dtypes.bfloat16
  return np.dtype(dtype)


class _TorchFile:
  """An open torch zip file: its pickle, and on demand its tensors, within the
  file's memory budget."""

  def __init__(self, path: str):
    self.path = path
    try:
      size = os.path.getsize(path)
      is_zip = zipfile.is_zipfile(path)
      self._archive = zipfile.ZipFile(path) if is_zip else None
    except OSError as error:
      raise self.error(f"cannot read: {error.strerror}") from None
    except Exception as error:  # A malformed zip raises any of several types.
      raise self.error(f"corrupt zip file ({_describe(error)})") from None
    if not is_zip:
      raise self.error("not a torch zip file (legacy torch<1.6 format, truncated, or not a "
                       "checkpoint); re-save it with torch.save(obj, path) from torch>=1.6")
    self._size = size
    self._left = tree_io.memory_budget(size, _MIN_BUDGET, _BUDGET_PER_FILE_BYTE)
    self._max_inflated = _BUDGET_PER_FILE_BYTE * size
    self._storages: dict[str, np.ndarray] = {}
    pickles = [n for n in self._archive.namelist()
               if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if not pickles:
      self.close()
      raise self.error("zip file without data.pkl, not a torch file")
    self._prefix = pickles[0][:-len("data.pkl")]

  def error(self, message: str) -> WeightFileError:
    return WeightFileError(f"{self.path}: {message}")

  def close(self):
    self._archive.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def _charge(self, nbytes: int, what: str):
    if nbytes > self._left:
      raise self.error(f"{what} needs {nbytes} bytes, past this file's memory budget "
                       f"(max(1 GiB, {_BUDGET_PER_FILE_BYTE} x its size); {self._left} left)")
    self._left -= nbytes

  def _read(self, name: str, what: str, max_size: int | None = None) -> bytes | None:
    """The entry `name`, None when there is none."""
    try:
      info = self._archive.getinfo(name)
    except KeyError:
      return None
    if max_size is not None and info.file_size > max_size:
      raise self.error(f"{what} holds {info.file_size} bytes, expected at most {max_size}")
    if info.compress_size > self._size:
      raise self.error(f"{what} claims {info.compress_size} bytes in a file of {self._size}")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > self._max_inflated:
      raise self.error(f"{what} inflates to {info.file_size} bytes, more than "
                       f"{_BUDGET_PER_FILE_BYTE} x the file's size (torch stores entries "
                       "uncompressed)")
    self._charge(info.file_size, what)
    try:
      data = self._archive.read(info)
    except Exception as error:  # BadZipFile, zlib.error, EOFError, ...
      raise self.error(f"cannot read {what} ({_describe(error)})") from None
    if len(data) != info.file_size:
      raise self.error(f"{what} is truncated")
    return data

  def load(self):
    """The object the file holds, tensors as `_Tensor` records."""
    byteorder = self._read(f"{self._prefix}byteorder", "byteorder", max_size=16)
    if byteorder is not None and byteorder.strip() != b"little":
      raise self.error("big-endian tensors are not supported")
    data = self._read(f"{self._prefix}data.pkl", "data.pkl")
    try:
      opcodes = _scan_pickle(data, self._left // _BYTES_PER_OPCODE)
      self._left -= _BYTES_PER_OPCODE * opcodes  # The objects the opcodes may make.
      return _Unpickler(io.BytesIO(data)).load()
    except WeightFileError as error:  # From the scan and the objects the pickle calls.
      raise self.error(f"data.pkl: {error}") from None
    except Exception as error:  # Whatever a malformed pickle raises.
      raise self.error(f"unreadable data.pkl ({_describe(error)})") from None

  def _storage(self, storage: _Storage, what: str) -> np.ndarray:
    dtype = _dtype(storage.dtype_name)
    if storage.key in self._storages:
      array = self._storages[storage.key]
      if array.dtype != dtype:
        raise self.error(f"{what}: storage {_brief(storage.key)} read as {array.dtype} "
                         f"and as {dtype}")
      return array
    record = f"{self._prefix}data/{storage.key}"
    try:
      info = self._archive.getinfo(record)
    except KeyError:
      raise self.error(f"{what}: missing storage record {_brief(record)}") from None
    if info.file_size % dtype.itemsize:
      raise self.error(f"{what}: odd storage size: {_brief(record)} holds {info.file_size} "
                       f"bytes, not a whole number of {dtype} elements")
    if info.file_size != storage.numel * dtype.itemsize:
      raise self.error(f"{what}: {_brief(record)} holds {info.file_size} bytes, the pickle "
                       f"claims {storage.numel} {dtype} elements")
    array = np.frombuffer(self._read(record, f"{what}'s storage"), dtype)
    self._storages[storage.key] = array
    return array

  def array(self, tensor: _Tensor, name) -> np.ndarray:
    """`tensor` as a new array, once its record is checked against its storage."""
    what = f"tensor {_brief(name)}"
    storage, offset, size, stride = tensor.storage, tensor.offset, tensor.size, tensor.stride

    def check(ok, problem):
      if not ok:
        raise self.error(f"{what}: {problem}")

    def naturals(value):
      return type(value) is tuple and all(type(v) is int and v >= 0 for v in value)

    check(isinstance(storage, _Storage), f"its storage is {_brief(storage)}")
    check(type(offset) is int and offset >= 0, f"storage offset {_brief(offset)}")
    check(naturals(size), f"size {_brief(size)} is not a tuple of naturals")
    check(naturals(stride), f"stride {_brief(stride)} is not a tuple of naturals")
    check(len(size) == len(stride), f"size {_brief(size)} and stride {_brief(stride)} differ "
          "in length")
    check(len(size) <= _MAX_DIMS, f"{len(size)} dimensions")
    count = math.prod(size)
    check(count <= _MAX_ELEMENTS and all(n <= _MAX_ELEMENTS for n in size),
          f"size {_brief(size)}: more than {_MAX_ELEMENTS} elements")
    array = self._storage(storage, what)
    if count == 0:
      check(offset <= len(array), f"offset {offset} past its storage of {len(array)}")
      return np.zeros(size, array.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    check(last < len(array), f"size {_brief(size)}, stride {_brief(stride)} and offset "
          f"{offset} reach element {last} of a storage of {len(array)}")
    self._charge(count * array.dtype.itemsize, what)
    # Every element lies inside the storage (checked above), so as_strided is safe.
    strides = tuple(s * array.itemsize if n > 1 else 0 for n, s in zip(size, stride))
    return np.lib.stride_tricks.as_strided(array[offset:], size, strides).copy()


# ------------------------------------------------------------------ TorchScript archives

# TorchScript modules nest a few levels (CLIP: model.visual.transformer.resblocks.0.attn.out_proj).
_MAX_MODULE_DEPTH = 64


def _is_script_module(value) -> bool:
  """Whether `value` is a module object of a TorchScript archive (`torch.jit.save`):
  its data.pkl pickles each module as an instance of a class `__torch__.*`,
  made by NEWOBJ and given its attributes by BUILD."""
  return (isinstance(value, _Placeholder) and
          type(value).global_name.startswith("__torch__."))


def _script_module_tensors(root: _Placeholder, file: _TorchFile) -> dict[str, _Tensor]:
  """The tensors of a TorchScript module tree under the names `state_dict()`
  gives them (attribute names joined by "."): its parameters and buffers.

  A module's attributes are the dict its BUILD gave it; attributes that are
  neither tensors nor modules (`training`, hook flags, numbers) are skipped.
  A module reached again (the pickle's memo can share one, or make a loop) is
  walked once, under its first name, as `state_dict()` does with shared
  submodules; that also bounds the walk by the number of objects. Nesting
  deeper than _MAX_MODULE_DEPTH is an error.
  """
  tensors: dict[str, _Tensor] = {}
  seen: set[int] = set()

  def walk(module, prefix, depth):
    what = f"module {_brief(prefix.rstrip('.') or type(module).global_name)}"
    if id(module) in seen:
      return
    if depth > _MAX_MODULE_DEPTH:
      raise file.error(f"data.pkl: modules nested more than {_MAX_MODULE_DEPTH} deep")
    seen.add(id(module))
    attributes = vars(module).get("state")
    if type(attributes) is not dict:
      raise file.error(f"data.pkl: {what} has {_brief(attributes)} as its attributes, "
                       "not a dict")
    for name, value in attributes.items():
      if type(name) is not str:
        raise file.error(f"data.pkl: {what} has an attribute named {_brief(name)}")
      if isinstance(value, _Tensor):
        tensors[prefix + name] = value
      elif _is_script_module(value):
        walk(value, f"{prefix}{name}.", depth + 1)

  walk(root, "", 0)
  return tensors


# ------------------------------------------------------------------ public


def load_state_dict(path: str, key: str | None = "state_dict") -> dict[str, np.ndarray]:
  """A flat `name -> array` dict from a torch file (its `key` entry when there
  is one, as in Lightning checkpoints), a TorchScript archive (the module
  tree's parameters and buffers, named as its `state_dict()` names them) or an
  `.npz`."""
  if not os.path.exists(path):
    raise WeightFileError(f"{path}: no such weight file")
  if path.endswith(".npz"):
    try:
      return tree_io.read_npz(path)  # Its headers checked against the same budget first.
    except tree_io.NpzError as error:
      raise WeightFileError(str(error)) from None
    except Exception as error:  # Whatever a malformed .npz raises.
      raise WeightFileError(f"{path}: unreadable .npz ({_describe(error)})") from None
  with _TorchFile(path) as file:
    loaded = file.load()
    if _is_script_module(loaded):
      loaded = _script_module_tensors(loaded, file)
    if key and isinstance(loaded, dict) and key in loaded:
      loaded = loaded[key]
    if not isinstance(loaded, dict):
      raise file.error(f"holds {_brief(loaded)}, not a state dict")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, _Tensor)}
    if not tensors:
      raise file.error(f"no tensors found (keys: {', '.join(map(_brief, list(loaded)[:8]))})")
    for name in tensors:
      if type(name) is not str:
        raise file.error(f"a tensor under the key {_brief(name)}, not a string")
    return {name: file.array(tensor, name) for name, tensor in tensors.items()}


def write_npz(tree: dict, path: str) -> str:
  """Saves `tree` (tree_io's layout) to `path` (with ".npz" appended, as
  np.savez does) atomically: to a temporary file in the same directory,
  renamed only when complete, so that a failure leaves no output. Returns the
  path written."""
  if not path.endswith(".npz"):
    path += ".npz"
  temporary = f"{path}.{os.getpid()}.tmp"
  try:
    with open(temporary, "wb") as file:
      tree_io.save(tree, file)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  return path


def shape_of(state_dict: dict[str, np.ndarray], name: str, ndim: int, source: str,
             model: str) -> tuple[int, ...]:
  """The shape of state_dict[name], a non-empty tensor of `ndim` dimensions: what
  importers infer a model's fields from. Absent, the file is not a `model` state
  dict, and the message shows the keys it begins with."""
  if name not in state_dict:
    first = ", ".join(repr(k[:80]) for k in list(state_dict)[:3])
    raise WeightFileError(f"{source}: not a {model} state dict: no {name!r} "
                          f"(keys begin {first}, ...)")
  shape = tuple(state_dict[name].shape)
  if len(shape) != ndim or not all(shape):
    raise WeightFileError(f"{source}: tensor {name!r} has shape {shape}")
  return shape


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


def torch_shape(path: tuple[str, ...], shape) -> tuple[int, ...]:
  """The PyTorch shape of a Flax leaf at `path`: a convolution kernel HWIO ->
  OIHW, a linear kernel [in, out] -> [out, in], anything else as it is."""
  if path[-1] == "kernel" and len(shape) == 4:
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw)
  if path[-1] == "kernel" and len(shape) == 2:
    return tuple(reversed(shape))
  return tuple(shape)


def from_torch(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor -> the Flax leaf at `path` (the inverse of `torch_shape`)."""
  if path[-1] == "kernel":
    return conv_kernel(value) if value.ndim == 4 else np.ascontiguousarray(value.T)
  return value


FLOATS = ("float16", "bfloat16", "float32", "float64")


def require_float(state_dict: dict[str, np.ndarray], name: str, shape: tuple[int, ...],
                  source: str) -> np.ndarray:
  """`require`, and the tensor floating point."""
  if name in state_dict and state_dict[name].dtype.name not in FLOATS:
    raise WeightFileError(
        f"{source}: tensor {name!r} is {state_dict[name].dtype.name}, not floating point")
  return require(state_dict, name, shape, source)


def check_params(params: dict, abstract: dict, source: str) -> dict:
  """Converted `params` read back (from an .npz), checked to have the keys and
  shapes of `abstract` and floating-point leaves; as float32."""
  want = traverse_util.flatten_dict(abstract, sep="/")
  got = traverse_util.flatten_dict(params, sep="/")
  for key, leaf in want.items():
    if key not in got:
      raise WeightFileError(f"{source}: missing 'params/{key}'")
    if tuple(np.shape(got[key])) != tuple(leaf.shape):
      raise WeightFileError(f"{source}: 'params/{key}' has shape "
                            f"{tuple(np.shape(got[key]))}, expected {leaf.shape}")
    if np.asarray(got[key]).dtype.name not in FLOATS:
      raise WeightFileError(
          f"{source}: 'params/{key}' is {np.asarray(got[key]).dtype.name}, not floating point")
  for key in got:
    if key not in want:
      raise WeightFileError(f"{source}: unexpected 'params/{key}'")
  return traverse_util.unflatten_dict(
      {key: np.asarray(value, np.float32) for key, value in got.items()}, sep="/")


def gather(state_dict: dict[str, np.ndarray], abstract: dict, name_of, source: str,
           hint, floats: bool = True) -> tuple[dict, set[str]]:
  """Every leaf of the flax tree `abstract` from `state_dict[name_of(path)]`,
  checked (there, of the leaf's PyTorch shape, floating point where `floats`)
  and in flax's layout: ({path: array}, the names read). A bad tensor's error
  ends with `hint()` (what the file's own architecture differs in)."""
  check = require_float if floats else require
  flat, used = {}, set()
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    name = name_of(path)
    used.add(name)
    try:
      value = check(state_dict, name, torch_shape(path, leaf.shape), source)
    except WeightFileError as error:
      raise WeightFileError(f"{error}{hint()}") from None
    flat[path] = from_torch(path, value)
  return flat, used
