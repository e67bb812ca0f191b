"""Evaluation over a whole validation split: reconstruction and codebook numbers."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sgc_jax import losses
from sgc_jax.data import pipeline
from sgc_jax.models import codebook as codebook_lib
from sgc_jax.models.vqgan import SGCVQGAN


def evaluate(trainer, state, source, config) -> dict[str, float]:
  """PSNR, L1, codebook utilisation and perplexity over the split; for `sgc`, the
  token purity (token's code class = majority class of its patch, labeled tokens)."""
  mc = trainer.model_config
  spec = pipeline.PipelineSpec(split=config.data.eval_split,
                               global_batch_size=config.data.batch_size,
                               image_size=config.data.image_size, train=False,
                               num_shards=config.data.num_shards)
  batches = pipeline.InputPipeline(source, spec, trainer.mesh)
  params = state.ema_params if state.ema_params is not None else state.params
  batch_totals = _batch_totals_fn(trainer, config.model.codebook.label_threshold)
  totals = None
  for batch in batches:
    out = batch_totals(params, state.codebook, batch)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  usage = np.asarray(totals["usage"])
  p = usage / max(usage.sum(), 1.0)
  results = {"val/psnr": float(totals["psnr"] / totals["images"]),
             "val/l1": float(totals["l1"] / totals["images"]),
             "val/codebook_usage": float((usage > 0).mean()),
             "val/perplexity": float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())),
             "val/images": float(totals["images"])}
  if mc.codebook.mode == "sgc":
    results["val/token_purity"] = float(totals["pure"] / max(totals["labeled"], 1.0))
  return results


@functools.cache
def _batch_totals_fn(trainer, label_threshold: float):
  """The jitted per-batch sums of `evaluate`, compiled once per trainer."""
  mc = trainer.model_config
  num_classes = max(mc.codebook.num_classes, 1)

  @jax.jit
  def batch_totals(params, codebook, batch):
    variables = {"params": params, "codebook": codebook}
    x = batch["image"][:, 0]
    weight = batch["mask"].astype(jnp.float32)
    indices, classes = trainer.model.apply(variables, x, method=SGCVQGAN.encode)
    x_hat = trainer.model.apply(variables, indices, method=SGCVQGAN.decode)
    labels = codebook_lib.token_labels(batch["segmentation"][:, 0], mc.grid, num_classes,
                                       label_threshold)
    token_weight = jnp.broadcast_to(weight[:, None, None], labels.shape) * (labels >= 0)
    usage = jnp.zeros(mc.codebook.num_codes).at[indices.reshape(-1)].add(
        jnp.broadcast_to(weight[:, None, None], indices.shape).reshape(-1))
    return {"psnr": jnp.sum(losses.psnr(x, x_hat) * weight),
            "l1": jnp.sum(jnp.abs(x - x_hat).mean((1, 2, 3)) * weight),
            "images": weight.sum(), "usage": usage,
            "pure": jnp.sum((classes == labels) * token_weight),
            "labeled": token_weight.sum()}

  return batch_totals
