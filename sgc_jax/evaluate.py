"""Evaluation of a tokenizer over a whole split.

One jitted pass per batch returns sums: reconstruction (PSNR, SSIM, L1, and
LPIPS with weights), codebook usage, and the pixel classes under every code
(a [K, C] co-occurrence matrix) from which all the semantic numbers follow
without another pass:
  - token purity: tokens whose code's class is the majority class of their
    patch (`sgc`: the class the code is allocated to; every mode: the code's
    own majority class over the split, `code_purity`);
  - zero-shot mIoU (`sgc`): each code predicts its allocated class, and the
    same with each token's argmax_c p(c|z) (the posterior the semantic loss
    trains; a [C, C] confusion gathered in the same pass);
  - Hungarian mIoU: the codes k-means-clustered into C groups (by their
    vectors, weighted by use; no labels), groups matched one to one to classes;
  - linear probe mIoU: a linear classifier (a 1x1 convolution) on the frozen
    quantized features of a training subset. A quantized feature is its code's
    vector, so training on every token is a weighted logistic regression over
    the K codes with the [K, C] token counts of the training subset as weights.
rFID needs Inception features of the real and reconstructed images (host
float64 statistics). With no weight file, LPIPS and rFID are absent (None).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.experimental import multihost_utils

from sgc_jax import losses, metrics
from sgc_jax.data import pipeline
from sgc_jax.models import codebook as codebook_lib
from sgc_jax.models import inception as inception_lib
from sgc_jax.models import lpips as lpips_lib
from sgc_jax.models.vqgan import SGCVQGAN


@dataclasses.dataclass
class Evaluation:
  metrics: dict[str, float | None]
  usage: np.ndarray  # [K] tokens per code
  cooccurrence: np.ndarray  # [K, C] pixels of each class under each code
  code_class: np.ndarray  # [K] the class each code stands for in semantic maps
  codes: np.ndarray  # [K, D] code vectors


@dataclasses.dataclass(frozen=True)
class PerceptualModels:
  """Frozen networks of the perceptual metrics; None: the metric is absent."""
  lpips_params: Any = None
  inception_params: Any = None


class Head:
  """The first `count` records of a source."""

  def __init__(self, source, count: int):
    self._source, self._count = source, min(count, len(source))

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int):
    if not 0 <= index < self._count:
      raise IndexError(index)
    return self._source[index]

  def __repr__(self) -> str:
    return f"Head({self._source!r}, {self._count})"


def eval_params(state):
  return state.ema_params if state.ema_params is not None else state.params


def split_totals(trainer, params, codebook, source, config, *, reconstruct: bool = True,
                 perceptual: PerceptualModels = PerceptualModels()) -> dict:
  """Sums over every record of `source` (host NumPy), and Inception statistics."""
  spec = pipeline.PipelineSpec(split=repr(source), global_batch_size=config.data.batch_size,
                               image_size=config.data.image_size, train=False,
                               num_shards=config.data.num_shards)
  batch_totals = _batch_totals_fn(trainer, config.model.codebook.label_threshold,
                                  reconstruct, perceptual.lpips_params is not None,
                                  perceptual.inception_params is not None)
  totals, fid = None, None
  if perceptual.inception_params is not None:
    fid = (metrics.GaussianStatistics(inception_lib.FEATURES),
           metrics.GaussianStatistics(inception_lib.FEATURES))
  batches = pipeline.InputPipeline(source, spec, trainer.mesh)
  for batch in tqdm.tqdm(batches, total=batches.num_batches, unit="batch", leave=False,
                         desc=f"evaluate {len(source)} images",
                         disable=jax.process_index() != 0, mininterval=2.0):
    out = batch_totals(params, codebook, perceptual.lpips_params, perceptual.inception_params,
                       batch)
    features = out.pop("inception", None)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    if features is not None:  # batch-sharded: every process gets all of them
      keep, features = multihost_utils.process_allgather((batch["mask"], features), tiled=True)
      for statistics, f in zip(fid, features):
        statistics.add(np.asarray(f)[np.asarray(keep)])
  totals = jax.tree.map(np.asarray, jax.device_get(totals))
  totals["fid"] = fid
  return totals


@functools.cache
def _batch_totals_fn(trainer, label_threshold: float, reconstruct: bool, with_lpips: bool,
                     with_inception: bool):
  """The jitted per-batch sums, compiled once per trainer and options."""
  mc = trainer.model_config
  num_classes = trainer.num_classes
  lpips = lpips_lib.LPIPS()
  inception = inception_lib.InceptionV3()

  @jax.jit
  def batch_totals(params, codebook, lpips_params, inception_params, batch):
    variables = {"params": params, "codebook": codebook}
    x = batch["image"][:, 0]
    weight = batch["mask"].astype(jnp.float32)
    segmentation = batch["segmentation"][:, 0]
    indices, _, posterior = trainer.model.apply(variables, x, method=SGCVQGAN.encode_all)
    labels = codebook_lib.token_labels(segmentation, mc.grid, num_classes, label_threshold)
    token_counts = jax.nn.one_hot(labels, num_classes) * weight[:, None, None, None]
    pixel_counts = metrics.patch_class_counts(segmentation, mc.grid, num_classes)
    out = {
        "images": weight.sum(),
        "usage": jnp.zeros(mc.codebook.num_codes).at[indices.reshape(-1)].add(
            jnp.broadcast_to(weight[:, None, None], indices.shape).reshape(-1)),
        "pixels": metrics.code_class_cooccurrence(indices, pixel_counts,
                                                  mc.codebook.num_codes, weight),
        "tokens": metrics.code_class_cooccurrence(indices, token_counts,
                                                  mc.codebook.num_codes),
    }
    if mc.codebook.mode == "sgc":  # [C predicted, C true] pixels of argmax_c p(c|z)
      out["posterior_pixels"] = metrics.code_class_cooccurrence(
          posterior, pixel_counts, num_classes, weight)
    if reconstruct:
      # Metrics see what a viewer sees: images in [-1, 1].
      x_hat = jnp.clip(trainer.model.apply(variables, indices, method=SGCVQGAN.decode),
                       -1.0, 1.0)
      out.update(psnr=jnp.sum(losses.psnr(x, x_hat) * weight),
                 ssim=jnp.sum(metrics.ssim(x, x_hat) * weight),
                 l1=jnp.sum(jnp.abs(x - x_hat).mean((1, 2, 3)) * weight))
      if with_lpips:
        out["lpips"] = jnp.sum(lpips.apply({"params": lpips_params}, x, x_hat) * weight)
      if with_inception:
        out["inception"] = (inception.apply({"params": inception_params}, x),
                            inception.apply({"params": inception_params}, x_hat))
    return out

  return batch_totals


def linear_probe(codes: np.ndarray, token_counts: np.ndarray, steps: int,
                 learning_rate: float = 0.05) -> np.ndarray:
  """The class a linear classifier on quantized features gives each code.

  codes [K, D]; token_counts [K, C]: labeled training tokens of each class
  quantized to each code. The classifier is trained on all of those tokens
  (full batch, Adam, `steps` steps) on standardised features.
  """
  codes = jnp.asarray(codes, jnp.float32)
  counts = jnp.asarray(token_counts, jnp.float32)
  weight = counts.sum(1, keepdims=True)
  mean = jnp.sum(codes * weight, 0) / jnp.maximum(weight.sum(), 1)
  std = jnp.sqrt(jnp.sum((codes - mean) ** 2 * weight, 0) / jnp.maximum(weight.sum(), 1)) + 1e-6
  features = (codes - mean) / std
  probe = {"w": jnp.zeros((codes.shape[1], counts.shape[1])), "b": jnp.zeros(counts.shape[1])}
  tx = optax.adam(learning_rate)

  def loss(p):
    log_p = jax.nn.log_softmax(features @ p["w"] + p["b"])
    return -jnp.sum(counts * log_p) / jnp.maximum(counts.sum(), 1)

  def step(carry, _):
    p, opt_state = carry
    grads = jax.grad(loss)(p)
    updates, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(p, updates), opt_state), None

  (probe, _), _ = jax.lax.scan(step, (probe, tx.init(probe)), None, length=steps)
  return np.asarray(jnp.argmax(features @ probe["w"] + probe["b"], -1))


def evaluate(trainer, state, dataset, config, *, probe: bool = False,
             perceptual: PerceptualModels = PerceptualModels()) -> Evaluation:
  """Every metric over the config's evaluation split (see the module docstring)."""
  mc = trainer.model_config
  params, codebook = eval_params(state), state.codebook
  num_classes = trainer.num_classes
  totals = split_totals(trainer, params, codebook, dataset.split(config.data.eval_split),
                        config, perceptual=perceptual)
  images = max(float(totals["images"]), 1.0)
  results: dict[str, float | None] = {
      "psnr": float(totals["psnr"]) / images, "ssim": float(totals["ssim"]) / images,
      "l1": float(totals["l1"]) / images,
      "lpips": float(totals["lpips"]) / images if "lpips" in totals else None,
      "rfid": None, "images": images}
  if totals["fid"] is not None:
    real, fake = (s.mean_and_covariance() for s in totals["fid"])
    results["rfid"] = metrics.frechet_distance(*real, *fake)
  usage = totals["usage"]
  results.update(metrics.codebook_statistics(usage))

  codes = np.asarray(jax.device_get(trainer.model.apply(
      {"params": params, "codebook": codebook}, method=lambda m: m.codebook.codes())))
  pixels, tokens = totals["pixels"], totals["tokens"]
  labeled = max(tokens.sum(), 1.0)
  results["code_purity"] = float(tokens.max(1).sum() / labeled)
  results["token_purity"] = results["zero_shot_miou"] = results["posterior_miou"] = None
  code_class = None
  if mc.codebook.mode == "sgc":
    code_class = np.asarray(jax.device_get(codebook["codebook"]["code_class"]))
    results["token_purity"] = float(tokens[np.arange(len(code_class)), code_class].sum()
                                    / labeled)
    results["zero_shot_miou"] = metrics.mean_iou(
        metrics.confusion_from_assignment(pixels, code_class, num_classes))
    results["posterior_miou"] = metrics.mean_iou(totals["posterior_pixels"])
  clusters = metrics.kmeans(codes, num_classes, weights=usage, seed=config.seed)
  cluster_confusion = metrics.confusion_from_assignment(pixels, clusters, num_classes)
  results["hungarian_miou"] = metrics.mean_iou(metrics.matched_confusion(cluster_confusion))
  if code_class is None:  # semantic maps of vq / ema: the matched clusters
    matching = metrics.hungarian_match(cluster_confusion)
    code_class = np.where(matching[clusters] >= 0, matching[clusters], num_classes)
  results["probe_miou"] = None
  if probe:
    train = Head(dataset.split(config.data.train_split), config.eval.probe_images)
    train_tokens = split_totals(trainer, params, codebook, train, config,
                                reconstruct=False)["tokens"]
    predicted = linear_probe(codes, train_tokens, config.eval.probe_steps)
    results["probe_miou"] = metrics.mean_iou(
        metrics.confusion_from_assignment(pixels, predicted, num_classes))
  return Evaluation(results, usage, pixels, code_class, codes)
