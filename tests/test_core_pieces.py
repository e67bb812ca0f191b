"""Core pieces: the optimizer schedule, Adam and LARS, parameter EMA."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sgc_jax import config_lib
from sgc_jax.core import ema, optim

LR, TOTAL, WARMUP, FINAL = 2e-3, 10, 3, 0.05


def _opt(**fields):
  base = dict(warmup_steps=WARMUP, final_lr_fraction=FINAL)
  base.update(fields)
  return ml_collections.ConfigDict(base)


def _tree(seed, shapes):
  rng = np.random.default_rng(seed)
  return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


def _run(tx, params, grads_list, jit=False):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  step = jax.jit(step) if jit else step
  state = tx.init(params)
  for grads in grads_list:
    params, state = step(params, state, grads)
  return params, state


def test_schedule_warmup_then_cosine():
  rate = optim.schedule(LR, TOTAL, WARMUP, FINAL)
  np.testing.assert_allclose(rate(0), LR / (WARMUP + 1), rtol=1e-6)
  np.testing.assert_allclose(rate(1), LR / (WARMUP + 1) + (LR - LR / (WARMUP + 1)) / WARMUP,
                             rtol=1e-6)
  np.testing.assert_allclose(rate(WARMUP), LR, rtol=1e-6)
  for step in (5, 8):
    cosine = 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (TOTAL - WARMUP)))
    np.testing.assert_allclose(rate(step), LR * FINAL + (LR - LR * FINAL) * cosine, rtol=1e-6)
  np.testing.assert_allclose(rate(TOTAL), LR * FINAL, rtol=1e-6)
  # No warm-up asked: still one step, starting at lr/2 rather than 0.
  np.testing.assert_allclose(optim.schedule(LR, TOTAL, 0, FINAL)(0), LR / 2, rtol=1e-6)


@pytest.mark.parametrize("named", [True, False])
def test_adam_is_todays_chain_bit_for_bit(named):
  opt = _opt(b1=0.5, b2=0.9, eps=1e-8, grad_clip=1.0, **({"name": "adam"} if named else {}))
  expected_tx = optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adam(optim.schedule(LR, TOTAL, WARMUP, FINAL), b1=0.5, b2=0.9, eps=1e-8))
  shapes = {"kernel": (4, 3), "bias": (3,)}
  params = _tree(0, shapes)
  grads = [_tree(seed, shapes) for seed in (1, 2, 3)]
  got, _ = _run(optim.create(opt, LR, TOTAL), params, grads)
  expected, _ = _run(expected_tx, params, grads)
  assert not any(jax.tree.leaves(jax.tree.map(np.array_equal, got, params)))
  chex.assert_trees_all_equal(got, expected)


def _official_lars(params, grads_list, rates, weight_decay, momentum, eta):
  """SlotCon's LARS step (utils/lars.py) in float64 NumPy."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  for grads, rate in zip(grads_list, rates):
    for k, p in params.items():
      dp = grads[k].astype(np.float64)
      if p.ndim != 1:
        dp = dp + weight_decay * p
        param_norm, update_norm = np.linalg.norm(p), np.linalg.norm(dp)
        if param_norm > 0 and update_norm > 0:
          dp = dp * (eta * param_norm / update_norm)
      mu[k] = momentum * mu[k] + dp
      params[k] = p - rate * mu[k]
  return params


@pytest.mark.parametrize("fields", [{}, dict(weight_decay=0.1, momentum=0.8,
                                             trust_coefficient=0.01)])
def test_lars_matches_the_official_step(fields):
  shapes = {"kernel": (5, 4), "bias": (4,)}
  params = _tree(0, shapes)
  grads = [_tree(seed, shapes) for seed in (1, 2)]
  opt = _opt(name="lars", **fields)
  got, _ = _run(optim.create(opt, 16.0, TOTAL), params, grads)
  # The two steps are in the warm-up, at different rates: the momentum must
  # accumulate raw (adapted) gradients, scaled by the current rate afterwards.
  rate = optim.schedule(16.0, TOTAL, WARMUP, FINAL)
  defaults = dict(optim.DEFAULTS["lars"], **fields)
  expected = _official_lars(params, grads, [float(rate(0)), float(rate(1))],
                            defaults["weight_decay"], defaults["momentum"],
                            defaults["trust_coefficient"])
  chex.assert_trees_all_close(got, expected, rtol=2e-6, atol=1e-7)
  # optax.lars, which puts the rate inside the momentum, fails this comparison.
  adapted = lambda tree: jax.tree.map(lambda p: p.ndim != 1, tree)
  lars, _ = _run(optax.lars(rate, defaults["weight_decay"], adapted,
                            defaults["trust_coefficient"], trust_ratio_mask=adapted,
                            momentum=defaults["momentum"]), params, grads)
  assert not np.allclose(lars["bias"], expected["bias"], rtol=1e-3)


