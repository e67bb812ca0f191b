"""Exponential moving averages of parameters: SGC-VQGAN's EMA generator, and
the momentum teacher of BYOL / DINO / SlotCon with its cosine momentum schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def update(ema, params, decay):
  """decay * ema + (1 - decay) * params, leaf by leaf."""
  # This expression order keeps results bit-identical to the earlier trainer.
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def cosine_momentum(step, total_steps: int, base: float) -> jax.Array:
  """Teacher momentum rising from `base` at step 0 to 1 at `total_steps` on a cosine.

  `step` may be traced. Steps past the end keep momentum 1 (a run extended
  beyond its planned length must not see the cosine come back down).
  """
  step = jnp.minimum(step, total_steps)
  return 1 - (1 - base) * (jnp.cos(jnp.pi * step / total_steps) + 1) / 2
