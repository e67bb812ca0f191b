"""The dense-feature protocol of the segmentation evaluator: k-means of the
features into C clusters matched one to one to classes, and a linear probe,
both fitted on training tokens and applied to other tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.core.method import Prediction
from sgc_jax.evaluators import segmentation
from sgc_jax.ops import metrics

NUM_CLASSES, GRID, PATCH, DIM = 4, 4, 2, 6
OPTIONS = dict(every=1, label_threshold=0.5, probe_images=64, probe_steps=300,
               feature_tokens=10_000)


CENTRES = 4.0 * np.eye(NUM_CLASSES, DIM)  # far apart, in direction too (k-means is cosine)


def _tokens(rng, images, separable, offset=0.0):
  """Token classes [B, g, g], features [B, g, g, D] (class centres plus noise
  when `separable`, else noise alone; all shifted by `offset`) and pixel maps
  [B, 1, H, W]."""
  labels = rng.integers(0, NUM_CLASSES, (images, GRID, GRID))
  features = (rng.normal(size=(images, GRID, GRID, DIM)) + offset
              + (CENTRES[labels] if separable else 0))
  pixels = np.repeat(np.repeat(labels, PATCH, 1), PATCH, 2)[:, None].astype(np.uint8)
  return labels, features.astype(np.float32), pixels


def _evaluate(separable, seed=0, offset=0.0, **options):
  rng = np.random.default_rng(seed)
  evaluator = segmentation.Segmentation("segmentation", dict(OPTIONS, **options))
  static = (8, NUM_CLASSES, 0.5, True)
  fit = segmentation._ProbeFit(evaluator, static, seed=0)
  labels, features, _ = _tokens(rng, OPTIONS["probe_images"], separable, offset)
  labels[:, 0, 0] = -1  # unlabelled tokens: in k-means, not in the probe
  fit.add_examples(None, (features, labels))
  state = fit.result(np.zeros((8, NUM_CLASSES)))
  # Other images, drawn the same way.
  labels, features, pixels = _tokens(rng, 32, separable, offset)
  predictions = Prediction(jnp.zeros((32, GRID, GRID), jnp.int32),
                           features=jnp.asarray(features))
  batch = {"mask": jnp.ones(32, bool), "segmentation": jnp.asarray(pixels)}
  sums = evaluator.batch_sums(predictions, batch, evaluator.constants(state), static)
  return labels, features, state, jax.tree.map(np.asarray, sums)


def test_separable_features_are_recovered_by_both_clusters_and_probe():
  labels, features, state, sums = _evaluate(separable=True)
  assert state["dense"]["centres"].shape == (NUM_CLASSES, DIM)
  clustered = metrics.matched_confusion(sums["feature_cluster_pixels"])
  assert metrics.mean_iou(clustered) > 0.95
  assert metrics.mean_iou(sums["feature_probe_pixels"]) > 0.95
  # Every pixel is counted once in each confusion.
  total = 32 * (GRID * PATCH) ** 2
  assert sums["feature_cluster_pixels"].sum() == total
  assert sums["feature_probe_pixels"].sum() == total


@pytest.mark.parametrize("centring", [False, True])
def test_the_sums_equal_a_numpy_assignment_of_the_fitted_centres_and_probe(centring):
  labels, features, state, sums = _evaluate(separable=True, seed=3, offset=3.0,
                                            feature_centring=centring)
  dense = state["dense"]
  sample_mean = dense["mean"]
  if centring:  # about the offset plus the mean of the class centres
    np.testing.assert_allclose(sample_mean, 3.0 + CENTRES.mean(0), atol=0.25)
  else:
    np.testing.assert_array_equal(sample_mean, 0)
  unit = features - sample_mean
  unit = unit / np.linalg.norm(unit, axis=-1, keepdims=True)
  clusters = np.argmax(unit @ dense["centres"].T, -1)
  probe = dense["probe"]
  logits = ((features - probe["mean"]) / probe["std"]) @ probe["w"] + probe["b"]
  for key, predicted in (("feature_cluster_pixels", clusters),
                         ("feature_probe_pixels", logits.argmax(-1))):
    want = np.zeros((NUM_CLASSES, NUM_CLASSES))
    np.add.at(want, (predicted.reshape(-1), labels.reshape(-1)), PATCH * PATCH)
    np.testing.assert_array_equal(sums[key], want)


def test_features_without_class_structure_score_near_chance():
  _, _, _, sums = _evaluate(separable=False)
  assert metrics.mean_iou(metrics.matched_confusion(sums["feature_cluster_pixels"])) < 0.3
  assert metrics.mean_iou(sums["feature_probe_pixels"]) < 0.3


def test_the_sample_keeps_about_feature_tokens():
  evaluator = segmentation.Segmentation("segmentation", dict(OPTIONS, feature_tokens=200))
  fit = segmentation._ProbeFit(evaluator, (8, NUM_CLASSES, 0.5, True), seed=0)
  rng = np.random.default_rng(0)
  for _ in range(8):  # 8 batches of 8 images: the 64 probe images, 1024 tokens
    labels, features, _ = _tokens(rng, 8, True)
    fit.add_examples(None, (features, labels))
  kept = sum(len(f) for f in fit._features)
  assert kept == pytest.approx(200, abs=45)  # binomial(1024, 200/1024): sd ~ 13


def test_classes_of_another_label_set_are_matched_one_to_one():
  """Units whose classes are the true ones permuted (a model trained on
  pseudo-labels: cluster ids): matched, mIoU and purity are 1; a unit whose
  class is unmatched gets no credit."""
  true_class = np.array([0, 0, 1, 1, 2, 2])
  pixels = np.eye(3)[true_class] * 10.0
  tokens = np.eye(3)[true_class] * 2.0
  permuted = np.array([2, 0, 1])[true_class]
  assert metrics.mean_iou(metrics.confusion_from_assignment(pixels, permuted, 3)) == 0.0
  miou, purity = segmentation.class_matched(pixels, tokens, permuted)
  assert miou == pytest.approx(1.0) and purity == pytest.approx(1.0)
  # Four pseudo-classes for three classes: the smallest one stays unmatched.
  four = np.array([3, 3, 0, 0, 1, 2])
  miou, purity = segmentation.class_matched(pixels, tokens, four)
  assert purity == pytest.approx(5 / 6)
  assert miou == pytest.approx((1 + 1 + 0.5) / 3)
