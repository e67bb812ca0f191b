"""Synthetic train batches and the compiled train step on abstract inputs,
for benchmarks and compiled-program tests (no data set needed)."""

from __future__ import annotations

import jax
import numpy as np

from sgc_jax.runtime import sharding


def synthetic_batch(config, batch_size: int, num_classes: int) -> dict:
  rng = np.random.default_rng(0)
  size, views = config.data.image_size, config.data.num_views
  box = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (batch_size, views, 1))
  return {
      "image": rng.uniform(-1, 1, (batch_size, views, size, size, 3)).astype(np.float32),
      "segmentation": rng.integers(0, num_classes, (batch_size, views, size, size)).astype(np.uint8),
      "instances": np.zeros((batch_size, views, size, size), np.int32),
      "box": box, "flip": np.zeros((batch_size, views), bool),
      "frame": np.zeros((batch_size, views), np.int32), "mask": np.ones(batch_size, bool)}


def make_trainer(config, num_classes: int = 10, mesh=None):
  """The config's method on `mesh` (the config's), for data of `num_classes`
  classes (uniform frequencies)."""
  from sgc_jax import methods
  method_class = methods.get(methods.method_name(config))
  return method_class(config, mesh or sharding.config_mesh(config),
                      [f"class_{i}" for i in range(num_classes)])


def compiled_train_step(config, batch_size: int, num_classes: int = 10):
  """(method, compiled train step of its first phase) on synthetic abstract inputs."""
  trainer = make_trainer(config, num_classes)
  mesh = trainer.mesh
  host = synthetic_batch(config, batch_size, num_classes)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=sharding.batch_sharding(mesh)), host)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       trainer.abstract_state, trainer.state_shardings)
  return trainer, trainer.jit_train_step(trainer.phase(0), host).lower(state, batch).compile()
