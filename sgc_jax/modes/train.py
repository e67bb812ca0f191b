"""The config's method (`config.method`) through the core: what `--mode=train`,
`eval` and `export` call. Nothing here is specific to a method."""

from __future__ import annotations

from sgc_jax import methods
from sgc_jax.core import loop


def method_class(config):
  return methods.get(methods.method_name(config))


def build_method(config, dataset):
  """The config's method on a data set (its mesh, class statistics ...)."""
  return loop.build_method(method_class(config), config, dataset)


def train_and_evaluate(config, workdir: str) -> dict:
  return loop.train_and_evaluate(method_class(config), config, workdir)


def restore_latest(config, workdir: str):
  """(dataset, method, state, step) of WORKDIR's newest checkpoint."""
  return loop.restore_latest(method_class(config), config, workdir)
