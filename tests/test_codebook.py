"""The codebook: chunked scan = naive k-means step, bounded memory, guided
assignment, balanced allocation, dead-code restart, semantic loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.models import codebook as cb
from sgc_jax.ops import grids


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
           "code_class": jnp.asarray(code_class), "missed": jnp.zeros(config.num_codes)}
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


def _restart_state(counts, code_class, dim, num_classes, missed=None):
  k = len(counts)
  return {"centres": jnp.full((k, dim), -100.0), "counts": jnp.asarray(counts, jnp.float32),
          "sums": jnp.zeros((k, dim)), "class_hist": jnp.zeros((k, num_classes)),
          "code_class": jnp.asarray(code_class),
          "missed": jnp.zeros(k) if missed is None else jnp.asarray(missed, jnp.float32)}


def _separated_tokens(config, seed=2, per_class=20):
  """Class c's tokens live around 10·c, far from the others."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(config.num_classes), per_class)[None].astype(np.int32)
  z = (labels[..., None] * 10.0 + rng.normal(size=labels.shape + (config.dim,)))
  return z.astype(np.float32), labels


def test_dead_codes_are_reseeded_from_tokens_of_their_own_class():
  config = _config(num_codes=12, num_classes=3, restart_noise=0.0)
  z, labels = _separated_tokens(config)
  code_class = cb.allocate_codes(np.ones(3), 12)
  counts = np.full(12, 5.0)
  counts[[1, 5, 6, 10]] = 0.0  # dead: one of class 0, two of class 1, one of class 2
  state = _restart_state(counts, code_class, config.dim, 3)
  batch_counts = jnp.asarray(counts)  # the dead codes won nothing this step either
  restart = lambda key: cb.restart_dead_codes(
      state, batch_counts, jnp.asarray(z), jnp.asarray(labels), jnp.ones((1, 60)), key,
      config, guided=True)
  new, restarted = restart(jax.random.PRNGKey(0))
  assert int(restarted) == 4
  centres = np.asarray(new["centres"])
  tokens = z.reshape(-1, config.dim)
  for k in (1, 5, 6, 10):
    match = np.where(np.all(np.isclose(tokens, centres[k]), axis=1))[0]
    assert len(match) == 1 and labels.ravel()[match[0]] == code_class[k]
  assert not np.allclose(centres[5], centres[6])  # two dead codes, two tokens
  alive = np.setdiff1d(np.arange(12), [1, 5, 6, 10])
  np.testing.assert_array_equal(centres[alive], -100.0)
  # A restarted code starts at the fair share of its class (5 · 3 / 4 here,
  # 5 · 2 / 4 for class 1), like a live code: no inflated count that keeps it
  # from being found dead again.
  fair = {0: 15 / 4, 1: 10 / 4, 2: 15 / 4}
  for k in (1, 5, 6, 10):
    assert float(new["counts"][k]) == pytest.approx(fair[code_class[k]])
    np.testing.assert_allclose(new["sums"][k], centres[k] * fair[code_class[k]], rtol=1e-6)
    assert float(new["missed"][k]) == 0.0
  np.testing.assert_array_equal(np.asarray(new["counts"])[alive], 5.0)
  # Same key, same restart.
  again, _ = restart(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(again["centres"], new["centres"])


def test_a_code_that_stops_winning_is_restarted_after_dead_after_tokens():
  """Its EMA count is still high (it was used), but it has missed its fair share
  of dead_after_tokens tokens: a few steps, not the ~350 the EMA would take."""
  config = _config(num_codes=4, num_classes=2, dead_after_tokens=10.0, dead_fraction=0.03)
  z, labels = _separated_tokens(config, per_class=8)
  code_class = np.array([0, 0, 1, 1], np.int32)
  state = _restart_state([40.0, 40.0, 40.0, 40.0], code_class, config.dim, 2)
  # Each step: code 0 wins nothing, code 1 wins class 0's 8 tokens; class 1's
  # codes share theirs. Code 0's fair share of each step is 8 / 2 = 4 tokens.
  batch_counts = jnp.asarray([0.0, 8.0, 4.0, 4.0])
  restarts = []
  for step in range(4):
    state, restarted = cb.restart_dead_codes(
        state, batch_counts, jnp.asarray(z), jnp.asarray(labels), jnp.ones(labels.shape),
        jax.random.PRNGKey(step), config, guided=True)
    restarts.append(int(restarted))
    if step < 2:
      assert float(state["missed"][0]) == pytest.approx(4.0 * (step + 1))
  assert restarts == [0, 0, 1, 0]  # missed 4, 8, 12 >= 10: restarted at step 3
  np.testing.assert_array_equal(np.asarray(state["missed"])[1:], 0.0)
  # A class absent from the batch brings its codes no missed tokens.
  absent = jnp.asarray([0.0, 16.0, 0.0, 0.0])
  new, restarted = cb.restart_dead_codes(
      state, absent, jnp.asarray(z), jnp.asarray(labels), jnp.ones(labels.shape),
      jax.random.PRNGKey(9), config, guided=True)
  np.testing.assert_array_equal(np.asarray(new["missed"])[2:], np.asarray(state["missed"])[2:])


def test_dead_codes_of_a_class_absent_from_the_batch_wait():
  config = _config(num_codes=6, num_classes=3, restart_noise=0.0)
  z, labels = _separated_tokens(config)
  labels = np.where(labels == 2, 0, labels)  # class 2 is absent from this batch
  code_class = np.array([0, 0, 1, 1, 2, 2], np.int32)
  counts = np.array([5.0, 5.0, 5.0, 5.0, 5.0, 0.0])  # code 5 (class 2) is dead
  state = _restart_state(counts, code_class, config.dim, 3)
  new, restarted = cb.restart_dead_codes(
      state, jnp.asarray(counts), jnp.asarray(z), jnp.asarray(labels), jnp.ones(labels.shape),
      jax.random.PRNGKey(0), config, guided=True)
  assert int(restarted) == 0
  np.testing.assert_array_equal(new["centres"], state["centres"])


def test_restart_in_ema_mode_takes_any_token():
  config = _config(mode="ema", num_codes=6, num_classes=1, restart_noise=0.0)
  z, labels = _separated_tokens(_config(num_codes=6, num_classes=3))
  code_class = np.zeros(6, np.int32)
  counts = np.array([9.0, 0.0, 9.0, 0.0, 9.0, 0.0])
  state = _restart_state(counts, code_class, config.dim, 1)
  new, restarted = cb.restart_dead_codes(
      state, jnp.asarray(counts), jnp.asarray(z), jnp.full(labels.shape, -1, jnp.int32),
      jnp.ones(labels.shape), jax.random.PRNGKey(0), config, guided=False)
  assert int(restarted) == 3
  tokens = z.reshape(-1, config.dim)
  picked = [np.where(np.all(np.isclose(tokens, new["centres"][k]), 1))[0] for k in (1, 3, 5)]
  assert all(len(p) == 1 for p in picked) and len({int(p[0]) for p in picked}) == 3
  assert float(new["counts"][1]) == pytest.approx(27 / 6)  # the fair share of all codes


def test_ema_update_keeps_the_centres_of_codes_never_assigned():
  config = _config(num_codes=4, num_classes=1, mode="ema")
  codes = np.arange(4 * config.dim, dtype=np.float32).reshape(4, config.dim)
  state = {"centres": jnp.asarray(codes), "counts": jnp.zeros(4), "sums": jnp.zeros((4, config.dim)),
           "class_hist": jnp.zeros((4, 1)), "code_class": jnp.zeros(4, jnp.int32),
           "missed": jnp.zeros(4)}
  z = np.full((1, 3, config.dim), 7.0, np.float32)
  stats = cb.Statistics(assignments=jnp.zeros((1, 3), jnp.int32),
                        counts=jnp.asarray([3.0, 0, 0, 0]),
                        sums=jnp.zeros((4, config.dim)).at[0].set(z[0].sum(0)),
                        class_hist=jnp.zeros((4, 1)))
  new = cb.ema_update(state, stats, config)
  np.testing.assert_allclose(new["centres"][0], 7.0, rtol=1e-3)  # Laplace smoothing
  np.testing.assert_array_equal(new["centres"][1:], codes[1:])  # not moved to 0


def test_token_labels_majority_vote_threshold_and_ignore():
  seg = np.zeros((1, 4, 4), np.uint8)
  seg[0, :2, 2:] = [[1, 1], [1, 2]]  # 3/4 class 1
  seg[0, 2:, :2] = [[1, 2], [3, 255]]  # no majority over 0.5
  seg[0, 2:, 2:] = 255  # ignore
  labels = np.asarray(grids.token_labels(jnp.asarray(seg), 2, 4, threshold=0.5))
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


def test_median_frequency_class_weights_weigh_rare_classes_in_the_semantic_loss():
  frequency = np.array([0.5, 0.3, 0.2, 0.0])
  np.testing.assert_allclose(cb.class_weights(frequency, "median_frequency", 4),
                             [0.6, 1.0, 1.5, 0.0])  # median of the present: 0.3
  assert cb.class_weights(frequency, "none", 4) == ()
  assert cb.class_weights(None, "median_frequency", 3) == (1.0, 1.0, 1.0)  # no frequencies
  with pytest.raises(ValueError, match="class_balance='inverse'"):
    cb.class_weights(frequency, "inverse", 4)
  weights = (0.6, 1.0, 1.5, 3.0)
  config, z, labels, weight, codes = _problem(seed=5, tokens=70)
  code_class = cb.allocate_codes(np.array([0.4, 0.3, 0.2, 0.1]), config.num_codes)
  args = (jnp.asarray(z), jnp.asarray(labels), jnp.asarray(weight), jnp.asarray(codes),
          jnp.asarray(code_class))
  plain = cb.semantic_loss(*args, config)
  balanced = cb.semantic_loss(*args, dataclasses.replace(config, class_weights=weights))
  # Per-token cross-entropies from the unweighted loss of one token at a time.
  flat_labels, flat_weight = labels.reshape(-1), weight.reshape(-1)
  per_token = np.array([float(cb.semantic_loss(
      jnp.asarray(z.reshape(1, -1, config.dim)[:, i:i + 1]), jnp.asarray([[flat_labels[i]]]),
      jnp.ones((1, 1)), jnp.asarray(codes), jnp.asarray(code_class), config))
      for i in range(len(flat_labels))])
  use = (flat_labels >= 0) & (flat_weight > 0)
  token_weight = np.where(use, np.asarray(weights)[np.maximum(flat_labels, 0)] * flat_weight, 0)
  np.testing.assert_allclose(float(balanced), (per_token * token_weight).sum()
                             / token_weight.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(plain), per_token[use].mean(), rtol=1e-5)


def _module_problem(mode, seed=4):
  config = _config(mode=mode, num_codes=16, num_classes=4 if mode == "sgc" else 1,
                   beta=0.3, decay=0.5, chunk_size=16)
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.normal(size=(2, 24, config.dim)), jnp.float32)
  labels = jnp.asarray(rng.integers(-1, 4, size=(2, 24)), jnp.int32)
  module = cb.Codebook(config)
  variables = module.init({"params": jax.random.PRNGKey(0)}, z)
  return config, module, variables, z, labels


