"""Parameter trees as .npz files with flattened 'a/b/c' keys (NumPy only, so
that the inference loader can read them without the training code).

An .npz is untrusted input, and a small one can claim arrays of any size: a
deflated member of zeros inflates about 1000:1, and a member's .npy header
alone makes np.load allocate the array it declares. `NpzFile` (and `load`,
`read_npz`) therefore read every member's header before inflating anything,
and refuse a file whose arrays would take more than `memory_budget` of its
size (the rule the torch-file reader applies), as well as members whose size
in the zip disagrees with their header, and arrays of Python objects.
"""

from __future__ import annotations

import collections.abc
import hashlib
import io
import math
import os
import struct
import zipfile

import numpy as np

# One load of an untrusted file allocates at most max(MIN_BUDGET,
# BUDGET_PER_FILE_BYTE x its size) bytes: weights need about their file's
# size (twice for torch's storages and copies); the floor leaves room for
# files that legitimately expand (broadcast tensors, deflated .npz members).
MIN_BUDGET, BUDGET_PER_FILE_BYTE = 1 << 30, 64

# numpy's own limit on a .npy header's text (`max_header_size`; latin-1, so
# bytes), checked here before the header is read.
_MAX_HEADER_BYTES = 10000
_CHUNK = 1 << 20


