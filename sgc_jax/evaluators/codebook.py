"""Use of the method's units (codebook usage, perplexity, usage entropy, the
share of the top 10 % units) over the evaluation split. Reads `indices`."""

from __future__ import annotations

import jax.numpy as jnp

from sgc_jax.core.evaluation import Evaluator
from sgc_jax.ops import metrics


def unit_usage(indices, weight, num_units: int):
  """Tokens per unit [K] of [N, g, g] indices, examples weighted by `weight` [N]."""
  return jnp.zeros(num_units).at[indices.reshape(-1)].add(
      jnp.broadcast_to(weight[:, None, None], indices.shape).reshape(-1))


class Codebook(Evaluator):
  rows = (("codebook_usage", "codebook usage", ".3f"), ("perplexity", "perplexity", ".1f"),
          ("normalized_entropy", "usage entropy / log K", ".3f"),
          ("top10_share", "tokens on top-10 % codes", ".3f"))

  def static(self, context):
    return len(context.units.vectors)

  def batch_sums(self, predictions, batch, constants, num_units):
    weight = batch["mask"].astype(jnp.float32)
    return {"usage": unit_usage(predictions.indices, weight, num_units),
            "images": weight.sum()}

  def finish(self, totals, state, context):
    return {"images": float(totals["images"]), **metrics.codebook_statistics(totals["usage"])}
