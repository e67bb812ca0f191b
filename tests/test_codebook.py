"""The codebook: chunked scan = naive k-means step, bounded memory, guided
assignment, balanced allocation, dead-code restart, semantic loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.models import codebook as cb


def _config(**kwargs):
  defaults = dict(mode="sgc", num_codes=48, dim_sem=6, dim_det=4, num_classes=4,
                  w_det=0.5, chunk_size=32, decay=0.9)
  defaults.update(kwargs)
  return cb.CodebookConfig(**defaults)


def _problem(seed=0, groups=2, tokens=150, config=None):
  config = config or _config()
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(groups, tokens, config.dim)).astype(np.float32)
  labels = rng.integers(-1, config.num_classes, size=(groups, tokens)).astype(np.int32)
  weight = (rng.uniform(size=(groups, tokens)) > 0.1).astype(np.float32)
  codes = rng.normal(size=(config.num_codes, config.dim)).astype(np.float32)
  return config, z, labels, weight, codes


def _naive_assign(z, labels, codes, code_class, config):
  w = np.concatenate([np.full(config.dim_sem, config.w_sem), np.full(config.dim_det, config.w_det)])
  flat = z.reshape(-1, z.shape[-1])
  d = (((flat[:, None, :] - codes[None]) ** 2) * w).sum(-1)
  if code_class is not None:
    flat_labels = labels.reshape(-1)
    d = np.where((flat_labels[:, None] >= 0) & (flat_labels[:, None] != code_class[None]), np.inf, d)
  return d.argmin(1)


@pytest.mark.parametrize("guided", [False, True])
def test_scan_update_equals_naive_full_matrix_ema_kmeans(guided):
  config, z, labels, weight, codes = _problem()
  code_class = cb.allocate_codes(np.ones(config.num_classes), config.num_codes)
  stats = cb.assign_and_gather(jnp.asarray(z), jnp.asarray(labels), jnp.asarray(weight),
                               jnp.asarray(codes), jnp.asarray(code_class) if guided else None,
                               config)
  assignment = _naive_assign(z, labels, codes, code_class if guided else None, config)
  np.testing.assert_array_equal(np.asarray(stats.assignments).ravel(), assignment)
  one_hot = np.eye(config.num_codes)[assignment] * weight.reshape(-1, 1)
  counts, sums = one_hot.sum(0), one_hot.T @ z.reshape(-1, config.dim)
  np.testing.assert_allclose(stats.counts, counts, atol=1e-5)
  np.testing.assert_allclose(stats.sums, sums, atol=1e-5)

  state = {"centres": jnp.asarray(codes), "counts": jnp.ones(config.num_codes),
           "sums": jnp.asarray(codes), "class_hist": jnp.zeros((config.num_codes, config.num_classes)),
           "code_class": jnp.asarray(code_class)}
  new = cb.ema_update(state, stats, config)
  n = config.decay * 1.0 + (1 - config.decay) * counts
  s = config.decay * codes + (1 - config.decay) * sums
  smoothed = (n + config.epsilon) / (n.sum() + config.num_codes * config.epsilon) * n.sum()
  np.testing.assert_allclose(new["counts"], n, atol=1e-5)
  np.testing.assert_allclose(new["centres"], s / smoothed[:, None], atol=1e-5)


def test_scan_memory_is_bounded_by_the_chunk_not_the_tokens():
  """K = 16384, D = 256, 65,536 tokens: a full distance matrix would be 4 GiB."""
  config = cb.CodebookConfig(mode="ema", num_codes=16384, dim_sem=128, dim_det=128,
                             chunk_size=512)
  z = jax.ShapeDtypeStruct((1, 65536, 256), jnp.float32)
  labels = jax.ShapeDtypeStruct((1, 65536), jnp.int32)
  weight = jax.ShapeDtypeStruct((1, 65536), jnp.float32)
  codes = jax.ShapeDtypeStruct((16384, 256), jnp.float32)
  compiled = jax.jit(lambda z, l, w, c: cb.assign_and_gather(z, l, w, c, None, config).counts
                     ).lower(z, labels, weight, codes).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  full_matrix = 65536 * 16384 * 4
  chunk_matrix = 512 * 16384 * 4
  print(f"\nscan temp memory {temp / 2**20:.0f} MiB; one chunk's distances "
        f"{chunk_matrix / 2**20:.0f} MiB; full matrix {full_matrix / 2**30:.0f} GiB")
  assert temp < 8 * chunk_matrix + 65536 * 256 * 4 * 2
  assert temp < full_matrix / 16


def test_guided_assignment_never_crosses_classes():
  config, z, labels, weight, codes = _problem(seed=1)
  code_class = cb.allocate_codes(np.array([0.5, 0.3, 0.15, 0.05]), config.num_codes)
  stats = cb.assign_and_gather(jnp.asarray(z), jnp.asarray(labels), jnp.asarray(weight),
                               jnp.asarray(codes), jnp.asarray(code_class), config)
  assigned_class = code_class[np.asarray(stats.assignments)]
  labeled = labels >= 0
  np.testing.assert_array_equal(assigned_class[labeled], labels[labeled])
  # Unlabeled tokens take the nearest code overall.
  free = _naive_assign(z, labels, codes, None, config).reshape(labels.shape)
  np.testing.assert_array_equal(np.asarray(stats.assignments)[~labeled], free[~labeled])


def test_balanced_allocation_follows_frequency_power_with_minimum():
  frequency = np.array([0.6, 0.25, 0.1, 0.04, 0.01, 0.0])
  code_class = cb.allocate_codes(frequency, 200, alpha=0.5, min_codes=4)
  counts = np.bincount(code_class, minlength=6)
  assert counts.sum() == 200 and (counts >= 4).all()
  assert (np.diff(code_class) >= 0).all()  # contiguous blocks
  free = counts > 4
  ideal = frequency[free] ** 0.5 / (frequency[free] ** 0.5).sum() * counts[free].sum()
  assert np.abs(counts[free] - ideal).max() < 1.0
  # alpha = 1: proportional; alpha = 0: uniform.
  assert list(np.bincount(cb.allocate_codes(np.array([0.75, 0.25]), 8, alpha=1.0))) == [6, 2]
  assert list(np.bincount(cb.allocate_codes(np.array([0.75, 0.25]), 8, alpha=0.0))) == [4, 4]


def test_dead_codes_are_reseeded_from_tokens_of_their_own_class():
  config = _config(num_codes=12, num_classes=3, restart_noise=0.0)
  rng = np.random.default_rng(2)
  labels = np.repeat(np.arange(3), 20)[None].astype(np.int32)
  # Class c's tokens live around 10·c, far from the others.
  z = (labels[..., None] * 10.0 + rng.normal(size=(1, 60, config.dim))).astype(np.float32)
  code_class = cb.allocate_codes(np.ones(3), 12)
  counts = np.full(12, 5.0)
  counts[[1, 5, 6, 10]] = 0.0  # dead: one of class 0, two of class 1, one of class 2
  state = {"centres": jnp.full((12, config.dim), -100.0), "counts": jnp.asarray(counts),
           "sums": jnp.zeros((12, config.dim)), "class_hist": jnp.zeros((12, 3)),
           "code_class": jnp.asarray(code_class)}
  new, restarted = cb.restart_dead_codes(state, jnp.asarray(z), jnp.asarray(labels),
                                         jnp.ones((1, 60)), jax.random.PRNGKey(0), config,
                                         guided=True)
  assert int(restarted) == 4
  centres = np.asarray(new["centres"])
  tokens = z.reshape(-1, config.dim)
  for k in (1, 5, 6, 10):
    match = np.where(np.all(np.isclose(tokens, centres[k]), axis=1))[0]
    assert len(match) == 1 and labels.ravel()[match[0]] == code_class[k]
  assert not np.allclose(centres[5], centres[6])  # two dead codes, two tokens
  alive = np.setdiff1d(np.arange(12), [1, 5, 6, 10])
  np.testing.assert_array_equal(centres[alive], -100.0)
  # Same key, same restart.
  again, _ = cb.restart_dead_codes(state, jnp.asarray(z), jnp.asarray(labels),
                                   jnp.ones((1, 60)), jax.random.PRNGKey(0), config, guided=True)
  np.testing.assert_array_equal(again["centres"], new["centres"])


def test_token_labels_majority_vote_threshold_and_ignore():
  seg = np.zeros((1, 4, 4), np.uint8)
  seg[0, :2, 2:] = [[1, 1], [1, 2]]  # 3/4 class 1
  seg[0, 2:, :2] = [[1, 2], [3, 255]]  # no majority over 0.5
  seg[0, 2:, 2:] = 255  # ignore
  labels = np.asarray(cb.token_labels(jnp.asarray(seg), 2, 4, threshold=0.5))
  np.testing.assert_array_equal(labels, [[[0, 1], [-1, -1]]])


def test_semantic_loss_equals_the_class_posterior_cross_entropy():
  config, z, labels, weight, codes = _problem(seed=3, tokens=70, config=_config(semantic_temperature=2.0))
  code_class = cb.allocate_codes(np.array([0.4, 0.3, 0.2, 0.1]), config.num_codes)
  loss = cb.semantic_loss(jnp.asarray(z), jnp.asarray(labels), jnp.asarray(weight),
                          jnp.asarray(codes), jnp.asarray(code_class), config)
  flat = z.reshape(-1, config.dim)[:, :config.dim_sem]
  logits = -((flat[:, None] - codes[None, :, :config.dim_sem]) ** 2).sum(-1) / 2.0
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  posterior = np.stack([p[:, code_class == c].sum(1) for c in range(4)], 1)
  use = (labels.ravel() >= 0) & (weight.ravel() > 0)
  expected = -np.log(posterior[use, labels.ravel()[use]]).mean()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # Its gradient is finite and bounded in memory by the same chunking.
  grad = jax.grad(lambda z_: cb.semantic_loss(z_, jnp.asarray(labels), jnp.asarray(weight),
                                              jnp.asarray(codes), jnp.asarray(code_class),
                                              config))(jnp.asarray(z))
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0
