"""Use of the method's units (codebook usage, perplexity, usage entropy, the
share of the top 10 % units) over the evaluation split. Reads `indices`.

Option `train_images` (0: off): in `--mode=eval`, the usage over that many
training images too, as `train_codebook_usage`. Set to the size of the
evaluation split, it tells a codebook that leaves codes unused (on training
and held-out frames alike) from one whose codes fit content that the
held-out frames do not show (used on training frames, unused on held-out)."""

from __future__ import annotations

import jax.numpy as jnp

from sgc_jax.config_lib import ConfigError
from sgc_jax.core.evaluation import Evaluator, split_pass
from sgc_jax.data import pipeline
from sgc_jax.ops import metrics


def unit_usage(indices, weight, num_units: int):
  """Tokens per unit [K] of [N, g, g] indices, examples weighted by `weight` [N]."""
  return jnp.zeros(num_units).at[indices.reshape(-1)].add(
      jnp.broadcast_to(weight[:, None, None], indices.shape).reshape(-1))


class Codebook(Evaluator):
  rows = (("codebook_usage", "codebook usage", ".3f"), ("perplexity", "perplexity", ".1f"),
          ("normalized_entropy", "usage entropy / log K", ".3f"),
          ("top10_share", "tokens on top-10 % codes", ".3f"),
          ("train_codebook_usage", "codebook usage, training images", ".3f"))

  def __init__(self, name, options):
    super().__init__(name, options)
    train_images = options.get("train_images", 0)
    if not (isinstance(train_images, int) and train_images >= 0):
      raise ConfigError(f"config.evals.{name}.train_images={train_images!r}: must be an "
                        "integer >= 0")
    self.train_images = train_images

  def start(self, context):
    """In --mode=eval with `train_images`: the usage over those training images."""
    if not (context.final and self.train_images):
      return None
    train = pipeline.head(context.dataset.split(context.config.data.train_split),
                          self.train_images)
    totals = split_pass(context.method, context.variables, train, context.config,
                        [(self, None, self.static(context))])
    return {"train_usage": totals[self.name]["usage"]}

  def static(self, context):
    return len(context.units.vectors)

  def batch_sums(self, predictions, batch, constants, num_units):
    weight = batch["mask"].astype(jnp.float32)
    return {"usage": unit_usage(predictions.indices, weight, num_units),
            "images": weight.sum()}

  def finish(self, totals, state, context):
    results = {"images": float(totals["images"]),
               **metrics.codebook_statistics(totals["usage"])}
    if state is not None:
      results["train_codebook_usage"] = float((state["train_usage"] > 0).mean())
    return results
