"""The adversarial part of a tokenizer (taming-transformers' recipe), for any
method with a decoder: a PatchGAN discriminator with its optimizer state, the
generator's hinge term under the adaptive weight, and the discriminator's step.

Its state is three fields of the method's state: `disc_params`, `disc_stats`
(batch norm) and `disc_opt_state`.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

from sgc_jax.models.discriminator import PatchDiscriminator
from sgc_jax.ops import losses


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

  def weighted_generator_loss(self, state, reconstruction, weight,
                              nll_of_last: Callable, last: Callable, kernel,
                              disc_weight: float, max_weight: float):
    """(disc_weight * adaptive weight * generator term, adaptive weight).

    The adaptive weight balances the gradients of the two terms at the last
    layer's kernel only (`last(kernel)` -> reconstruction through that layer;
    `nll_of_last(kernel)` -> the reconstruction loss through it)."""
    adaptive = losses.adaptive_weight(
        jax.grad(nll_of_last)(kernel),
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
