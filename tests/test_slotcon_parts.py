"""SlotCon heads, grouping and losses against NumPy re-implementations of the
official formulas (CVMI-Lab/SlotCon models/slotcon.py), masking, shapes and
parameter counts at the official sizes, jit, gradients and sharding."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from sgc_jax.models import slotcon

# ----------------------------------------------------------- NumPy references


def _np_normalize(x, axis=-1, eps=1e-12):
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def _np_log_softmax(x, axis=-1):
  x = x - x.max(axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis, keepdims=True))


def _np_gelu(x):
  return 0.5 * x * (1. + erf(x / np.sqrt(2.)))


def _np_self_distill(q, k, center, student_temp, teacher_temp):
  """Official self_distill on [N, K] rows."""
  log_q = _np_log_softmax(q / student_temp)
  t = np.exp(_np_log_softmax((k - center) / teacher_temp))
  return np.mean(np.sum(-t * log_q, axis=-1))


def _np_mask(score):
  """Official mask from a score [B, K, H, W]: scatter of argmax over K, summed, > 0."""
  onehot = np.zeros_like(score)
  np.put_along_axis(onehot, score.argmax(1)[:, None], 1., axis=1)
  return (onehot.sum(-1).sum(-1) > 0).astype(np.int64)


def _np_ctr_loss_filtered(q, k, score_q, score_k, predict, tau=0.2, world_size=1):
  """Official ctr_loss_filtered on `world_size` simulated ranks, averaged (DDP).

  q, k [B, K, D]; scores [B, K, H, W] (official layout); the batch splits into
  ranks of B / world_size images. `predict` sees the selected rows of all ranks
  at once (SyncBatchNorm).
  """
  b, num_k, d = q.shape
  per = b // world_size
  n = per * num_k
  mask_k_all = _np_mask(score_k).reshape(-1)  # concat_all_gather = rank order
  keys = _np_normalize(k.reshape(-1, d), axis=1)[mask_k_all.nonzero()[0]]
  idxs, rows = [], []
  for r in range(world_size):
    part = slice(r * per, (r + 1) * per)
    inter = (_np_mask(score_q[part]) * _np_mask(score_k[part])).reshape(-1)
    idx_q = inter.nonzero()[0]
    idxs.append(idx_q)
    rows.append(q[part].reshape(-1, d)[idx_q])
  preds = np.split(predict(np.concatenate(rows)), np.cumsum([len(i) for i in idxs])[:-1])
  losses = []
  for r, (idx_q, pred) in enumerate(zip(idxs, preds)):
    logits = _np_normalize(pred, axis=1) @ keys.T / tau
    labels = mask_k_all.cumsum(0)[idx_q + n * r] - 1
    ce = -_np_log_softmax(logits, axis=1)[np.arange(len(labels)), labels]
    losses.append(ce.mean() * (2 * tau))
  return np.mean(losses)


def _np_head(params, batch_stats, x, train, nlayers=3, eps=1e-5):
  """Official DINOHead: (Linear, BatchNorm1d, GELU) x (nlayers-1), Linear."""
  h = np.asarray(x, np.float64)
  for i in range(nlayers):
    lin = params[f"linear_{i}"]
    h = h @ np.asarray(lin["kernel"], np.float64) + np.asarray(lin["bias"])
    if i < nlayers - 1:
      if train:
        mean, var = h.mean(0), h.var(0)
      else:
        stats = batch_stats[f"bn_{i}"]
        mean, var = np.asarray(stats["mean"]), np.asarray(stats["var"])
      bn = params[f"bn_{i}"]
      h = (h - mean) / np.sqrt(var + eps) * np.asarray(bn["scale"]) + np.asarray(bn["bias"])
      h = _np_gelu(h)
  return h


def _random_dots(rng, b, h, w, k):
  """Cosine similarities of random pixels and prototypes, [B, H, W, K]."""
  x = _np_normalize(rng.normal(size=(b, h, w, 8)))
  p = _np_normalize(rng.normal(size=(k, 8)))
  return np.einsum("bhwd,kd->bhwk", x, p).astype(np.float32)


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


# ----------------------------------------------------------------------- losses


def test_group_loss_matches_official():
  rng = np.random.default_rng(0)
  q, k = _random_dots(rng, 3, 4, 5, 7), _random_dots(rng, 3, 4, 5, 7)
  center = rng.normal(scale=0.1, size=(1, 7)).astype(np.float32)
  got = slotcon.group_loss(jnp.asarray(q), jnp.asarray(k), jnp.asarray(center))
  # Official: [B,K,H,W].permute(0,2,3,1).flatten(0,2) = our [B,H,W,K] rows.
  want = _np_self_distill(q.reshape(-1, 7).astype(np.float64), k.reshape(-1, 7), center, 0.1, 0.07)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)
  got = slotcon.group_loss(jnp.asarray(q), jnp.asarray(k), jnp.asarray(center[0]),
                           student_temp=0.2, teacher_temp=0.05)
  want = _np_self_distill(q.reshape(-1, 7).astype(np.float64), k.reshape(-1, 7), center, 0.2, 0.05)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)


def test_group_loss_teacher_gets_no_gradient():
  rng = np.random.default_rng(1)
  q, k = jnp.asarray(_random_dots(rng, 2, 3, 3, 5)), jnp.asarray(_random_dots(rng, 2, 3, 3, 5))
  gq, gk = jax.grad(slotcon.group_loss, argnums=(0, 1))(q, k, jnp.zeros((1, 5)))
  assert np.abs(np.asarray(gq)).max() > 0
  assert np.all(np.asarray(gk) == 0)


def test_update_center_matches_official():
  rng = np.random.default_rng(2)
  center = rng.normal(size=(1, 6)).astype(np.float32)
  k1, k2 = _random_dots(rng, 2, 3, 4, 6), _random_dots(rng, 2, 3, 4, 6)
  # Official: cat([score_k1, score_k2]) rows, sum, all_reduce, / (rows · world).
  rows = np.concatenate([k1, k2]).reshape(-1, 6).astype(np.float64)
  want = center * 0.9 + rows.sum(0, keepdims=True) / len(rows) * 0.1
  got = slotcon.update_center(jnp.asarray(center), (jnp.asarray(k1), jnp.asarray(k2)))
  assert got.shape == (1, 6)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  got = slotcon.update_center(jnp.asarray(center[0]), jnp.stack([k1, k2]), momentum=0.5)
  want = center[0] * 0.5 + rows.mean(0) * 0.5
  assert got.shape == (6,)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def _contrast_problem(seed, b=4, k=12, h=3, w=3, d=6):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, k, d)).astype(np.float32)
  kk = rng.normal(size=(b, k, d)).astype(np.float32)
  dots_q, dots_k = _random_dots(rng, b, h, w, k), _random_dots(rng, b, h, w, k)
  return q, kk, dots_q, dots_k


def test_slot_validity_matches_official_mask():
  _, _, dots_q, _ = _contrast_problem(3)
  got = np.asarray(slotcon.slot_validity(jnp.asarray(dots_q)))
  want = _np_mask(dots_q.transpose(0, 3, 1, 2)).astype(bool)
  np.testing.assert_array_equal(got, want)
  assert 0 < got.sum() < got.size  # some slots are invalid: 9 pixels, 12 prototypes


@pytest.mark.parametrize("world_size", [1, 2])
def test_slot_contrast_loss_matches_official(world_size):
  q, k, dots_q, dots_k = _contrast_problem(4 + world_size)
  proj = np.random.default_rng(9).normal(size=(6, 6))
  predict = lambda rows: np.tanh(rows @ proj)  # row-wise, so it commutes with the selection
  want = _np_ctr_loss_filtered(q.astype(np.float64), k.astype(np.float64),
                               dots_q.transpose(0, 3, 1, 2), dots_k.transpose(0, 3, 1, 2),
                               predict, world_size=world_size)
  valid_q = slotcon.slot_validity(jnp.asarray(dots_q))
  valid_k = slotcon.slot_validity(jnp.asarray(dots_k))
  pred = jnp.tanh(jnp.asarray(q) @ jnp.asarray(proj, jnp.float32))
  got = slotcon.slot_contrast_loss(pred, jnp.asarray(k), valid_q, valid_k, num_groups=world_size)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)


def test_masked_slots_do_not_change_contrast_loss():
  q, k, dots_q, dots_k = _contrast_problem(6)
  valid_q = slotcon.slot_validity(jnp.asarray(dots_q))
  valid_k = slotcon.slot_validity(jnp.asarray(dots_k))
  rows = np.asarray(valid_q & valid_k)
  assert (~rows & np.asarray(valid_k)).any() and (~np.asarray(valid_k)).any()
  rng = np.random.default_rng(7)
  q2 = np.where(rows[..., None], q, q + 50 * rng.normal(size=q.shape)).astype(np.float32)
  k2 = np.where(np.asarray(valid_k)[..., None], k, 50 * rng.normal(size=k.shape)).astype(np.float32)
  loss = lambda a, b: slotcon.slot_contrast_loss(a, b, valid_q, valid_k)
  base, grad = jax.value_and_grad(loss)(jnp.asarray(q), jnp.asarray(k))
  pert, grad2 = jax.value_and_grad(loss)(jnp.asarray(q2), jnp.asarray(k2))
  assert float(base) == pytest.approx(float(pert), abs=1e-6)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(grad2), atol=1e-7)
  assert np.all(np.asarray(grad)[~rows] == 0)


def test_predictor_mask_is_the_official_selection():
  """predictor(all rows, mask) on the valid rows == predictor(selected rows): the
  BatchNorm statistics are over the selected slots only, and the loss through it
  matches the official code with SyncBN over the selected rows of both ranks."""
  q, k, dots_q, dots_k = _contrast_problem(8, d=16)
  head = slotcon.DINOHead(hidden_dim=32, bottleneck_dim=16)
  variables = head.init(jax.random.key(0), jnp.zeros((2, 16)))
  valid_q = slotcon.slot_validity(jnp.asarray(dots_q))
  valid_k = slotcon.slot_validity(jnp.asarray(dots_k))
  rows = np.asarray(valid_q & valid_k).reshape(-1)
  flat = q.reshape(-1, 16)

  def predict(x, mask=None):
    out, new = head.apply(variables, jnp.asarray(x, jnp.float32), train=True, mask=mask,
                          mutable=["batch_stats"])
    return np.asarray(out, np.float64), new

  masked, stats_masked = predict(flat, jnp.asarray(rows))
  gathered, stats_gathered = predict(flat[rows])
  np.testing.assert_allclose(masked[rows], gathered, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(stats_masked, stats_gathered, rtol=1e-5, atol=1e-6)

  # The perturbed invalid rows change neither the valid outputs nor the loss.
  q2 = np.where(rows[:, None], flat, flat + 30.).astype(np.float32)
  masked2, _ = predict(q2, jnp.asarray(rows))
  np.testing.assert_allclose(masked2[rows], masked[rows], rtol=1e-5, atol=1e-5)

  want = _np_ctr_loss_filtered(q, k, dots_q.transpose(0, 3, 1, 2), dots_k.transpose(0, 3, 1, 2),
                               lambda r: predict(r)[0], world_size=2)
  got = slotcon.slot_contrast_loss(jnp.asarray(masked.reshape(q.shape[:2] + (-1,)), jnp.float32),
                                   jnp.asarray(k), valid_q, valid_k, num_groups=2)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)


def test_select_slots_equals_dense_and_official_labels():
  q, k, dots_q, dots_k = _contrast_problem(10)
  valid_q = slotcon.slot_validity(jnp.asarray(dots_q))
  valid_k = slotcon.slot_validity(jnp.asarray(dots_k))
  b, num_k, d = q.shape
  dense = slotcon.slot_contrast_loss(jnp.asarray(q), jnp.asarray(k), valid_q, valid_k, num_groups=2)
  sel = jax.jit(slotcon.select_slots, static_argnums=(2, 3))(valid_q, valid_k, b * num_k, b * num_k)
  compact = slotcon.masked_info_nce(
      jnp.asarray(q).reshape(-1, d)[sel.row_index], jnp.asarray(k).reshape(-1, d)[sel.col_index],
      sel.labels, sel.row_valid, sel.col_valid, row_group=sel.row_index // (b // 2 * num_k),
      num_groups=2)
  np.testing.assert_allclose(float(compact), float(dense), rtol=1e-6)
  # Official labels: position of each row's slot among the gathered valid keys.
  mask_k = np.asarray(valid_k).reshape(-1).astype(np.int64)
  idx_q = np.asarray(valid_q & valid_k).reshape(-1).nonzero()[0]
  n_rows = len(idx_q)
  np.testing.assert_array_equal(np.asarray(sel.labels)[:n_rows], mask_k.cumsum()[idx_q] - 1)
  assert np.asarray(sel.row_valid).sum() == n_rows
  # A key capacity too small drops the rows whose positives fell off.
  small = slotcon.select_slots(valid_q, valid_k, b * num_k, 5)
  assert np.asarray(small.row_valid).sum() == np.sum(mask_k.cumsum()[idx_q] - 1 < 5)


def test_total_loss():
  got = slotcon.total_loss(1., 2., 3., 5.)
  assert float(got) == pytest.approx(0.5 * 3. + 0.5 * 8.)
  got = slotcon.total_loss(1., 2., 3., 5., group_loss_weight=0.25)
  assert float(got) == pytest.approx(0.25 * 3. + 0.75 * 8.)


# ---------------------------------------------------------------------- modules


def test_dino_head_matches_official_layers():
  """Linear → BN(batch statistics in train) → exact GELU, twice, then Linear."""
  rng = np.random.default_rng(11)
  x = rng.normal(size=(10, 6)).astype(np.float32)
  head = slotcon.DINOHead(hidden_dim=8, bottleneck_dim=5)
  variables = head.init(jax.random.key(1), jnp.asarray(x))
  # Non-trivial BN affine parameters, so their placement is tested too.
  params = jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.normal(size=a.shape), a.dtype),
                        variables["params"])
  variables = {"params": params, "batch_stats": variables["batch_stats"]}
  out, new = head.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(out), _np_head(params, None, x, train=True),
                             rtol=1e-4, atol=1e-5)
  lin = params["linear_0"]
  h = x.astype(np.float64) @ np.asarray(lin["kernel"]) + np.asarray(lin["bias"])
  stats = new["batch_stats"]["bn_0"]
  np.testing.assert_allclose(np.asarray(stats["mean"]), 0.1 * h.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["var"]), 0.9 + 0.1 * h.var(0), rtol=1e-4, atol=1e-6)
  # Eval mode uses the running statistics.
  out = head.apply({"params": params, "batch_stats": new["batch_stats"]}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(out), _np_head(params, new["batch_stats"], x, train=False),
                             rtol=1e-4, atol=1e-5)
  # One layer: a single Linear, no BN.
  single = slotcon.DINOHead(nlayers=1, bottleneck_dim=5).init(jax.random.key(0), jnp.asarray(x))
  assert set(single["params"]) == {"linear_0"} and "batch_stats" not in single


def test_dino_head_2d_is_the_head_per_pixel():
  rng = np.random.default_rng(12)
  x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  head2d = slotcon.DINOHead2d(hidden_dim=8, bottleneck_dim=5)
  variables = head2d.init(jax.random.key(2), jnp.asarray(x))
  out2d, _ = head2d.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  params = {name.replace("conv", "linear"): (
      {"kernel": p["kernel"][0, 0], "bias": p["bias"]} if name.startswith("conv") else p)
            for name, p in variables["params"].items()}
  assert variables["params"]["conv_0"]["kernel"].shape == (1, 1, 6, 8)
  want = _np_head(params, None, x.reshape(-1, 6), train=True).reshape(2, 3, 4, 5)
  np.testing.assert_allclose(np.asarray(out2d), want, rtol=1e-4, atol=1e-5)


def test_official_sizes_shapes_and_parameter_counts():
  key = jax.random.key(0)
  proj = slotcon.DINOHead2d()  # in_dim 2048 (ResNet-50), hidden 4096, out 256
  feats = jax.ShapeDtypeStruct((2, 7, 7, 2048), jnp.float32)
  shapes = jax.eval_shape(proj.init, key, feats)
  # 2048·4096+4096 + 2·4096 + 4096·4096+4096 + 2·4096 + 4096·256+256
  assert _count(shapes["params"]) == 26_239_232
  assert _count(shapes["batch_stats"]) == 4 * 4096
  out = jax.eval_shape(lambda v, x: proj.apply(v, x, train=True, mutable=["batch_stats"])[0],
                       shapes, feats)
  assert out.shape == (2, 7, 7, 256)
  assert _count(jax.eval_shape(slotcon.DINOHead2d().init, key,
                               jax.ShapeDtypeStruct((1, 1, 1, 512), jnp.float32))["params"]) \
      == 512 * 4096 + 4096 + 2 * 4096 + 4096 * 4096 + 4096 + 2 * 4096 + 4096 * 256 + 256
  pred = jax.eval_shape(slotcon.DINOHead().init, key, jax.ShapeDtypeStruct((4, 256), jnp.float32))
  assert _count(pred["params"]) == 18_899_200
  group = slotcon.SemanticGrouping()
  shapes = jax.eval_shape(group.init, key, jax.ShapeDtypeStruct((2, 7, 7, 256), jnp.float32))
  assert jax.tree.map(lambda a: a.shape, shapes["params"]) == {"slot_embed": (256, 256)}
  slots, dots = jax.eval_shape(group.apply, shapes,
                               jax.ShapeDtypeStruct((2, 7, 7, 256), jnp.float32))
  assert slots.shape == (2, 256, 256) and dots.shape == (2, 7, 7, 256)


def test_initialisation_as_official():
  head = slotcon.DINOHead(hidden_dim=512, bottleneck_dim=256)
  params = head.init(jax.random.key(3), jnp.zeros((2, 256)))["params"]
  kernel = np.asarray(params["linear_1"]["kernel"])
  assert kernel.std() == pytest.approx(0.02, rel=0.02)  # torch's cut at ±2 = untruncated here
  assert np.all(np.asarray(params["linear_1"]["bias"]) == 0)
  assert np.all(np.asarray(params["bn_0"]["scale"]) == 1)
  protos = slotcon.SemanticGrouping(num_prototypes=64, dim=64).init(
      jax.random.key(4), jnp.zeros((1, 2, 2, 64)))["params"]["slot_embed"]
  assert np.asarray(protos).std() == pytest.approx(1., rel=0.05)  # nn.Embedding: N(0, 1)


def test_semantic_grouping_matches_official():
  rng = np.random.default_rng(13)
  x = (rng.normal(size=(2, 3, 4, 8)) + 3. * np.eye(8)[0]).astype(np.float32)
  group = slotcon.SemanticGrouping(num_prototypes=5, dim=8)
  variables = group.init(jax.random.key(5), jnp.asarray(x))
  # Prototype 0 faces away from every pixel: its assignment is below the 1e-6
  # floor, so its slot tests that floor.
  variables = {"params": {"slot_embed": variables["params"]["slot_embed"].at[0].set(-np.eye(8)[0])}}
  slots, dots = group.apply(variables, jnp.asarray(x))
  protos = np.asarray(variables["params"]["slot_embed"], np.float64)
  # Official layout: x [B,D,H,W].
  xo = x.transpose(0, 3, 1, 2).astype(np.float64)
  want_dots = np.einsum("kd,bdhw->bkhw", _np_normalize(protos, 1), _np_normalize(xo, 1))
  attn = np.exp(_np_log_softmax(want_dots / 0.07, axis=1)) + 1e-6
  want_slots = np.einsum("bdhw,bkhw->bkd", xo, attn / attn.sum((2, 3), keepdims=True))
  np.testing.assert_allclose(np.asarray(dots), want_dots.transpose(0, 2, 3, 1),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(slots), want_slots, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------- jit, gradients, mesh


def _tiny_model():
  proj = slotcon.DINOHead2d(hidden_dim=16, bottleneck_dim=8)
  group = slotcon.SemanticGrouping(num_prototypes=6, dim=8)
  pred = slotcon.DINOHead(hidden_dim=16, bottleneck_dim=8)
  return proj, group, pred


def _tiny_loss(params, stats, center, views):
  """One SlotCon loss with identity alignment; the teacher is the student, stopped."""
  proj, group, pred = _tiny_model()
  teacher = jax.lax.stop_gradient(params)
  out = {}
  for name, p in (("q", params), ("k", teacher)):
    for i, v in enumerate(views):
      x, _ = proj.apply({"params": p["proj"], "batch_stats": stats["proj"]}, v, train=True,
                        mutable=["batch_stats"])
      out[name, i] = group.apply({"params": p["group"]}, x)
  group_ab = slotcon.group_loss(out["q", 0][1], out["k", 1][1], center)
  group_ba = slotcon.group_loss(out["q", 1][1], out["k", 0][1], center)
  contrast = []
  for a, b in ((0, 1), (1, 0)):
    (slots_q, dots_q), (slots_k, dots_k) = out["q", a], out["k", b]
    valid_q, valid_k = slotcon.slot_validity(dots_q), slotcon.slot_validity(dots_k)
    bsz, k, d = slots_q.shape
    p, _ = pred.apply({"params": params["pred"], "batch_stats": stats["pred"]},
                      slots_q.reshape(-1, d), train=True, mask=(valid_q & valid_k).reshape(-1),
                      mutable=["batch_stats"])
    contrast.append(slotcon.slot_contrast_loss(p.reshape(bsz, k, d), slots_k, valid_q, valid_k))
  new_center = slotcon.update_center(center, (out["k", 0][1], out["k", 1][1]))
  return slotcon.total_loss(group_ab, group_ba, *contrast), new_center


def _tiny_setup(batch=8):
  proj, group, pred = _tiny_model()
  views = [jnp.asarray(np.random.default_rng(s).normal(size=(batch, 4, 4, 12)), jnp.float32)
           for s in (20, 21)]
  pv = proj.init(jax.random.key(6), views[0])
  gv = group.init(jax.random.key(7), jnp.zeros((1, 4, 4, 8)))
  rv = pred.init(jax.random.key(8), jnp.zeros((2, 8)))
  params = {"proj": pv["params"], "group": gv["params"], "pred": rv["params"]}
  stats = {"proj": pv["batch_stats"], "pred": rv["batch_stats"]}
  return params, stats, jnp.zeros((1, 6)), views


def test_jit_gradients_finite_and_sharded_equal():
  params, stats, center, views = _tiny_setup()
  step = jax.jit(jax.value_and_grad(_tiny_loss, has_aux=True))
  (loss, new_center), grads = step(params, stats, center, views)
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert new_center.shape == (1, 6) and np.abs(np.asarray(new_center)).max() > 0
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(np.asarray(g))), path
  for part in ("proj", "group", "pred"):
    assert max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(grads[part])) > 0, part

  # The batch sharded over a mesh: global BN statistics, global keys and means.
  devices = np.array(jax.devices())
  if len(devices) < 2:
    pytest.skip("one device")
  mesh = jax.sharding.Mesh(devices, ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = [jax.device_put(v, batch) for v in views]
  (loss_s, center_s), _ = step(params, stats, center, sharded)
  np.testing.assert_allclose(float(loss_s), float(loss), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(center_s), np.asarray(new_center), rtol=1e-5, atol=1e-7)