@pytest.mark.parametrize("mode", ["vq", "ema", "sgc"])
def test_codebook_module_train_vs_eval_straight_through_and_beta(mode):
  config, module, variables, z, labels = _module_problem(mode)
  rngs = {"restart": jax.random.PRNGKey(1)}
  (q, indices, losses, _), updates = module.apply(
      variables, z, labels, None, True, mutable=["codebook"], rngs=rngs)
  (q_eval, indices_eval, _, _), eval_updates = module.apply(
      variables, z, labels, None, False, mutable=["codebook"])
  # Evaluation never changes the state; training does.
  for name, value in variables["codebook"].items():
    np.testing.assert_array_equal(eval_updates["codebook"][name], value)
  changed = [n for n in ("counts", "centres") if not np.array_equal(
      updates["codebook"][n], variables["codebook"][n])]
  assert "counts" in changed and (mode == "vq" or "centres" in changed)
  # The quantized output is the code of each index; its gradient is the identity.
  codes = variables["params"]["embedding"] if mode == "vq" else variables["codebook"]["centres"]
  np.testing.assert_allclose(q_eval, np.asarray(codes)[np.asarray(indices_eval)], atol=1e-6)
  jacobian_diag = jax.grad(lambda z_: jnp.sum(module.apply(
      variables, z_, labels, None, False, mutable=["codebook"])[0][0]))(z)
  np.testing.assert_allclose(jacobian_diag, 1.0)
  # Commitment = β · mean squared distance to the (stop-gradient) code.
  chosen = np.asarray(codes)[np.asarray(indices)]
  expected = config.beta * np.mean((np.asarray(z) - chosen) ** 2)
  np.testing.assert_allclose(losses["commitment"], expected, rtol=1e-5)
  if mode == "vq":
    np.testing.assert_allclose(losses["codebook"], expected / config.beta, rtol=1e-5)
  if mode == "sgc":  # training assignment is guided: labeled tokens keep their class
    code_class = np.asarray(variables["codebook"]["code_class"])
    labeled = np.asarray(labels) >= 0
    np.testing.assert_array_equal(code_class[np.asarray(indices)][labeled],
                                  np.asarray(labels)[labeled])