def test_lars_clips_when_asked():
  shapes = {"kernel": (5, 4), "bias": (4,)}
  params = _tree(0, shapes)
  grads = [{k: 100 * v for k, v in _tree(1, shapes).items()}]
  clipped, _ = _run(optim.create(_opt(name="lars", grad_clip=1.0), 1.0, TOTAL), params, grads)
  unclipped, _ = _run(optim.create(_opt(name="lars"), 1.0, TOTAL), params, grads)
  # The trust ratio undoes the scale on the kernel; the bias step shrinks.
  np.testing.assert_allclose(clipped["kernel"], unclipped["kernel"], rtol=1e-5)
  assert (np.abs(clipped["bias"] - params["bias"]).max()
          < 0.1 * np.abs(unclipped["bias"] - params["bias"]).max())


@pytest.mark.parametrize("fields, prefix, named", [
    (dict(name="sgd"), "optimizer", "config.optimizer.name='sgd'"),
    (dict(name="sgd"), "methods.slotcon.optimizer", "config.methods.slotcon.optimizer.name"),
    (dict(learning_rate=-1.0), "optimizer", "config.optimizer.learning_rate=-1.0"),
    (dict(disc_learning_rate=float("nan")), "optimizer", "config.optimizer.disc_learning_rate"),
    (dict(name="lars", momentum=1.0), "optimizer", "config.optimizer.momentum=1.0"),
    (dict(name="lars", weight_decay=-1e-5), "optimizer", "config.optimizer.weight_decay"),
    (dict(name="lars", trust_coefficient=0), "optimizer", "config.optimizer.trust_coefficient"),
    (dict(b2=1.0), "optimizer", "config.optimizer.b2=1.0"),
    (dict(eps="1e-8"), "optimizer", "config.optimizer.eps='1e-8'"),
    (dict(final_lr_fraction=1.5), "optimizer", "config.optimizer.final_lr_fraction"),
])
def test_bad_fields_are_named(fields, prefix, named):
  opt = _opt(**fields)
  with pytest.raises(config_lib.ConfigError, match="^" + named.replace(".", r"\.")) as error:
    optim.validate(opt, prefix)
  assert "\n" not in str(error.value)
  if prefix == "optimizer":
    with pytest.raises(config_lib.ConfigError, match=named.replace(".", r"\.")):
      optim.create(opt, LR, TOTAL)


def test_good_sections_pass():
  optim.validate(_opt(learning_rate=1e-3, b1=0.5, b2=0.9, eps=1e-8, grad_clip=1.0))
  optim.validate(_opt(name="lars", learning_rate=16.0, grad_clip=0.0))


def test_ema_update():
  ema_tree, params = _tree(0, {"a": (3, 2), "b": (4,)}), _tree(1, {"a": (3, 2), "b": (4,)})
  got = ema.update(ema_tree, params, 0.9)
  expected = jax.tree.map(lambda e, p: 0.9 * e.astype(np.float64) + 0.1 * p, ema_tree, params)
  chex.assert_trees_all_close(got, expected, rtol=1e-6)
  jitted = jax.jit(ema.update)(ema_tree, params, 0.9)
  chex.assert_trees_all_close(jitted, got, rtol=1e-6)


def test_cosine_momentum():
  momentum = jax.jit(ema.cosine_momentum, static_argnums=(1, 2))
  for step, expected in ((0, 0.99), (50, 0.995), (100, 1.0), (150, 1.0)):
    np.testing.assert_allclose(momentum(jnp.int32(step), 100, 0.99), expected, rtol=1e-6)
  assert float(momentum(jnp.int32(25), 100, 0.99)) < 0.995
