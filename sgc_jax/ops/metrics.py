"""Quality metrics of a tokenizer: reconstruction, codebook use, semantics.

Everything that runs per batch is JAX (SSIM, class co-occurrence); everything
that runs once over totals is NumPy/SciPy (Fréchet distance, matching, mIoU).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.optimize

from sgc_jax.ops import grids

IGNORE_LABEL = 255

# ------------------------------------------------------------------ reconstruction


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
  window = np.exp(-offsets ** 2 / (2 * sigma ** 2))
  return (window / window.sum()).astype(np.float32)


def ssim(x: jax.Array, y: jax.Array, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """Per-image SSIM of [-1, 1] images [N, H, W, C] (Wang et al. 2004).

  Intensities are taken to [0, 1] (dynamic range 1); local statistics under a
  Gaussian window over the positions where the window fits ('valid'), per
  channel, then averaged over positions and channels.
  """
  chex.assert_rank([x, y], 4)
  chex.assert_equal_shape([x, y])
  x = (x.astype(jnp.float32) + 1.0) / 2.0
  y = (y.astype(jnp.float32) + 1.0) / 2.0
  g = jnp.asarray(gaussian_window(window_size, sigma))

  def blur(image):  # separable Gaussian, per channel
    channels = image.shape[-1]
    kernel_h = jnp.tile(g[:, None, None, None], (1, 1, 1, channels))
    kernel_w = jnp.tile(g[None, :, None, None], (1, 1, 1, channels))
    dims = ("NHWC", "HWIO", "NHWC")
    image = jax.lax.conv_general_dilated(image, kernel_h, (1, 1), "VALID",
                                         dimension_numbers=dims,
                                         feature_group_count=channels)
    return jax.lax.conv_general_dilated(image, kernel_w, (1, 1), "VALID",
                                        dimension_numbers=dims,
                                        feature_group_count=channels)

  c1, c2 = k1 ** 2, k2 ** 2
  mu_x, mu_y = blur(x), blur(y)
  var_x = blur(x * x) - mu_x ** 2
  var_y = blur(y * y) - mu_y ** 2
  cov = blur(x * y) - mu_x * mu_y
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
      (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
  return ssim_map.mean(axis=(1, 2, 3))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) for symmetric PSD covariances.

  tr((Σ1Σ2)^½) = tr((A Σ2 A)^½) with A = Σ1^½, and A Σ2 A is symmetric PSD, so
  both roots come from symmetric eigendecompositions (eigenvalues clipped at
  0). Unlike `scipy.linalg.sqrtm(Σ1 Σ2)` this stays real and finite when the
  covariances are singular (fewer samples than feature dimensions).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics of different shapes: {mu1.shape}/{sigma1.shape} "
                     f"against {mu2.shape}/{sigma2.shape}")
  root1 = _psd_sqrt(sigma1)
  middle = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = scipy.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


class GaussianStatistics:
  """Running mean and covariance of feature vectors, in float64 on the host."""

  def __init__(self, dim: int):
    self.count = 0
    self.total = np.zeros(dim, np.float64)
    self.outer = np.zeros((dim, dim), np.float64)

  def add(self, features: np.ndarray) -> None:
    features = np.asarray(features, np.float64)
    self.count += features.shape[0]
    self.total += features.sum(0)
    self.outer += features.T @ features

  def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
    mean = self.total / self.count
    covariance = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
    return mean, covariance


# ------------------------------------------------------------------ codebook


def codebook_statistics(usage: np.ndarray) -> dict[str, float]:
  """Utilisation, perplexity, normalised entropy and the top-10 % share, from
  per-code token counts [K]."""
  usage = np.asarray(usage, np.float64)
  num_codes = usage.shape[0]
  p = usage / max(usage.sum(), 1e-12)
  nonzero = p[p > 0]
  entropy = float(-(nonzero * np.log(nonzero)).sum())
  top = max(1, int(round(0.1 * num_codes)))
  return {"codebook_usage": float((usage > 0).mean()),
          "perplexity": float(np.exp(entropy)),
          "normalized_entropy": entropy / np.log(num_codes) if num_codes > 1 else 0.0,
          "top10_share": float(np.sort(p)[::-1][:top].sum())}


# ------------------------------------------------------------------ semantics


def patch_class_counts(segmentation: jax.Array, grid: int | tuple[int, int],
                       num_classes: int) -> jax.Array:
  """[N, H, W] pixel classes -> [N, rows, columns, C] pixel counts per token
  patch (`grid`: rows, columns, or one int for a square grid; ignore and
  out-of-range labels count nowhere)."""
  chex.assert_rank(segmentation, 3)
  batch, height, width = segmentation.shape
  rows, columns = grids.grid_shape(grid)
  ph, pw = height // rows, width // columns
  patches = segmentation.reshape(batch, rows, ph, columns, pw).astype(jnp.int32)
  # one_hot of an out-of-range label is all zeros, so ignore pixels vanish.
  return jax.nn.one_hot(patches, num_classes, dtype=jnp.float32).sum((2, 4))


def code_class_cooccurrence(indices: jax.Array, class_counts: jax.Array,
                            num_codes: int, weight: jax.Array | None = None) -> jax.Array:
  """Pixels of each class under the tokens of each code: [K, C].

  indices [N, g, g], class_counts [N, g, g, C] (from `patch_class_counts`),
  weight [N] (0 for padding).
  """
  chex.assert_rank(class_counts, indices.ndim + 1)
  chex.assert_equal_shape_prefix([indices, class_counts], indices.ndim)
  if weight is not None:
    chex.assert_shape(weight, class_counts.shape[:1])
    class_counts = class_counts * weight[:, None, None, None]
  return jnp.zeros((num_codes, class_counts.shape[-1]), jnp.float32).at[
      indices.reshape(-1)].add(class_counts.reshape(-1, class_counts.shape[-1]))


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
  """Per-class IoU from a [predicted, true] confusion matrix [P, C], P >= C,
  whose rows past C are predictions that are no class (false negatives only);
  NaN for classes that appear in neither prediction nor truth."""
  confusion = np.asarray(confusion, np.float64)
  num_classes = confusion.shape[1]
  hits = np.diag(confusion[:num_classes])
  union = confusion.sum(0) + confusion[:num_classes].sum(1) - hits
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, hits / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
  iou = iou_from_confusion(confusion)
  return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def confusion_from_assignment(cooccurrence: np.ndarray, assignment: np.ndarray,
                              num_predicted: int) -> np.ndarray:
  """[K, C] code-class pixels + code -> predicted label [K] -> [P, C] confusion."""
  confusion = np.zeros((num_predicted, cooccurrence.shape[1]), np.float64)
  np.add.at(confusion, assignment, cooccurrence)
  return confusion


def hungarian_match(confusion: np.ndarray) -> np.ndarray:
  """Cluster -> class of a one-to-one matching maximising the matched pixels;
  clusters left without a class get -1. confusion: [clusters, classes]."""
  rows, cols = scipy.optimize.linear_sum_assignment(-np.asarray(confusion, np.float64))
  mapping = np.full(confusion.shape[0], -1, np.int64)
  mapping[rows] = cols
  return mapping


def matched_confusion(cluster_confusion: np.ndarray) -> np.ndarray:
  """[clusters, C] -> [C + 1, C]: clusters relabelled by the Hungarian matching;
  pixels of clusters left unmatched go to the last row (no class)."""
  mapping = hungarian_match(cluster_confusion)
  num_classes = cluster_confusion.shape[1]
  return confusion_from_assignment(cluster_confusion,
                                   np.where(mapping >= 0, mapping, num_classes),
                                   num_classes + 1)
