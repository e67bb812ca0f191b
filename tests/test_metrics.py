"""Metrics against independent NumPy references and known values."""

import chex
import numpy as np
import pytest
import scipy.linalg

from sgc_jax.ops import kmeans, metrics


def ssim_reference(x, y, size=11, sigma=1.5):
  """SSIM by the definition: a 2-D Gaussian window at every valid position."""
  x, y = (x.astype(np.float64) + 1) / 2, (y.astype(np.float64) + 1) / 2
  r = np.arange(size) - (size - 1) / 2
  window = np.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * sigma ** 2))
  window /= window.sum()
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  values = []
  for channel in range(x.shape[-1]):
    for i in range(x.shape[0] - size + 1):
      for j in range(x.shape[1] - size + 1):
        a, b = x[i:i + size, j:j + size, channel], y[i:i + size, j:j + size, channel]
        mu_a, mu_b = (window * a).sum(), (window * b).sum()
        var_a = (window * (a - mu_a) ** 2).sum()
        var_b = (window * (b - mu_b) ** 2).sum()
        cov = (window * (a - mu_a) * (b - mu_b)).sum()
        values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2) /
                      ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
  return np.mean(values)


def test_ssim_matches_the_definition():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 20, 18, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  got = np.asarray(metrics.ssim(x, y))
  chex.assert_shape(got, (2,))  # one per image
  want = [ssim_reference(a, b) for a, b in zip(x, y)]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(metrics.ssim(x, x)), 1.0, atol=1e-5)
  assert got.max() < 0.95


def test_frechet_distance_matches_scipy_and_stays_finite_when_singular():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(500, 6)), rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
  mu1, s1, mu2, s2 = a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T)
  root = scipy.linalg.sqrtm(s1 @ s2).real
  want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
  # 5 samples in 64 dimensions: rank-4 covariances. Same set -> 0; a shift
  # by d -> |d|^2, exactly, with no imaginary or NaN parts.
  few = rng.normal(size=(5, 64))
  stats = metrics.GaussianStatistics(64)
  stats.add(few)
  mu, sigma = stats.mean_and_covariance()
  np.testing.assert_allclose(sigma, np.cov(few.T), atol=1e-12)
  assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-4)
  shift = np.full(64, 0.5)
  assert metrics.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(16.0, abs=1e-4)


def test_codebook_statistics_known_values():
  usage = np.array([6, 2, 2, 0, 0, 0, 0, 0, 0, 0], np.float64)
  stats = metrics.codebook_statistics(usage)
  p = np.array([0.6, 0.2, 0.2])
  entropy = -(p * np.log(p)).sum()
  assert stats["codebook_usage"] == pytest.approx(0.3)
  assert stats["perplexity"] == pytest.approx(np.exp(entropy))
  assert stats["normalized_entropy"] == pytest.approx(entropy / np.log(10))
  assert stats["top10_share"] == pytest.approx(0.6)
  uniform = metrics.codebook_statistics(np.ones(20))
  assert uniform["normalized_entropy"] == pytest.approx(1.0)
  assert uniform["top10_share"] == pytest.approx(0.1)


def test_cooccurrence_and_miou():
  segmentation = np.array([[[0, 0, 1, 1],
                            [0, 0, 1, 1],
                            [2, 2, 255, 255],
                            [2, 0, 255, 255]]], np.uint8)
  counts = np.asarray(metrics.patch_class_counts(segmentation, 2, 3))
  chex.assert_shape(counts, (1, 2, 2, 3))  # [N, g, g, C]
  np.testing.assert_array_equal(counts[0, 0, 0], [4, 0, 0])
  np.testing.assert_array_equal(counts[0, 1, 0], [1, 0, 3])
  np.testing.assert_array_equal(counts[0, 1, 1], [0, 0, 0])  # ignore counts nowhere
  indices = np.array([[[3, 1], [3, 0]]])
  cooc = np.asarray(metrics.code_class_cooccurrence(indices, counts, 4))
  np.testing.assert_array_equal(cooc, [[0, 0, 0], [0, 4, 0], [0, 0, 0], [5, 0, 3]])
  padded = np.asarray(metrics.code_class_cooccurrence(indices, counts, 4, np.zeros(1)))
  assert padded.sum() == 0
  # Codes 1 -> class 1, 3 -> class 0: class 0 IoU 4/(5+3)... by hand:
  confusion = metrics.confusion_from_assignment(cooc, np.array([2, 1, 2, 0]), 3)
  np.testing.assert_allclose(metrics.iou_from_confusion(confusion), [5 / 8, 1.0, 0.0])
  assert metrics.mean_iou(confusion) == pytest.approx((5 / 8 + 1) / 3)


