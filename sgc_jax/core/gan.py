"""The adversarial part of a tokenizer (taming-transformers' recipe), for any
method with a decoder: a PatchGAN discriminator with its optimizer state, the
generator's hinge term under the adaptive weight, and the discriminator's step;
with it the reconstruction loss (`nll`) and when the GAN term is on (`gan_on`).

Its state is three fields of the method's state: `disc_params`, `disc_stats`
(batch norm) and `disc_opt_state`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from sgc_jax.models.discriminator import PatchDiscriminator
from sgc_jax.ops import losses


def gan_on(loss, step: int) -> bool:
  """Whether the GAN term is on at `step` (`config.loss`: from `disc_start`,
  where `disc_weight` > 0): the `phase` of a method with a GAN."""
  return step >= loss.disc_start and loss.disc_weight > 0


def nll(loss, x, reconstruction, weight, lpips=None, lpips_params=None,
        scale_before_mean: bool = False):
  """taming's `nll`: the `loss.reconstruction` (l1, l2) term plus, with an LPIPS
  module, `loss.perceptual_weight` x its distance; means over examples weighted
  by `weight` [N] (padding 0). `scale_before_mean`: SGC-VQGAN's order for the
  perceptual term, (weight x sum) / count, which rounds differently from
  weight x mean."""
  value = losses.reconstruction(x, reconstruction, weight, loss.reconstruction)
  if lpips is not None and loss.perceptual_weight > 0:
    distance = lpips.apply({"params": lpips_params}, x, reconstruction)
    if scale_before_mean:
      value = value + loss.perceptual_weight * jnp.sum(
          distance * weight) / jnp.maximum(weight.sum(), 1.0)
    else:
      value = value + loss.perceptual_weight * losses.masked_mean(distance, weight)
  return value


class Adversarial:

  def __init__(self, ch: int, num_layers: int, dtype, tx: optax.GradientTransformation):
    self.disc = PatchDiscriminator(ch=ch, num_layers=num_layers, dtype=dtype)
    self.tx = tx

  def init(self, key, images) -> dict:
    """{disc_params, disc_stats, disc_opt_state} for images like `images`."""
    variables = self.disc.init(key, images, train=False)
    return dict(disc_params=variables["params"], disc_stats=variables["batch_stats"],
                disc_opt_state=self.tx.init(variables["params"]))

  def generator_loss(self, state, reconstruction, weight):
    """The hinge generator term of `reconstruction` (batch statistics of this batch)."""
    logits, _ = self.disc.apply({"params": state.disc_params, "batch_stats": state.disc_stats},
                                reconstruction, train=True, mutable=["batch_stats"])
    return losses.generator_adversarial(logits, weight)

  def weighted_generator_loss(self, state, reconstruction, weight, nll_of: Callable,
                              model, params, features, last_layer: Callable,
                              disc_weight: float, max_weight: float):
    """(disc_weight * adaptive weight * generator term, adaptive weight).

    The adaptive weight balances the gradients of the two terms at the last
    layer's kernel only (taming's), `params["conv_out"]["kernel"]`: the
    reconstruction through that layer is `model.apply(..., method=last_layer)`
    of the decoder's `features`, everything but the kernel held constant;
    `nll_of(reconstruction)` is the reconstruction loss."""
    conv_out = jax.lax.stop_gradient(params["conv_out"])

    def last(kernel):
      frozen = dict(jax.lax.stop_gradient(params), conv_out=dict(conv_out, kernel=kernel))
      return model.apply({"params": frozen}, jax.lax.stop_gradient(features), method=last_layer)

    kernel = conv_out["kernel"]
    adaptive = losses.adaptive_weight(
        jax.grad(lambda w: nll_of(last(w)))(kernel),
        jax.grad(lambda w: self.generator_loss(state, last(w), weight))(kernel), max_weight)
    return disc_weight * adaptive * self.generator_loss(state, reconstruction, weight), adaptive

  def update(self, state, real, fake, weight) -> tuple[dict, jax.Array]:
    """One discriminator step on real and (stop-gradient) fake images:
    ({disc_params, disc_stats, disc_opt_state}, hinge loss)."""
    fake = jax.lax.stop_gradient(fake)

    def loss(params):
      real_logits, updated = self.disc.apply(
          {"params": params, "batch_stats": state.disc_stats}, real, train=True,
          mutable=["batch_stats"])
      fake_logits, updated = self.disc.apply(
          {"params": params, "batch_stats": updated["batch_stats"]}, fake, train=True,
          mutable=["batch_stats"])
      return losses.hinge_discriminator(real_logits, fake_logits, weight), updated["batch_stats"]

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(state.disc_params)
    updates, opt_state = self.tx.update(grads, state.disc_opt_state, state.disc_params)
    params = optax.apply_updates(state.disc_params, updates)
    return dict(disc_params=params, disc_stats=stats, disc_opt_state=opt_state), value

  def step(self, state, with_gan: bool, real, fake, weight, metrics: dict) -> dict:
    """The state's discriminator fields after a train step: one update on
    (real, fake) when the GAN term is on (its loss into metrics["disc_loss"]),
    else as they were."""
    if not with_gan:
      return dict(disc_params=state.disc_params, disc_stats=state.disc_stats,
                  disc_opt_state=state.disc_opt_state)
    disc, metrics["disc_loss"] = self.update(state, real, fake, weight)
    return disc
