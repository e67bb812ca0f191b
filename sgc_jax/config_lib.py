"""Configs are code: `get_config(arg)` files, with `key=value,...` arguments."""

from __future__ import annotations

from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field."""


def method_name(config) -> str:
  """`config.method` of a config (or of its JSON dict); configs written before
  there were several methods name none: SGC-VQGAN's."""
  return config.get("method", None) or "sgc_vqgan"


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'quantizer=sgc,size=128' -> ConfigDict over `defaults`, values typed like them."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ConfigError(f"config argument {item!r}: expected key=value with key in "
                        f"{sorted(defaults)}")
    default = defaults[key]
    try:
      if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError(value)
        typed = value.lower() in ("true", "1")
      else:
        typed = type(default)(value)
    except ValueError:
      raise ConfigError(f"config argument {key}={value!r}: expected type "
                        f"{type(default).__name__}") from None
    result[key] = typed
  return result


def check_choice(config: ml_collections.ConfigDict, field: str, choices) -> None:
  value = config
  for part in field.split("."):
    value = value[part]
  if value not in choices:
    raise ConfigError(f"config.{field}={value!r}: must be one of {sorted(choices)}")


def check_positive(config: ml_collections.ConfigDict, *fields: str) -> None:
  """Each field is a finite number > 0 (NaN and inf are refused too)."""
  for field in fields:
    value = config
    for part in field.split("."):
      value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value < float("inf")):
      raise ConfigError(f"config.{field}={value!r}: must be positive")


def resolve(target):
  """A registry entry: a class, or "module:attribute" imported on first use
  (so that a registry names its entries without importing them all)."""
  if not isinstance(target, str):
    return target
  import importlib
  module, attribute = target.split(":")
  return getattr(importlib.import_module(module), attribute)
