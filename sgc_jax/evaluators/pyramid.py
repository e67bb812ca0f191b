"""Every level of a pyramid tokenizer (PAT) over the evaluation split: its
codebook's usage (utilisation, perplexity, normalised entropy, top-10 %
share) and the PSNR and L1 of the level's own picture against the image
area-averaged to its grid. Reads `levels` = {"indices": per level [B, g, g],
"pictures": per level [B, g, g, 3]} and the method's `level_codes()`."""

from __future__ import annotations

import jax.numpy as jnp

from sgc_jax.core.evaluation import Evaluator
from sgc_jax.evaluators.codebook import unit_usage
from sgc_jax.models.pat import area_downsample
from sgc_jax.ops import losses, metrics


class Pyramid(Evaluator):

  def static(self, context):
    return tuple(context.method.level_codes())

  def batch_sums(self, predictions, batch, constants, level_codes):
    x = batch["image"][:, 0]
    weight = batch["mask"].astype(jnp.float32)
    levels = predictions["levels"]
    out = {"images": weight.sum()}
    for level, (indices, picture) in enumerate(zip(levels["indices"], levels["pictures"])):
      target = area_downsample(x, x.shape[1] // picture.shape[1])
      picture = jnp.clip(picture, -1.0, 1.0)
      out[f"usage_{level}"] = unit_usage(indices, weight, level_codes[level])
      out[f"psnr_{level}"] = jnp.sum(losses.psnr(target, picture) * weight)
      out[f"l1_{level}"] = jnp.sum(jnp.abs(target - picture).mean((1, 2, 3)) * weight)
    return out

  def finish(self, totals, state, context):
    images = max(float(totals["images"]), 1.0)
    results = {}
    for level in range(len(context.method.level_codes())):
      results[f"psnr_{level}"] = float(totals[f"psnr_{level}"]) / images
      results[f"l1_{level}"] = float(totals[f"l1_{level}"]) / images
      results.update({f"{k}_{level}": v for k, v in
                      metrics.codebook_statistics(totals[f"usage_{level}"]).items()})
    return results
