"""The device mesh and the sharding of batches on it."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sgc_jax.config_lib import ConfigError

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both


def mesh_shape(data: int, fsdp: int, model: int, num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry to "the rest of the devices" and checks the product."""
  shape = [data, fsdp, model]
  if shape.count(-1) > 1:
    raise ConfigError(f"mesh (data={data}, fsdp={fsdp}, model={model}): at most "
                     "one axis may be -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"mesh (data={data}, fsdp={fsdp}, model={model}): sizes "
                     "must be positive or -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"mesh (data={data}, fsdp={fsdp}, model={model}): "
                       f"{num_devices} devices are not divisible by {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError(f"mesh (data={data}, fsdp={fsdp}, model={model}) needs "
                     f"{math.prod(shape)} devices, {num_devices} are present")
  return tuple(shape)


def create_mesh(data: int = -1, fsdp: int = 1, model: int = 1,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(data, fsdp, model, len(devices))
  return Mesh(mesh_utils.create_device_mesh(shape, devices), MESH_AXES)


def config_mesh(config) -> Mesh:
  """The mesh of `config.mesh` over all devices."""
  return create_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def spec_for(name: str, shape: tuple[int, ...], mesh: Mesh,
             rules: Sequence[tuple[str, str]], min_size: int) -> P:
  """The PartitionSpec of one array by the first rule whose regex matches its path.

  Rule actions: "replicate", or "fsdp": shard the largest dimension that the
  fsdp axis divides (arrays under `min_size` elements stay replicated).
  """
  import re
  fsdp = mesh.shape["fsdp"]
  for pattern, action in rules:
    if re.fullmatch(pattern, name):
      break
  else:
    action = "replicate"
  if action == "replicate" or fsdp == 1 or math.prod(shape) < min_size:
    return P()
  if action != "fsdp":
    raise ValueError(f"sharding rule {pattern!r}: unknown action {action!r}")
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(tree, mesh: Mesh, rules: Sequence[tuple[str, str]],
                   min_size: int = 2**16):
  """NamedShardings for every leaf of a (shape) tree, by `spec_for`."""
  return jax.tree.map_with_path(
      lambda path, leaf: NamedSharding(mesh, spec_for(
          _path_name(path), tuple(getattr(leaf, "shape", ())), mesh, rules, min_size)),
      tree)


def logical_spec(names: Sequence[str | None], axis_rules: Sequence[tuple]) -> P:
  """Logical axis names (e.g. ("batch", "height", "width", "embed")) -> mesh
  axes by `axis_rules` ((logical, mesh axis or axes or None), ...)."""
  mapping = {logical: (tuple(mesh_axes) if isinstance(mesh_axes, (list, tuple)) else mesh_axes)
             for logical, mesh_axes in axis_rules}
  unknown = [n for n in names if n is not None and n not in mapping]
  if unknown:
    raise ConfigError(f"config.sharding.activation_axes: no rule for logical axes {unknown}")
  return P(*(None if n is None else mapping[n] for n in names))


def constrain(x: jax.Array, mesh: Mesh, names: Sequence[str | None],
              axis_rules: Sequence[tuple]) -> jax.Array:
  """Pins an activation's sharding by its logical axis names."""
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, logical_spec(names, axis_rules)))


def bytes_per_device(abstract_tree, shardings) -> int:
  """Bytes of a tree one device holds under `shardings`."""
  return sum(int(np.prod(s.shard_shape(leaf.shape))) * leaf.dtype.itemsize
             for leaf, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)))


def gather_examples(mask, arrays):
  """Batch-sharded per-example arrays -> NumPy arrays of the real examples of
  the global batch (`mask` False on padding), on every process."""
  keep, arrays = multihost_utils.process_allgather((mask, arrays), tiled=True)
  keep = np.asarray(keep)
  return jax.tree.map(lambda x: np.asarray(x)[keep], arrays)

