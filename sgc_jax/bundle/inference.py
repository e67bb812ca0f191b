"""Runs an inference bundle (`--mode=export`): images <-> tokens.

    tokenizer = sgc_jax.bundle.inference.load("workdir/run/bundle")
    indices, semantic = tokenizer.encode(images)   # [N, H, W, 3] in [-1, 1]
    images = tokenizer.decode(indices)             # [N, h, w] -> [N, H, W, 3]

An SGC-VQGAN bundle's functions take images of any size whose sides are
multiples of `tokenizer.factor` pixels (the encoder's downsampling: a 480x360
photo at factor 4 is a 90x120 token grid) and token grids of any size;
`tokenizer.any_size` says so, read from the serialized functions' signatures.
Bundles written before this (`any_size` False) take images of `image_size`
pixels square and grids of `grid` x `grid` tokens only. Images or grids of
other shapes raise `BundleError` saying what the bundle takes.

By default the bundle's serialized StableHLO runs (only JAX and NumPy are
imported, none of the model code); `use_model_code=True` rebuilds the Flax
model from the bundle's config instead, for debugging or fine-tuning.

A bundle that is incomplete, of another version, damaged or inconsistent
(`model.json` fields, variables of other shapes than the functions take, a
`num_codes` other than the codebook's, a serialized function that does not
parse, a `variables.npz` whose arrays claim more memory than its size allows:
see tree_io) raises `BundleError` naming the file:
at load, where the functions are read and lowered, or, for damage that only
shape refinement finds, when a function first compiles for an input shape.
A damaged function can also parse and compute something else (one changed
byte can swap an operand): only digests catch that, and `model.json` may list
them, `"sha256": {file name: hex digest}`; the files it lists are checked.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import jax
import numpy as np

from sgc_jax.runtime import compiler
from sgc_jax.utils import tree_io

FORMAT = "sgc_jax.bundle"
VERSION = 1
VOCABULARY_FILE = "vocabulary.txt.gz"  # a text tower's BPE vocabulary inside a bundle


class BundleError(ValueError):
  pass


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


# model.json fields this module reads: (test, what it should be). The first
# four describe a tokenizer's encode / decode; bundles of other functions may
# lack them. Others are ignored, `min_tokens` among them: the first any-size
# SGC-VQGAN bundles hold it (5), the constraint h*w >= 5 they were exported
# under, which their functions still check when they compile for a grid.
_FIELDS = {
    "image_size": (_positive_int, "a positive integer"),
    "grid": (_positive_int, "a positive integer"),
    "num_codes": (_positive_int, "a positive integer"),
    "semantic": (lambda v: isinstance(v, bool), "true or false"),
    "class_names": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
                    "a list of names"),
    "functions": (lambda v: isinstance(v, list) and v and all(
        isinstance(n, str) and n.isidentifier() for n in v), "a list of function names"),
    "method": (lambda v: isinstance(v, str) and v.isidentifier(), "a method name"),
}
_TOKENIZER_FIELDS = ("image_size", "grid", "num_codes", "semantic")
# Where an SGC-VQGAN bundle's variables hold its codes, [num_codes, dim]: the
# codebook's centres in every quantizer mode, and its learned embedding in
# `vq` mode. Nothing else tells the number of codes: decode takes any int32.
_CODEBOOK_LEAVES = (("codebook", "codebook", "centres"), ("params", "codebook", "embedding"))
# Bundles of the first release: SGC-VQGAN's two functions, no "method" field.
_FIRST_RELEASE = {"method": "sgc_vqgan", "functions": ["encode", "decode"]}
# PAT bundles written before each function name had one signature in every
# bundle (they hold `segment_known`): their `segment` took (images, class
# embeddings), now `segment_with_text`; `segment_known` took images alone, now
# `segment`; `encode` and `decode` worked on every level, now `encode_levels`
# and `decode_levels` (`encode` and `decode` are a one-grid tokenizer's).
_RENAMED = {"segment": "segment_with_text", "segment_known": "segment",
            "encode": "encode_levels", "decode": "decode_levels"}


def describe(error: BaseException) -> str:
  """An exception as one line of an error message."""
  name = type(error).__name__
  if name == "error":  # struct.error, zlib.error: the module says what failed.
    name = f"{type(error).__module__}.{name}"
  lines = str(error).strip().splitlines()
  return _brief(f"{name}: {lines[0]}" if lines else name)


def _brief(text: str, limit: int = 200) -> str:
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _damaged_unless(path: str, step):
  """`step()`, or a BundleError naming the file that `path` holds when it
  fails: a damaged serialized function fails anywhere in the flatbuffer
  reader, the StableHLO deserializer, the lowering or the shape refinement
  (at compile time), each with exceptions of its own. MLIR prints its
  diagnostics to file descriptor 2, past Python: they are kept out of the
  terminal (a CLI's error is one line) and the first names the problem."""
  with tempfile.TemporaryFile() as log:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
      result = step()
    except Exception as error:
      failure = error
    else:
      failure = None
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    log.seek(0)
    lines = log.read().decode(errors="replace").splitlines()
  if failure is None:
    sys.stderr.write("".join(line + "\n" for line in lines))  # Warnings: passed on.
    return result
  if isinstance(failure, BundleError):
    raise failure
  problem = next((_brief(line.split("error: ", 1)[1]) for line in lines if "error: " in line),
                 describe(failure))
  raise BundleError(f"{path}: damaged or incompatible ({problem})") from None


class Tokenizer:
  """A loaded bundle: `encode` / `decode` where it holds them (a tokenizer),
  and every function it holds through `call(name, x)`.

  A one-grid tokenizer (SGC-VQGAN) also says which shapes they take:
    any_size    True where they take images [N, factor*h, factor*w, 3] and
                grids [N, h, w] of any h, w > 0: read from the signatures of
                the serialized encode / decode (the model code,
                `use_model_code=True`, takes any size); False for a bundle of
                fixed-size functions, [N, image_size, image_size, 3] and
                [N, grid, grid]
    factor      pixels per token side, image_size // grid
  """

  def __init__(self, directory: str, use_model_code: bool = False):
    self.directory = directory
    self.description = self._description()
    self.image_size, self.grid, self.num_codes, self.semantic = (
        self.description.get(name) for name in _TOKENIZER_FIELDS)
    self.factor = self.image_size // self.grid if self.grid else None
    # The model code takes any size; serialized functions say it by their
    # signatures: None until `_check_signature` reads encode or decode.
    self.any_size = True if use_model_code and self.grid else None
    self._any_size_source = None  # the file any_size was read from
    self.class_names, self.method = self.description["class_names"], self.description["method"]
    path = self.file("variables.npz")
    try:
      self.variables = tree_io.load(path)
    except tree_io.NpzError as error:  # Refused from its headers (past its memory budget).
      raise BundleError(str(error)) from None
    except Exception as error:  # zipfile and numpy raise whatever a damaged file trips over.
      raise BundleError(f"{path}: unreadable ({describe(error)})") from None
    self._check_num_codes()
    stored = self.description["functions"]
    # {name: the name of its .jax_export file}
    files = ({_RENAMED.get(n, n): n for n in stored} if "segment_known" in stored
             else {n: n for n in stored})
    self.description["functions"] = list(files)
    if use_model_code:
      self.functions = self._model_functions(list(files))
    else:
      self.functions = {name: self._exported(file) for name, file in files.items()}
    self.any_size = bool(self.any_size)

  def _description(self) -> dict:
    path = os.path.join(self.directory, "model.json")
    if not os.path.isfile(path):
      raise BundleError(f"{self.directory}: not an sgc_jax bundle (no model.json)")
    try:
      with open(path, "rb") as f:
        description = json.load(f)
    except (OSError, ValueError, RecursionError) as error:
      raise BundleError(f"{path}: unreadable ({describe(error)})") from None
    if not isinstance(description, dict):
      raise BundleError(f"{path}: a JSON {type(description).__name__}, not an object")
    if description.get("format") != FORMAT:
      raise BundleError(f"{path}: format {description.get('format')!r}, expected {FORMAT!r}")
    if description.get("version") != VERSION:
      raise BundleError(f"{path}: bundle version {description.get('version')}, "
                        f"this sgc_jax reads version {VERSION}")
    description = {**_FIRST_RELEASE, **description}
    # A one-grid tokenizer (SGC-VQGAN); a pyramid one (PAT) describes its
    # `grids` and `level_codes` instead.
    tokenizer = ({"encode", "decode"} & set(description.get("functions") or [])
                 and "grids" not in description)
    for name, (valid, what) in _FIELDS.items():
      if name not in description:
        if name in _TOKENIZER_FIELDS and not tokenizer:
          continue
        raise BundleError(f"{path}: no {name!r}")
      if not valid(description[name]):
        raise BundleError(f"{path}: {name} is {description[name]!r}, expected {what}")
    digests = description.get("sha256", {})
    if not (isinstance(digests, dict) and all(isinstance(d, str) for d in digests.values())):
      raise BundleError(f"{path}: sha256 is {digests!r}, expected {{file name: hex digest}}")
    return description

  def file(self, name: str) -> str:
    """The path of a file the bundle holds (its digest checked where listed)."""
    path = os.path.join(self.directory, name)
    if not os.path.isfile(path):
      raise BundleError(f"{self.directory}: bundle without {name}")
    # A damaged serialized function can still parse and compute something
    # else: only a digest tells. Bundles that list them (optional) are checked.
    listed = self.description.get("sha256", {}).get(name)
    if listed is not None:
      if tree_io.file_sha256(path) != listed:
        raise BundleError(f"{path}: damaged (its SHA-256 differs from the one model.json lists)")
    return path

  def _check_num_codes(self) -> None:
    """model.json's num_codes against the codebook the variables hold: decode's
    range check, and every user of the tokens, trusts num_codes. (grid and
    image_size: against the exported functions' signatures, in `_exported`.)"""
    if self.num_codes is None:  # not a one-grid tokenizer
      return
    for leaf in _CODEBOOK_LEAVES:
      node = self.variables
      for key in leaf:
        node = node.get(key) if isinstance(node, dict) else None
      if node is None:
        continue  # Absent: _check_variables names it against the functions.
      shape = np.shape(node)
      if not shape or shape[0] != self.num_codes:
        raise BundleError(
            f"{os.path.join(self.directory, 'model.json')}: num_codes is {self.num_codes}, but "
            f"{'/'.join(leaf)} in {os.path.join(self.directory, 'variables.npz')} holds "
            f"{shape[0] if shape else 'no'} codes ({np.asarray(node).dtype}{list(shape)})")

  def _check_variables(self, expected, source: str) -> None:
    """The variables' leaves against `expected` (a tree of shapes and dtypes):
    names the first one missing, unexpected or of another shape or dtype.
    Either side may be the damaged one, so the message names both."""
    def flat(tree):
      leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
      names = (jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in leaves)
      # A damaged file can yield any bytes as a name: print those escaped.
      return {n if n.isprintable() else ascii(n): x for n, (_, x) in zip(names, leaves)}
    have, want = flat(self.variables), flat(expected)
    path = os.path.join(self.directory, "variables.npz")
    for name in sorted(want.keys() | have.keys()):
      if name not in have:
        raise BundleError(f"{path}: no {name}, which {source} takes")
      if name not in want:
        raise BundleError(f"{path}: {name}, which {source} does not take")
      got, need = have[name], want[name]
      if got.shape != tuple(need.shape) or got.dtype != need.dtype:
        raise BundleError(f"{path}: {name} is {got.dtype}{list(got.shape)}, "
                          f"{source} takes {need.dtype}{list(need.shape)}")

  def _signatures(self, name: str) -> dict[bool, str]:
    """{any_size: signature} that a one-grid tokenizer's `name` may have
    (none for other functions and bundles): of fixed size, model.json's
    image_size and grid, or of any size, multiples of its factor."""
    if "grids" in self.description or name not in ("encode", "decode"):
      return {}
    size, grid = self.image_size, self.grid
    # jax's own spelling of the symbolic sides (a factor of 1 is not written).
    sides = ",".join(map(str, jax.export.symbolic_shape(f"{self.factor}*h, {self.factor}*w")))
    shapes = {False: (f"float32[b,{size},{size},3]", f"int32[b,{grid},{grid}]"),
              True: (f"float32[b,{sides},3]", "int32[b,h,w]")}
    if name == "encode":
      return {key: f"{images} -> {indices}, {indices}" for key, (images, indices) in shapes.items()}
    return {key: f"{indices} -> {images}" for key, (images, indices) in shapes.items()}

  def _check_signature(self, name: str, path: str, found: str) -> None:
    """`found`, the signature of function `name` in `path`, against model.json,
    and against the other of encode / decode: both of fixed size or both of any."""
    signatures = self._signatures(name)
    if not signatures:
      return
    json_path = os.path.join(self.directory, "model.json")
    if self.any_size is not None:
      want = signatures[self.any_size]
      if found != want:
        raise BundleError(f"{path}: {found}, {json_path} (image_size {self.image_size}, grid "
                          f"{self.grid}) and {self._any_size_source} need {want}")
      return
    matching = [any_size for any_size, signature in signatures.items() if signature == found]
    if not matching:
      raise BundleError(f"{path}: {found}, {json_path} (image_size {self.image_size}, grid "
                        f"{self.grid}) needs {signatures[False]} (fixed size) or "
                        f"{signatures[True]} (any size)")
    self.any_size, self._any_size_source = matching[0], path

  def _exported(self, name: str):
    path = self.file(f"{name}.jax_export")
    with open(path, "rb") as f:
      data = bytearray(f.read())

    def read():
      exported = jax.export.deserialize(data)
      (variables, argument), kwargs = jax.tree_util.tree_unflatten(
          exported.in_tree, exported.in_avals)
      if kwargs:
        raise ValueError(f"keyword arguments {sorted(kwargs)}")
      return exported, variables, argument, f"{argument} -> " + ", ".join(
          map(str, exported.out_avals))

    exported, variables, argument, found = _damaged_unless(path, read)
    self._check_signature(name, path, found)
    # 'cuda', not jax.default_backend()'s 'gpu': the names `exported.platforms` uses.
    platform = jax.export.default_export_platform()
    if platform not in exported.platforms:
      raise BundleError(f"{self.directory}: {name} was exported for "
                        f"{list(exported.platforms)}, not for this {platform!r} backend")
    self._check_variables(variables, path)
    function = compiler.jit(exported.call)
    # Lowering parses the module: most damage shows here, at load. It lowers
    # for the symbolic sizes (the batch, an image's sides, PAT's number of
    # classes) as they are.
    _damaged_unless(path, lambda: function.lower(self.variables, argument))
    programs = {}  # Compiled per input shape: the rest of the damage shows there.

    def call(variables, x):
      key = tuple((a.shape, a.dtype) for a in jax.tree.leaves(x))
      if key not in programs:
        programs[key] = _damaged_unless(path, lambda: function.lower(variables, x).compile())
      return programs[key](variables, x)
    return call

  def _model_functions(self, names):
    path = os.path.join(self.directory, "model.json")
    try:
      functions, abstract = model_functions(self.description)
    except Exception as error:  # Missing, unknown or invalid fields, whatever they raise.
      raise BundleError(f"{path}: model_config: {describe(error)}") from None
    self._check_variables(abstract, "the model of model_config")
    return {name: compiler.jit(functions[name]) for name in names}

  def call(self, name: str, x):
    """Function `name` of the bundle on `x` (its argument, batch first)."""
    if name not in self.functions:
      raise BundleError(f"{self.directory}: no function {name!r} (it holds "
                        f"{', '.join(self.functions)})")
    return jax.tree.map(np.asarray, self.functions[name](self.variables, x))

  def takes_grid(self, height: int, width: int) -> bool:
    """Whether encode / decode take a height x width token grid (images of
    height*factor x width*factor pixels)."""
    if not self.any_size:
      return (height, width) == (self.grid, self.grid)
    return height > 0 and width > 0

  def encode(self, images) -> tuple[np.ndarray, np.ndarray]:
    """[N, H, W, 3] float images in [-1, 1] -> (indices, semantic map),
    [N, H/factor, W/factor] each."""
    images = np.asarray(images, np.float32)
    shape, factor = images.shape, self.factor
    if not self.any_size:
      expected = (self.image_size, self.image_size, 3)
      if images.ndim != 4 or shape[1:] != expected:
        raise BundleError(f"images of shape {shape}; this bundle encodes "
                          f"[N, {', '.join(map(str, expected))}]")
    elif not (images.ndim == 4 and shape[3] == 3 and shape[1] % factor == shape[2] % factor == 0
              and self.takes_grid(shape[1] // factor, shape[2] // factor)):
      raise BundleError(f"images of shape {shape}; this bundle encodes [N, H, W, 3] with "
                        f"sides positive multiples of {factor} pixels")
    indices, semantic = self.call("encode", images)
    return indices, semantic

  def decode(self, indices) -> np.ndarray:
    """[N, h, w] code indices -> [N, h*factor, w*factor, 3] images in [-1, 1]."""
    indices = np.asarray(indices)
    if not self.any_size:
      if indices.ndim != 3 or indices.shape[1:] != (self.grid, self.grid):
        raise BundleError(f"token grid of shape {indices.shape}; this bundle decodes "
                          f"[N, {self.grid}, {self.grid}]")
    elif indices.ndim != 3 or not self.takes_grid(*indices.shape[1:]):
      raise BundleError(f"token grid of shape {indices.shape}; this bundle decodes [N, h, w] "
                        "with h, w > 0")
    if not np.issubdtype(indices.dtype, np.integer):
      raise BundleError(f"token indices of dtype {indices.dtype}; integers expected")
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_codes):
      raise BundleError(f"token indices in [{indices.min()}, {indices.max()}]; this "
                        f"bundle has {self.num_codes} codes")
    return self.call("decode", indices.astype(np.int32))


def model_functions(description: dict):
  """A bundle's functions rebuilt from its method's model code (no serialized
  code read), and the shapes of the variables they take."""
  from sgc_jax import methods
  return methods.get(description["method"]).functions_from_bundle(description)


def load(directory: str, use_model_code: bool = False) -> Tokenizer:
  return Tokenizer(directory, use_model_code)
