"""Weighted k-means in NumPy (k-means++ seeding, Lloyd steps), for the
clusterings done once over totals: ACSeg's prototype initialisation, the
cluster-then-match evaluations, and `unit_rows` for their cosine variants."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
  """Each row of x over its L2 norm (zero rows stay zero): the points of cosine k-means."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
  return np.maximum((points ** 2).sum(1)[:, None] - 2 * points @ centres.T
                    + (centres ** 2).sum(1)[None], 0.0)


def kmeans(points: np.ndarray, num_clusters: int, weights: np.ndarray | None = None,
           iterations: int = 50, seed: int = 0, restarts: int = 1) -> np.ndarray:
  """Weighted k-means (k-means++ seeding, Lloyd steps) -> cluster of each point.
  With `restarts`, the run of lowest weighted inertia of that many seedings."""
  return _best_lloyd(points, num_clusters, weights, iterations, seed, restarts)[0]


def kmeans_centres(points: np.ndarray, num_clusters: int, weights: np.ndarray | None = None,
                   iterations: int = 50, seed: int = 0, restarts: int = 1) -> np.ndarray:
  """The [num_clusters, D] centres of `kmeans`."""
  return _best_lloyd(points, num_clusters, weights, iterations, seed, restarts)[1]


def _best_lloyd(points, num_clusters, weights, iterations, seed, restarts):
  runs = [_lloyd(points, num_clusters, weights, iterations, seed + restart)
          for restart in range(max(1, restarts))]
  if len(runs) == 1:
    return runs[0]
  points = np.asarray(points, np.float64)
  weights = np.ones(len(points)) if weights is None else np.asarray(weights, np.float64)
  inertia = [np.sum(weights * ((points - centres[assignment]) ** 2).sum(1))
             for assignment, centres in runs]
  return runs[int(np.argmin(inertia))]


def _lloyd(points, num_clusters, weights, iterations, seed):
  points = np.asarray(points, np.float64)
  n = points.shape[0]
  weights = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  if num_clusters >= n:
    return np.arange(n), points
  rng = np.random.default_rng(seed)
  seeding = np.where(weights > 0, weights, 1e-12)
  centres = [points[rng.choice(n, p=seeding / seeding.sum())]]
  for _ in range(num_clusters - 1):
    d2 = np.min(_squared_distances(points, np.asarray(centres)), 1)
    p = seeding * d2
    p = p / p.sum() if p.sum() > 0 else seeding / seeding.sum()
    centres.append(points[rng.choice(n, p=p)])
  centres = np.asarray(centres)
  assignment = np.zeros(n, np.int64)
  for iteration in range(iterations):
    new = np.argmin(_squared_distances(points, centres), 1)
    if iteration and np.array_equal(new, assignment):
      break
    assignment = new
    for k in range(num_clusters):
      members = assignment == k
      if (weights[members] > 0).any():
        centres[k] = np.average(points[members], axis=0, weights=weights[members])
  return assignment, centres
