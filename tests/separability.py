"""Per-pixel class separability of `sgc_scenes`: colour alone vs texture + colour."""

import numpy as np
import scipy.ndimage


def colour_features(images):
  return images.reshape(-1, 3).astype(np.float64)


def texture_features(images, window=5):
  """Colour, plus local gradient energy, orientation (structure tensor) and contrast."""
  grey = images.astype(np.float64).mean(-1)
  gy = np.gradient(grey, axis=1)
  gx = np.gradient(grey, axis=2)
  def local_mean(x):
    return scipy.ndimage.uniform_filter(x, size=(1, window, window), mode="reflect")
  jxx, jyy, jxy = local_mean(gx * gx), local_mean(gy * gy), local_mean(gx * gy)
  contrast = local_mean(grey * grey) - local_mean(grey) ** 2
  colour = np.stack([local_mean(images[..., c].astype(np.float64)) for c in range(3)], -1)
  features = [np.log1p(jxx), np.log1p(jyy), jxy / (jxx + jyy + 1e-3), np.log1p(np.maximum(contrast, 0))]
  return np.concatenate([np.stack(features, -1), colour], -1).reshape(-1, 7)


def nearest_mean_accuracy(train_x, train_y, test_x, test_y, num_classes):
  means = np.stack([train_x[train_y == c].mean(0) for c in range(num_classes)])
  distances = ((test_x[:, None, :] - means[None]) ** 2).sum(-1)
  return float((distances.argmin(1) == test_y).mean())


def gaussian_classifier_accuracy(train_x, train_y, test_x, test_y, num_classes):
  """Quadratic discriminant analysis: one full-covariance Gaussian per class."""
  scores = []
  for c in range(num_classes):
    x = train_x[train_y == c]
    mean, cov = x.mean(0), np.cov(x.T) + 1e-3 * np.eye(x.shape[1])
    inv, (_, logdet) = np.linalg.inv(cov), np.linalg.slogdet(cov)
    d = test_x - mean
    scores.append(-0.5 * np.einsum("ni,ij,nj->n", d, inv, d) - 0.5 * logdet + np.log(len(x)))
  return float((np.argmax(np.stack(scores, 1), 1) == test_y).mean())