def test_vq_codebook_starts_as_taming_does():
  """U(-1/K, 1/K): both signs, within the bound, roughly uniform."""
  config = _config(mode="vq", num_codes=256, num_classes=1)
  variables = cb.Codebook(config).init({"params": jax.random.PRNGKey(0)},
                                       jnp.zeros((1, 4, config.dim)))
  embedding = np.asarray(variables["params"]["embedding"])
  assert embedding.shape == (256, config.dim)
  assert np.abs(embedding).max() <= 1 / 256
  assert (embedding < 0).mean() == pytest.approx(0.5, abs=0.05)
  assert embedding.std() == pytest.approx(1 / 256 / np.sqrt(3), rel=0.05)


def test_posterior_classes_are_the_argmax_of_the_semantic_posterior():
  config, module, variables, z, _ = _module_problem("sgc", seed=5)
  config = dataclasses.replace(config, semantic_temperature=0.7)
  module = cb.Codebook(config)
  code_class = np.array([0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 3, 3], np.int32)
  variables = {"codebook": dict(variables["codebook"], code_class=jnp.asarray(code_class))}
  got = module.apply(variables, z, method=cb.Codebook.posterior_classes)
  codes = np.asarray(variables["codebook"]["centres"])[:, :config.dim_sem]
  flat = np.asarray(z).reshape(-1, config.dim)[:, :config.dim_sem]
  logits = -((flat[:, None] - codes[None]) ** 2).sum(-1) / 0.7
  p = np.exp(logits - logits.max(1, keepdims=True))
  posterior = np.stack([p[:, code_class == c].sum(1) for c in range(4)], 1)
  np.testing.assert_array_equal(np.asarray(got).ravel(), posterior.argmax(1))


