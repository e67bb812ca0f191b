"""`--mode=eval`: every metric of a trained checkpoint over the validation split,
written as WORKDIR/eval/eval.json, eval.md and PNGs."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from sgc_jax import evaluate, report, train, viz
from sgc_jax.data import pipeline

# Rows of the markdown table: key, label, format.
TABLE = (("psnr", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".3f"), ("l1", "L1", ".4f"),
         ("lpips", "LPIPS", ".4f"), ("rfid", "rFID", ".2f"),
         ("codebook_usage", "codebook usage", ".3f"), ("perplexity", "perplexity", ".1f"),
         ("normalized_entropy", "usage entropy / log K", ".3f"),
         ("top10_share", "tokens on top-10 % codes", ".3f"),
         ("token_purity", "token purity (allocated class)", ".3f"),
         ("code_purity", "token purity (code's majority class)", ".3f"),
         ("zero_shot_miou", "zero-shot mIoU (nearest code's class)", ".3f"),
         ("posterior_miou", "zero-shot mIoU (argmax p(c|z))", ".3f"),
         ("hungarian_miou", "Hungarian mIoU", ".3f"), ("probe_miou", "linear-probe mIoU", ".3f"))


def format_value(value, spec: str) -> str:
  return "absent" if value is None else format(value, spec)


def markdown(results: dict) -> str:
  lines = ["| metric | value |", "|---|---:|"]
  lines += [f"| {label} | {format_value(results.get(key), spec)} |" for key, label, spec in TABLE]
  return "\n".join(lines) + "\n"


def load_perceptual(config) -> evaluate.PerceptualModels:
  from sgc_jax.convert import inception as inception_convert
  from sgc_jax.models import lpips as lpips_lib
  lpips_path = config.eval.lpips_weights or config.loss.lpips_weights
  lpips_params = lpips_lib.load_params(lpips_path) if lpips_path else None
  inception_params = (inception_convert.load(config.eval.inception_weights)
                      if config.eval.inception_weights else None)
  for name, value in (("LPIPS", lpips_params), ("rFID", inception_params)):
    if value is None:
      logging.warning("%s absent: no weight file in the config (config.eval.*_weights)", name)
  return evaluate.PerceptualModels(lpips_params, inception_params)


def pictures(trainer, state, dataset, config, evaluation) -> dict[str, np.ndarray]:
  """The evaluation's PNGs (every process computes them: the model is sharded)."""
  num_classes = trainer.num_classes
  source = dataset.split(config.data.eval_split)
  make = pipeline.MakeViews(config.data.image_size, 1, None)
  records = [make.random_map(source[i], np.random.default_rng(0))
             for i in range(min(config.eval.num_examples, len(source)))]
  images = np.stack([r["image"][0] for r in records])
  reconstructions, indices, _ = multihost_utils.process_allgather(
      train.reconstruct_fn(trainer)(evaluate.eval_params(state), state.codebook, images),
      tiled=True)
  semantic = evaluation.code_class[np.asarray(indices)]
  used = evaluation.usage > 0
  return {
      "reconstructions": report.reconstruction_grid(
          images, np.asarray(reconstructions), np.stack([r["segmentation"][0] for r in records]),
          semantic, num_classes, dataset.class_names),
      "codebook_usage": viz.usage_histogram(evaluation.usage, evaluation.code_class,
                                            num_classes),
      "codes_pca": np.concatenate([
          viz.scatter(_pca(evaluation.codes, used), np.where(used, evaluation.code_class, -1),
                      num_classes),
          viz.legend(dataset.class_names, 400)]),  # grey: unused codes
  }


def _pca(points: np.ndarray, fit: np.ndarray) -> np.ndarray:
  """2-D projection of all points on the principal axes of points[fit]."""
  mean = points[fit].mean(0)
  _, _, vt = np.linalg.svd(points[fit] - mean, full_matrices=False)
  return (points - mean) @ vt[:2].T


def evaluate_checkpoint(config, workdir: str) -> dict:
  """Restores WORKDIR's latest checkpoint, evaluates it, writes the results."""
  dataset, trainer, state, step = train.restore_latest(config, workdir)
  evaluation = evaluate.evaluate(trainer, state, dataset, config, probe=True,
                                 perceptual=load_perceptual(config))
  results = {"step": step, "quantizer": config.model.codebook.mode, **evaluation.metrics}
  directory = os.path.join(workdir, "eval")
  images = pictures(trainer, state, dataset, config, evaluation)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "eval.json"), "w") as f:
      json.dump(results, f, indent=1)
    with open(os.path.join(directory, "eval.md"), "w") as f:
      f.write(f"Step {step}, quantizer {results['quantizer']}, "
              f"{int(results['images'])} images of {config.data.name}:"
              f"{config.data.eval_split}\n\n" + markdown(results))
    for name, image in images.items():
      viz.save_png(image, os.path.join(directory, f"{name}.png"))
  return results