def test_wrong_shapes_fail_at_the_entry_with_the_shapes_named():
  x = np.zeros((2, 16, 16, 3), np.float32)
  with pytest.raises(AssertionError, match=r"assert_rank .* has rank 3 \(shape \(16, 16, 3\)\)"):
    metrics.ssim(x[0], x[0])  # one image without its batch axis
  with pytest.raises(AssertionError, match=r"assert_equal_shape .*\(2, 8, 16, 3\)"):
    metrics.ssim(x, x[:, :8])
  with pytest.raises(AssertionError, match="assert_rank"):
    metrics.patch_class_counts(np.zeros((16, 16), np.uint8), 2, 3)
  indices = np.zeros((1, 2, 2), np.int32)
  with pytest.raises(AssertionError, match=r"shape prefixes: \[\(1, 2, 2\), \(1, 4, 4\)\]"):
    metrics.code_class_cooccurrence(indices, np.zeros((1, 4, 4, 3), np.float32), 4)
  with pytest.raises(AssertionError, match="assert_shape"):
    metrics.code_class_cooccurrence(indices, np.zeros((1, 2, 2, 3), np.float32), 4, np.ones(2))


def test_hungarian_recovers_a_permuted_perfect_clustering():
  rng = np.random.default_rng(1)
  truth = rng.integers(0, 5, 1000)
  permutation = rng.permutation(5)
  confusion = np.zeros((5, 5))
  np.add.at(confusion, (permutation[truth], truth), 1)
  assert metrics.mean_iou(metrics.matched_confusion(confusion)) == pytest.approx(1.0)
  # Six clusters for five classes: the smallest stays unmatched and its pixels
  # are misses of their class.
  six = np.vstack([confusion, np.eye(5)[2] * 10])
  matched = metrics.matched_confusion(six)
  chex.assert_shape(matched, (6, 5))
  assert matched[5].sum() == 10
  assert metrics.iou_from_confusion(matched)[2] == pytest.approx(
      confusion[:, 2].sum() / (confusion[:, 2].sum() + 10))


def test_kmeans_finds_separated_blobs():
  rng = np.random.default_rng(0)
  centres = np.array([[0, 0], [10, 0], [0, 10]], np.float64)
  truth = rng.integers(0, 3, 300)
  points = centres[truth] + rng.normal(0, 0.5, (300, 2))
  clusters = kmeans.kmeans(points, 3)
  confusion = np.zeros((3, 3))
  np.add.at(confusion, (clusters, truth), 1)
  assert metrics.mean_iou(metrics.matched_confusion(confusion)) == 1.0


def test_kmeans_restarts_keep_the_seeding_of_lowest_inertia():
  rng = np.random.default_rng(0)
  points = rng.normal(size=(300, 4))
  weights = rng.uniform(0.5, 2.0, 300)

  def inertia(centres):
    d2 = ((points[:, None] - centres[None]) ** 2).sum(-1)
    return float(np.sum(weights * d2.min(1)))

  singles = [inertia(kmeans.kmeans_centres(points, 6, weights, seed=s)) for s in range(5)]
  best = inertia(kmeans.kmeans_centres(points, 6, weights, seed=0, restarts=5))
  assert best == pytest.approx(min(singles))
  assert max(singles) > min(singles)  # the seedings do differ here