def test_posterior_and_nearest_code_maps_differ_where_they_should():
  """One class-1 code at squared distance 1.0, seven class-0 codes at 1.1:
  the nearest code says class 1, the posterior (7·e^-1.1 > e^-1) class 0."""
  config = _config(num_codes=8, num_classes=2, dim_sem=2, dim_det=0, semantic_temperature=1.0)
  angles = np.linspace(0, 2 * np.pi, 8)[:7]
  codes = np.concatenate([[[1.0, 0.0]], np.sqrt(1.1) * np.stack(
      [np.cos(angles), np.sin(angles)], 1)]).astype(np.float32)
  code_class = np.array([1] + [0] * 7, np.int32)
  state = {"centres": jnp.asarray(codes), "counts": jnp.ones(8), "sums": jnp.asarray(codes),
           "class_hist": jnp.zeros((8, 2)), "code_class": jnp.asarray(code_class),
           "missed": jnp.zeros(8)}
  module = cb.Codebook(config)
  z = jnp.zeros((1, 1, 2))
  nearest = module.apply({"codebook": state}, z, method=cb.Codebook.nearest)
  posterior = module.apply({"codebook": state}, z, method=cb.Codebook.posterior_classes)
  assert int(code_class[int(nearest.ravel()[0])]) == 1
  assert int(posterior.ravel()[0]) == 0


@pytest.mark.parametrize("field, value", [
    ("num_codes", 0), ("chunk_size", 0), ("decay", 1.0), ("decay", -0.1), ("beta", -1.0),
    ("semantic_temperature", 0.0), ("dead_after_tokens", 0.0), ("semantic_map", "argmax")])
def test_bad_codebook_fields_are_refused(field, value):
  with pytest.raises(ValueError, match=f"codebook.{field}="):
    _config(**{field: value}).validate()
