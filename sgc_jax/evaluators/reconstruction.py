"""Reconstruction quality over the evaluation split: PSNR, SSIM and L1 always;
LPIPS and rFID with their weight files (the entry's `lpips_weights`, else
`loss.lpips_weights`; `inception_weights`), in `--mode=eval` only. Reads the
method's `reconstruction` prediction."""

from __future__ import annotations

import jax.numpy as jnp
from absl import logging

from sgc_jax.convert import lpips as lpips_weights
from sgc_jax.core.evaluation import Context, Evaluator
from sgc_jax.models import inception as inception_lib
from sgc_jax.models import lpips as lpips_lib
from sgc_jax.ops import losses, metrics


class Perceptual:
  """Frozen networks of the perceptual metrics (None: the metric is absent),
  and the Inception statistics of one evaluation."""

  def __init__(self, lpips_params=None, inception_params=None):
    self.lpips_params, self.inception_params = lpips_params, inception_params
    self.fid = None
    if inception_params is not None:
      self.fid = (metrics.GaussianStatistics(inception_lib.FEATURES),
                  metrics.GaussianStatistics(inception_lib.FEATURES))


class Reconstruction(Evaluator):
  rows = (("psnr", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".3f"), ("l1", "L1", ".4f"),
          ("lpips", "LPIPS", ".4f"), ("rfid", "rFID", ".2f"))
  _lpips = lpips_lib.LPIPS()
  _inception = inception_lib.InceptionV3()

  def start(self, context: Context) -> Perceptual:
    if not context.final:
      return Perceptual()
    from sgc_jax.convert import inception as inception_convert
    lpips_path = self.options.get("lpips_weights") or context.config.loss.get("lpips_weights")
    inception_path = self.options.get("inception_weights")
    perceptual = Perceptual(lpips_weights.load_params(lpips_path) if lpips_path else None,
                            inception_convert.load(inception_path) if inception_path else None)
    for name, value in (("LPIPS", perceptual.lpips_params),
                        ("rFID", perceptual.inception_params)):
      if value is None:
        logging.warning("%s absent: no weight file in config.evals.%s", name, self.name)
    return perceptual

  def constants(self, state: Perceptual):
    return (state.lpips_params, state.inception_params)

  def batch_sums(self, predictions, batch, constants, static):
    lpips_params, _ = constants
    x = batch["image"][:, 0]
    weight = batch["mask"].astype(jnp.float32)
    # Metrics see what a viewer sees: images in [-1, 1].
    x_hat = jnp.clip(predictions.reconstruction, -1.0, 1.0)
    out = {"images": weight.sum(), "psnr": jnp.sum(losses.psnr(x, x_hat) * weight),
           "ssim": jnp.sum(metrics.ssim(x, x_hat) * weight),
           "l1": jnp.sum(jnp.abs(x - x_hat).mean((1, 2, 3)) * weight)}
    if lpips_params is not None:
      out["lpips"] = jnp.sum(self._lpips.apply({"params": lpips_params}, x, x_hat) * weight)
    return out

  def examples(self, predictions, batch, constants, static):
    _, inception_params = constants
    if inception_params is None:
      return None
    x_hat = jnp.clip(predictions.reconstruction, -1.0, 1.0)
    return (self._inception.apply({"params": inception_params}, batch["image"][:, 0]),
            self._inception.apply({"params": inception_params}, x_hat))

  def add_examples(self, state: Perceptual, arrays) -> None:
    for statistics, features in zip(state.fid, arrays):
      statistics.add(features)

  def finish(self, totals, state: Perceptual, context):
    images = max(float(totals["images"]), 1.0)
    results = {"psnr": float(totals["psnr"]) / images, "ssim": float(totals["ssim"]) / images,
               "l1": float(totals["l1"]) / images,
               "lpips": float(totals["lpips"]) / images if "lpips" in totals else None,
               "rfid": None, "images": images}
    if state.fid is not None:
      real, fake = (s.mean_and_covariance() for s in state.fid)
      results["rfid"] = metrics.frechet_distance(*real, *fake)
    return results
