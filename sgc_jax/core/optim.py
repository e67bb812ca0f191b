"""Optimizers and their learning-rate schedule, built from a config's `optimizer` section.

Every optimizer reads `name` ("adam" if absent), `warmup_steps` and
`final_lr_fraction` (both required: see `schedule`), optionally
`warmup_start_fraction`; its own fields and their
defaults are in `DEFAULTS`. The learning rate itself is an argument of
`create`, so that one section can serve several rates (generator, discriminator).
"""

from __future__ import annotations

import math

import jax
import ml_collections
import optax

from sgc_jax import config_lib

# Each optimizer's own fields, with the value used where the section leaves one
# out. grad_clip <= 0 means no clipping (clip by global norm otherwise).
# Adam: Optax's defaults. LARS: SlotCon's official recipe (CVMI-Lab/SlotCon,
# main_pretrain.py and utils/lars.py), which does not clip; its learning rate
# there is 1.0 * batch / 256 (16 for the scripts' batch of 4096).
DEFAULTS = {
    "adam": dict(b1=0.9, b2=0.999, eps=1e-8, grad_clip=0.0),
    "lars": dict(weight_decay=1e-5, momentum=0.9, trust_coefficient=1e-3, grad_clip=0.0),
}

_INF = float("inf")
# field: (test, requirement in words); NaN fails every test.
_RANGES = {
    "warmup_steps": (lambda v: 0 <= v < _INF, ">= 0"),
    "final_lr_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "warmup_start_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "b1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: 0 < v < _INF, "positive"),
    "grad_clip": (math.isfinite, "finite (<= 0: no clipping)"),
    "weight_decay": (lambda v: 0 <= v < _INF, ">= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "trust_coefficient": (lambda v: 0 < v < _INF, "positive"),
}


def schedule(learning_rate: float, total_steps: int, warmup_steps: int,
             final_lr_fraction: float, warmup_start_fraction: float | None = None
             ) -> optax.Schedule:
  """Linear warm-up from `learning_rate * warmup_start_fraction` (default
  1/(warmup+1)) to `learning_rate` at step `warmup_steps`, then cosine to
  `learning_rate * final_lr_fraction` at `total_steps`."""
  warmup = max(1, warmup_steps)
  # By default warm-up starts at lr/(warmup+1), not 0: a step at rate 0 would
  # be wasted. SlotCon's official schedule starts at lr/100.
  start = 1 / (warmup + 1) if warmup_start_fraction is None else warmup_start_fraction
  return optax.warmup_cosine_decay_schedule(
      learning_rate * start, learning_rate, warmup,
      max(warmup + 1, total_steps), end_value=learning_rate * final_lr_fraction)


def validate(opt: ml_collections.ConfigDict, prefix: str = "optimizer") -> None:
  """Raises ConfigError naming the first bad field of the section at `config.<prefix>`."""
  root = opt
  for part in reversed(prefix.split(".")):  # the check_* helpers name fields from the root
    root = ml_collections.ConfigDict({part: root})
  if "name" in opt:
    config_lib.check_choice(root, f"{prefix}.name", DEFAULTS)
  config_lib.check_positive(root, *(f"{prefix}.{key}" for key in opt.keys()
                                    if key.endswith("learning_rate")))
  for field in ("warmup_steps", "final_lr_fraction", "warmup_start_fraction",
                *DEFAULTS[opt.get("name", "adam")]):
    if field not in opt:
      continue
    value = opt[field]
    test, requirement = _RANGES[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(value):
      raise config_lib.ConfigError(f"config.{prefix}.{field}={value!r}: must be {requirement}")


def create(opt: ml_collections.ConfigDict, learning_rate: float, total_steps: int,
           prefix: str = "optimizer") -> optax.GradientTransformation:
  """The optimizer `opt.name` at peak rate `learning_rate`, on `schedule`.

  `prefix` is where `opt` sits in the config, for the names in error messages.
  """
  validate(opt, prefix)
  name = opt.get("name", "adam")
  field = lambda key: opt.get(key, DEFAULTS[name][key])
  rate = schedule(learning_rate, total_steps, opt.warmup_steps, opt.final_lr_fraction,
                  opt.get("warmup_start_fraction", None))
  if name == "adam":
    tx = optax.adam(rate, b1=field("b1"), b2=field("b2"), eps=field("eps"))
  else:
    tx = _lars(rate, field("weight_decay"), field("momentum"), field("trust_coefficient"))
  clip = field("grad_clip")
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx


def _lars(rate: optax.Schedule, weight_decay: float, momentum: float,
          trust_coefficient: float) -> optax.GradientTransformation:
  """LARS as SlotCon's official optimizer (from Barlow Twins) steps.

  Per leaf: g += wd * p and g *= trust * |p| / |g| (1 where either norm is 0),
  both skipped for 1-D leaves (biases, normalisation scales and offsets);
  mu = momentum * mu + g; p -= rate * mu.
  """
  def adapted(tree):
    return jax.tree.map(lambda p: p.ndim != 1, tree)

  # optax.lars has these pieces, but scales by the rate before the momentum
  # trace (mu accumulates rate * g), which departs from the official step as
  # soon as the scheduled rate changes; so the chain is rebuilt in its order.
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=adapted),
      optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient), adapted),
      optax.trace(decay=momentum),
      optax.scale_by_learning_rate(rate))
