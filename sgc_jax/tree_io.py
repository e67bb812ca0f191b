"""Parameter trees as .npz files with flattened 'a/b/c' keys (NumPy only, so
that the inference loader can read them without the training code)."""

from __future__ import annotations

import hashlib

import numpy as np


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


def save(tree: dict, path: str) -> None:
  np.savez(path, **flatten(tree))


def load(path: str) -> dict:
  with np.load(path) as data:
    return unflatten({k: np.asarray(v) for k, v in data.items()})


def file_sha256(path: str) -> str:
  """The hex SHA-256 of a file: the digests a bundle lists of its files."""
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()
