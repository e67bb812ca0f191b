"""Losses of the generator and the discriminator."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def masked_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
  """Mean over examples [N, ...] with per-example weights [N] (padding = 0)."""
  per_example = values.reshape(values.shape[0], -1).mean(-1)
  return jnp.sum(per_example * weight) / jnp.maximum(weight.sum(), 1.0)


def reconstruction(x, x_hat, weight, kind: str = "l1"):
  diff = jnp.abs(x - x_hat) if kind == "l1" else (x - x_hat) ** 2
  return masked_mean(diff, weight)


def hinge_discriminator(logits_real, logits_fake, weight):
  return 0.5 * (masked_mean(jax.nn.relu(1.0 - logits_real), weight) +
                masked_mean(jax.nn.relu(1.0 + logits_fake), weight))


def generator_adversarial(logits_fake, weight):
  return -masked_mean(logits_fake, weight)


def adaptive_weight(grad_rec, grad_gan, max_weight: float = 1e4):
  """‖∇L_rec‖ / (‖∇L_gan‖ + 1e-4) at the last decoder layer, clipped, no gradient."""
  norm = lambda tree: jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(tree)))
  weight = norm(grad_rec) / (norm(grad_gan) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def psnr(x, x_hat):
  """Per-image PSNR of [-1, 1] images [N, H, W, C], in dB."""
  chex.assert_rank([x, x_hat], 4)
  chex.assert_equal_shape([x, x_hat])
  mse = jnp.mean(((x - x_hat) / 2.0) ** 2, axis=(1, 2, 3))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
