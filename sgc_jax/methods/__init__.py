"""The methods, by the name `config.method` gives (a registry by import path)."""

from __future__ import annotations

from sgc_jax.config_lib import ConfigError, method_name, resolve  # noqa: F401 (re-exported)

# name -> "module:class"; a method outside sgc_jax registers with `register`.
_REGISTRY = {"acseg": "sgc_jax.methods.acseg:ACSegMethod",
             "pat": "sgc_jax.methods.pat:PATMethod",
             "sgc_vqgan": "sgc_jax.methods.sgc_vqgan:SGCVQGANMethod",
             "slotcon": "sgc_jax.methods.slotcon:SlotConMethod"}


def register(name: str, target) -> None:
  """Adds a method: `target` is its class or "module:class"."""
  _REGISTRY[name] = target


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str):
  """The class of method `name`; ConfigError for an unknown name."""
  if name not in _REGISTRY:
    raise ConfigError(f"config.method={name!r}: no such method (known: {', '.join(names())})")
  return resolve(_REGISTRY[name])

