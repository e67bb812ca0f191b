"""Evaluation sums against direct computation; the linear probe on known data;
whole-frame sizes checked before training."""

import os

import jax
import numpy as np
import pytest

from sgc_jax.config_lib import ConfigError
from sgc_jax.core import evaluation as base
from sgc_jax.data import pipeline
from sgc_jax.evaluators import reconstruction
from sgc_jax.evaluators.segmentation import linear_probe
from sgc_jax.models import inception as inception_lib
from sgc_jax.models import lpips as lpips_lib
from sgc_jax.modes import train
from sgc_jax.ops import metrics
from test_train import tiny_config


def test_lpips_and_rfid_sums_equal_direct_computation(data_dir, scenes64):
  config = tiny_config(data_dir)
  method = train.build_method(config, scenes64)
  variables = method.eval_variables(method.create_train_state(0))
  source = pipeline.head(scenes64.split("validation"), 3)  # 3 of batch 8: padding too
  key = jax.random.PRNGKey(1)
  lpips_params = lpips_lib.LPIPS().init(key, np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)))
  inception_params = inception_lib.InceptionV3().init(key, np.zeros((1, 32, 32, 3)))
  evaluator = reconstruction.Reconstruction("reconstruction", dict(config.evals.reconstruction))
  perceptual = reconstruction.Perceptual(lpips_params["params"], inception_params["params"])
  totals = base.split_pass(method, variables, source, config,
                           [(evaluator, perceptual, None)])["reconstruction"]
  assert totals["images"] == 3

  images = np.stack([r["image"][0] for r in pipeline.centred_examples(source, 3, 32)])
  reconstructions = np.asarray(jax.jit(method.predict)(variables, images).reconstruction)
  # The metrics see reconstructions clipped to the images' range.
  assert np.abs(reconstructions).max() > 1.0
  reconstructions = np.clip(reconstructions, -1.0, 1.0)
  distances = lpips_lib.LPIPS().apply(lpips_params, images, reconstructions)
  assert totals["lpips"] == pytest.approx(float(np.sum(distances)), rel=1e-4)
  features = jax.jit(inception_lib.InceptionV3().apply)(
      inception_params, np.concatenate([images, reconstructions]))
  real, fake = np.split(np.asarray(features, np.float64), 2)
  for statistics, features in zip(perceptual.fid, (real, fake)):
    mean, covariance = statistics.mean_and_covariance()
    np.testing.assert_allclose(mean, features.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(covariance, np.cov(features.T), rtol=1e-3, atol=1e-7)


def test_linear_probe_separates_classes_a_linear_map_can():
  rng = np.random.default_rng(0)
  codes = rng.normal(size=(40, 6))
  truth = (codes[:, 0] > 0).astype(int) + 2 * (codes[:, 1] > 0)  # 4 linearly separable classes
  counts = np.zeros((40, 4))
  counts[np.arange(40), truth] = rng.integers(1, 50, 40)
  predicted = linear_probe(codes, counts, steps=500)
  assert (predicted == truth).mean() >= 0.95
  confusion = metrics.confusion_from_assignment(counts, predicted, 4)
  assert metrics.mean_iou(confusion) > 0.9


def test_an_eval_frame_the_tokens_do_not_tile_stops_the_run_before_training(data_dir, scenes64,
                                                                           tmp_path):
  # 4x4-pixel tokens: 30 rows of pixels are 7.5 rows of tokens.
  config = tiny_config(data_dir, total_steps=2)
  config.data.eval_frame = (30, 32)
  with pytest.raises(ConfigError, match=r"config.data.eval_frame=\(30, 32\): method 'sgc_vqgan' "
                     r"cannot take 30x32 images \(TypeError: cannot reshape"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")
  assert not os.path.exists(tmp_path / "bad" / "metrics.jsonl")
  config.data.eval_frame = (24, 32)
  train.train_and_evaluate(config, str(tmp_path / "good"))
  assert os.path.isdir(tmp_path / "good" / "checkpoints")
