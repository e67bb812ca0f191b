"""Every level of a pyramid tokenizer (PAT) over the evaluation split: its
codebook's usage (utilisation, perplexity, normalised entropy, top-10 %
share) and the PSNR and L1 of the level's own picture against the image
area-averaged to its grid. Reads the predictions' `levels` and the method's
`level_codes()`."""

from __future__ import annotations

import re

import jax.numpy as jnp

from sgc_jax.config_lib import ConfigError
from sgc_jax.core.evaluation import Evaluator
from sgc_jax.evaluators.codebook import unit_usage
from sgc_jax.ops import losses, metrics
from sgc_jax.ops.grids import area_downsample


class Pyramid(Evaluator):

  @classmethod
  def table_rows(cls, results):
    """Per level the results hold, finest first."""
    found = (re.fullmatch(r"(psnr|l1|codebook_usage|perplexity)_(\d+)", key) for key in results)
    levels = sorted({int(match.group(2)) for match in found if match})
    return [(f"{key}_{level}", f"level {level}: {label}", spec) for level in levels
            for key, label, spec in (("psnr", "PSNR of its picture (dB)", ".2f"),
                                     ("l1", "L1 of its picture", ".4f"),
                                     ("codebook_usage", "codebook usage", ".3f"),
                                     ("perplexity", "perplexity", ".1f"),
                                     ("normalized_entropy", "usage entropy / log K", ".3f"),
                                     ("top10_share", "tokens on top-10 % codes", ".3f"))
            if f"{key}_{level}" in results]

  def static(self, context):
    if not context.method.level_codes():
      raise ConfigError(f"config.evals.{self.name}: method {context.method.name!r} is not a "
                        "pyramid tokenizer (it has no levels)")
    return tuple(context.method.level_codes())

  def batch_sums(self, predictions, batch, constants, level_codes):
    x = batch["image"][:, 0]
    weight = batch["mask"].astype(jnp.float32)
    levels = predictions.levels
    out = {"images": weight.sum()}
    for level, (indices, picture) in enumerate(zip(levels.indices, levels.pictures)):
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