class NpzError(ValueError):
  """An .npz that declares what is refused (arrays past its memory budget,
  members of another size than their header says, Python objects). The message
  is one line, beginning with the file's path. Damaged bytes (not a zip, a bad
  deflate stream or CRC, a malformed .npy header) raise what zipfile and numpy
  raise, as np.load does."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).splitlines()))


def memory_budget(file_size: int, floor: int | None = None,
                  per_file_byte: int | None = None) -> int:
  """The most bytes one load of an untrusted file of `file_size` bytes may
  allocate: max(1 GiB, 64 x its size), unless `floor` / `per_file_byte` say
  otherwise."""
  floor = MIN_BUDGET if floor is None else floor
  per_file_byte = BUDGET_PER_FILE_BYTE if per_file_byte is None else per_file_byte
  return max(floor, per_file_byte * file_size)


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  flat = {}
  for name, value in tree.items():
    if "/" in name:
      raise ValueError(f"tree key {name!r} contains '/'")
    key = f"{prefix}{name}"
    if isinstance(value, dict):
      flat.update(flatten(value, key + "/"))
    else:
      flat[key] = np.asarray(value)
  return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def _brief(value, limit: int = 80) -> str:
  """A name from the file, safe to print on one line."""
  text = ascii(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_exactly(stream, size: int, what: str) -> bytes:
  data = stream.read(size)
  if len(data) != size:
    raise ValueError(f"EOF: reading {what}, expected {size} bytes got {len(data)}")
  return data


class _Member:
  __slots__ = ("info", "shape", "fortran_order", "dtype", "offset", "nbytes")

  def __init__(self, **fields):
    for name, value in fields.items():
      setattr(self, name, value)


def _declared(dtype: np.dtype, shape: tuple) -> str:
  """What a header declares, briefly (a header can list thousands of dimensions)."""
  return f"{dtype}{list(shape)}" if len(shape) <= 8 else f"{dtype}, {len(shape)} dims"


class NpzFile(collections.abc.Mapping):
  """An .npz opened within its memory budget, read as np.load's NpzFile is
  (`files`, `data[name]`, `in`, a context manager); each access reads the
  array again. Opening reads and checks every member's .npy header (a few
  bytes each): nothing is inflated past them until an array is accessed."""

  def __init__(self, path):
    self.path = os.fspath(path)
    size = os.path.getsize(self.path)
    if size == 0:  # What np.load says of an empty file (zipfile: "not a zip file").
      raise EOFError("No data left in file")
    self._zip = zipfile.ZipFile(self.path)
    try:
      self._members = self._headers(memory_budget(size))
    except BaseException:
      self._zip.close()
      raise
    self.files = list(self._members)

  def _error(self, message: str) -> NpzError:
    return NpzError(f"{self.path}: {message}")

  def _header(self, info: zipfile.ZipInfo, what: str) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, header bytes) of a member, reading no
    more of it than its header: numpy's header readers would read a 4-byte
    length's worth first and check it after."""
    with self._zip.open(info) as stream:
      magic = _read_exactly(stream, np.lib.format.MAGIC_LEN, "magic string")
      version = np.lib.format.read_magic(io.BytesIO(magic))
      if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
      length_format = "<H" if version == (1, 0) else "<I"
      length_field = _read_exactly(stream, struct.calcsize(length_format), "header length")
      length, = struct.unpack(length_format, length_field)
      if length > _MAX_HEADER_BYTES:
        raise self._error(f"{what} declares a .npy header of {length} bytes")
      header = _read_exactly(stream, length, "array header")
    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
              np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = reader(io.BytesIO(length_field + header))
    return shape, fortran_order, dtype, len(magic) + len(length_field) + length

  def _headers(self, budget: int) -> dict[str, _Member]:
    members, total = {}, 0
    for info in self._zip.infolist():
      if not info.filename.endswith(".npy"):
        raise self._error(f"member {_brief(info.filename)} is not an array (.npy)")
      name = info.filename[:-len(".npy")]
      what = f"array {_brief(name)}"
      if name in members:
        raise self._error(f"two members named {_brief(info.filename)}")
      shape, fortran_order, dtype, offset = self._header(info, what)
      if dtype.hasobject:
        raise self._error(f"{what} holds Python objects (dtype {dtype}), which are not read")
      declared = _declared(dtype, shape)
      if any(n < 0 for n in shape):
        raise self._error(f"{what} declares {declared}")
      nbytes = math.prod(shape) * dtype.itemsize
      if nbytes > budget:
        raise self._error(f"{what} declares {declared}, {nbytes} bytes, past this file's "
                          f"memory budget of {budget} (max(1 GiB, {BUDGET_PER_FILE_BYTE} x "
                          "its size))")
      total += nbytes
      if total > budget:
        raise self._error(f"its arrays declare at least {total} bytes in all, past this "
                          f"file's memory budget of {budget} (max(1 GiB, "
                          f"{BUDGET_PER_FILE_BYTE} x its size))")
      members[name] = _Member(info=info, shape=shape, fortran_order=fortran_order,
                              dtype=dtype, offset=offset, nbytes=nbytes)
    # Then what zipfile would inflate: just what each header declares.
    for name, member in members.items():
      if member.info.file_size != member.offset + member.nbytes:
        raise self._error(
            f"array {_brief(name)} declares {_declared(member.dtype, member.shape)}, "
            f"{member.nbytes} bytes, but its member holds {member.info.file_size - member.offset}")
    return members

  def __getitem__(self, name: str) -> np.ndarray:
    member = self._members[name]
    if member.nbytes == 0:
      return np.empty(member.shape, member.dtype, order="F" if member.fortran_order else "C")
    # Into one writable buffer, in chunks: no second copy of the array.
    data = bytearray(member.nbytes)
    view = memoryview(data)
    with self._zip.open(member.info) as stream:
      _read_exactly(stream, member.offset, "array header")
      done = 0
      while done < member.nbytes:
        piece = stream.read(min(_CHUNK, member.nbytes - done))
        if not piece:
          raise ValueError(f"EOF: reading array data, expected {member.nbytes} bytes got {done}")
        view[done:done + len(piece)] = piece
        done += len(piece)
      stream.read(1)  # Past the member's end, where zipfile checks its CRC.
    array = np.frombuffer(data, member.dtype)
    return array.reshape(member.shape, order="F" if member.fortran_order else "C")

  def __iter__(self):
    return iter(self.files)

  def __len__(self) -> int:
    return len(self.files)

  def close(self) -> None:
    self._zip.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


def read_npz(path) -> dict[str, np.ndarray]:
  """Every array of the .npz at `path` (see NpzFile), by name."""
  with NpzFile(path) as data:
    return {name: data[name] for name in data.files}


def save(tree: dict, path: str) -> None:
  np.savez(path, **flatten(tree))


def load(path: str) -> dict:
  return unflatten(read_npz(path))


def file_sha256(path: str) -> str:
  """The hex SHA-256 of a file: the digests a bundle lists of its files."""
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()
