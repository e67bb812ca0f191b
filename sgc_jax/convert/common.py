"""What the importers of official weights share: the skeleton of their command
lines (and the overrides they print), the .npz they write with the
architecture's fields beside the variables (and read back), the hint naming
the fields a checkpoint's own architecture differs in, and the square grid of
a ViT's position embedding.

The .npz of an importer with fields (CLIP, DINO) is {"params", "fields"}: the
variables and the scalar fields that determine the architecture, so that
reading it back needs nothing else. (Reading the files themselves is
`torch_file`'s.)
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, Iterable

import numpy as np

from sgc_jax.convert import torch_file
from sgc_jax.utils import tree_io


def command(doc: str, argv, arguments: Callable[[argparse.ArgumentParser], None],
            run: Callable[[argparse.Namespace], str]) -> None:
  """An importer's `main`: a parser described by the first line of `doc` (the
  module's docstring) with `arguments`, then `run(args)`, whose text it prints.
  A WeightFileError or OSError exits with "error: " and its message instead."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  arguments(parser)
  args = parser.parse_args(argv)
  try:
    text = run(args)
  except (torch_file.WeightFileError, OSError) as error:
    sys.exit(f"error: {error}")
  print(text)


def read_tree(path: str) -> dict:
  """The nested tree of an .npz; a damaged file is a WeightFileError naming it."""
  return tree_io.unflatten(torch_file.load_state_dict(path))


def square_grid(state_dict: dict[str, np.ndarray], name: str, positions: int,
                source: str) -> int:
  """g, where `positions` (the patch positions of the position embedding
  `name`) is g²; else a WeightFileError."""
  grid = math.isqrt(positions)
  if grid * grid != positions:
    raise torch_file.WeightFileError(
        f"{source}: tensor {name!r} has shape {tuple(state_dict[name].shape)}: {positions} "
        "patch positions, not a square grid")
  return grid


def overrides_text(out: str, heading: str, overrides: list[str]) -> str:
  """"wrote OUT; HEADING:" and the command-line overrides, one a line, ending
  with `--config.init_from=OUT`."""
  return f"wrote {out}; {heading}:\n  " + " \\\n    ".join(
      overrides + [f"--config.init_from={out}"])


def field_hint(infer: Callable[[], dict], names: Iterable[str], wanted: dict,
               model: str) -> str:
  """"; the checkpoint's `model` has a=1, b=2" for each of `names` whose value
  in `infer()` (the checkpoint's own fields) differs from `wanted`'s; "" when
  none does or when `infer` fails."""
  try:
    found = infer()
  except torch_file.WeightFileError:
    return ""
  differ = [f"{name}={found[name]}" for name in names if found[name] != wanted[name]]
  return f"; the checkpoint's {model} has {', '.join(differ)}" if differ else ""


def stored_fields(tree: dict, types: dict[str, type], source: str, module: str,
                  dtype_kinds: str, noun: str, positive: bool = False) -> dict:
  """The scalar fields `types` (name -> Python type) under "fields/" of an .npz
  that `module` wrote, each as its type: a scalar whose dtype kind is one of
  `dtype_kinds` (else "no `noun` 'fields/NAME'"); with `positive`, every
  non-bool one > 0."""
  stored = tree.get("fields")
  fields = {}
  for name, kind in types.items():
    value = stored.get(name) if isinstance(stored, dict) else None
    if value is None or np.shape(value) != () or value.dtype.kind not in dtype_kinds:
      raise torch_file.WeightFileError(
          f"{source}: no {noun} 'fields/{name}': not an .npz of {module}")
    fields[name] = kind(value.item())
    if positive and kind is not bool and not fields[name] > 0:
      raise torch_file.WeightFileError(f"{source}: 'fields/{name}' is {fields[name]}")
  return fields


def load_npz(path: str, read_fields: Callable[[dict, str], dict],
             abstract_params: Callable[[dict], dict],
             heads: dict[str, tuple[str, int | None]]) -> tuple[dict, dict]:
  """(fields, {"params"}) from the .npz an importer writes: `read_fields(tree,
  path)` gives its checked fields; `heads` maps a head-count field to (what
  has the heads, the count the caller gives or None), which must agree with
  the file's; the params must have the keys and shapes of
  `abstract_params(fields)`, floating point (they come back as float32)."""
  tree = read_tree(path)
  fields = read_fields(tree, path)
  for name, (what, given) in heads.items():
    if given not in (None, fields[name]):
      raise torch_file.WeightFileError(f"{path}: {what} with {fields[name]} heads, not {given}")
  unexpected = sorted(set(tree) - {"params", "fields"})
  if unexpected:
    raise torch_file.WeightFileError(f"{path}: unexpected {unexpected[0]!r}")
  return fields, {"params": torch_file.check_params(tree.get("params", {}),
                                                    abstract_params(fields), path)}


def write_with_fields(variables: dict, stored: dict, out: str, fields: dict,
                      unnamed: str) -> str:
  """Writes {**variables, "fields": stored} to `out` (atomically, ".npz"
  appended where missing) and returns the line that reports it: "wrote PATH:
  ARCH (name=value, ...)" for `fields`' "arch" (`unnamed` where it is None)
  and the fields `stored` holds."""
  out = torch_file.write_npz({**variables, "fields": stored}, out)
  details = ", ".join(f"{name}={fields[name]}" for name in stored)
  return f"wrote {out}: {fields['arch'] or unnamed} ({details})"
