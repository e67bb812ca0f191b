"""GAN losses against taming-transformers' formulas, the consistency loss and its
instance filter, the pyramid neck and the top-down path, space-to-depth; the
reconstruction losses and PSNR, jitted and not."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.models import vqgan
from sgc_jax.models import codebook as cb
from sgc_jax.ops import losses
from sgc_jax.runtime import sharding
from sgc_jax.tools import synthetic
from test_train import tiny_config

# ----------------------------------------------------------- NumPy references


def _np_adaptive_weight(grad_rec, grad_gan, max_weight=1e4):
  """taming's calculate_adaptive_weight: ‖∇nll‖ / (‖∇g‖ + 1e-4), clamped to [0, max]."""
  norm = lambda grads: np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads))
  return np.clip(norm(grad_rec) / (norm(grad_gan) + 1e-4), 0.0, max_weight)


def _np_hinge_d_loss(logits_real, logits_fake):
  """taming's hinge_d_loss."""
  return 0.5 * (np.mean(np.maximum(0.0, 1.0 - logits_real)) +
                np.mean(np.maximum(0.0, 1.0 + logits_fake)))


def _np_g_loss(logits_fake):
  return -np.mean(logits_fake)


def _np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_distances(z, codes, config):
  w = np.concatenate([np.full(config.dim_sem, config.w_sem),
                      np.full(config.dim_det, config.w_det)])
  z, codes = np.asarray(z, np.float64), np.asarray(codes, np.float64)
  return (((z[..., None, :] - codes) ** 2) * w).sum(-1)


def _np_consistency(student, teacher, valid, codes, config):
  """Mean over valid tokens of H(softmax(-d(t)/(τ·s)), softmax(-d(s)/τ))."""
  tau, sharpen = config.consistency_temperature, config.consistency_sharpen
  target = _np_softmax(-_np_distances(teacher, codes, config) / (tau * sharpen))
  log_p = _np_log_softmax(-_np_distances(student, codes, config) / tau)
  cross_entropy = -(target * log_p).sum(-1)
  valid = np.asarray(valid, np.float64)
  return (cross_entropy * valid).sum() / max(valid.sum(), 1.0)


def _np_space_to_depth(x, f):
  """out[b, i, j, (dy·f + dx)·C + c] = x[b, i·f + dy, j·f + dx, c], by loops."""
  b, h, w, c = x.shape
  out = np.zeros((b, h // f, w // f, f * f * c), x.dtype)
  for i in range(h // f):
    for j in range(w // f):
      for dy in range(f):
        for dx in range(f):
          k = (dy * f + dx) * c
          out[:, i, j, k:k + c] = x[:, i * f + dy, j * f + dx, :]
  return out


# ------------------------------------------------------- 1. adaptive weight, GAN


def test_adaptive_weight_matches_taming_and_clips_at_max_weight():
  """adaptive_weight = ‖∇nll‖/(‖∇g‖+1e-4) over all leaves of the gradient trees, clipped to max."""
  rng = np.random.default_rng(0)
  grad_rec = {"kernel": rng.normal(size=(3, 3, 4, 3)).astype(np.float32),
              "bias": rng.normal(size=(3,)).astype(np.float32)}
  grad_gan = {"kernel": 0.3 * rng.normal(size=(3, 3, 4, 3)).astype(np.float32),
              "bias": 0.3 * rng.normal(size=(3,)).astype(np.float32)}
  value = float(losses.adaptive_weight(grad_rec, grad_gan))
  expected = _np_adaptive_weight(grad_rec.values(), grad_gan.values())
  assert 1.0 < expected < 1e4  # not clipped: the ratio itself is checked
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  # A vanishing GAN gradient: the ratio (‖∇nll‖ / 1e-4 ≈ 5e4) is clipped at 1e4 ...
  zeros = jax.tree.map(np.zeros_like, grad_gan)
  assert _np_adaptive_weight(grad_rec.values(), zeros.values(), np.inf) > 1e4
  assert float(losses.adaptive_weight(grad_rec, zeros)) == pytest.approx(1e4)
  # ... or at any max_weight given, and a ratio under it is kept.
  assert float(losses.adaptive_weight(grad_rec, grad_gan, max_weight=2.0)) == pytest.approx(2.0)
  assert float(losses.adaptive_weight(grad_gan, grad_rec, max_weight=2.0)) == pytest.approx(
      _np_adaptive_weight(grad_gan.values(), grad_rec.values()), rel=1e-5)


def test_adaptive_weight_passes_no_gradient():
  """jax.grad through adaptive_weight is exactly zero w.r.t. both gradient trees."""
  rng = np.random.default_rng(1)
  grad_rec = {"kernel": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)}
  grad_gan = {"kernel": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)}
  d_rec, d_gan = jax.grad(lambda a, b: losses.adaptive_weight(a, b), argnums=(0, 1))(
      grad_rec, grad_gan)
  # Sanity: without the stop-gradient the same ratio does have a gradient.
  ratio = lambda a, b: jnp.linalg.norm(a["kernel"]) / (jnp.linalg.norm(b["kernel"]) + 1e-4)
  assert np.abs(np.asarray(jax.grad(ratio)(grad_rec, grad_gan)["kernel"])).max() > 0
  np.testing.assert_array_equal(d_rec["kernel"], 0.0)
  np.testing.assert_array_equal(d_gan["kernel"], 0.0)


def test_hinge_and_generator_losses_match_taming_on_unmasked_examples():
  """hinge_discriminator / generator_adversarial = taming's formulas over the weight-1 rows only."""
  rng = np.random.default_rng(2)
  real = rng.normal(size=(6, 3, 3, 1)).astype(np.float32) * 2
  fake = rng.normal(size=(6, 3, 3, 1)).astype(np.float32) * 2
  # All examples real: the plain formulas.
  ones = np.ones(6, np.float32)
  np.testing.assert_allclose(losses.hinge_discriminator(real, fake, ones),
                             _np_hinge_d_loss(real, fake), rtol=1e-6)
  np.testing.assert_allclose(losses.generator_adversarial(fake, ones), _np_g_loss(fake),
                             rtol=1e-6)
  # Padding rows (weight 0) with extreme logits must not count.
  weight = np.array([1, 0, 1, 1, 0, 1], np.float32)
  keep = weight > 0
  real[~keep], fake[~keep] = -1e4, 1e4
  np.testing.assert_allclose(losses.hinge_discriminator(real, fake, weight),
                             _np_hinge_d_loss(real[keep], fake[keep]), rtol=1e-6)
  np.testing.assert_allclose(losses.generator_adversarial(fake, weight),
                             _np_g_loss(fake[keep]), rtol=1e-6)
  # Hinge margins: confident, correct logits give exactly 0.
  assert float(losses.hinge_discriminator(np.full_like(real, 3.0), np.full_like(fake, -3.0),
                                          ones)) == 0.0
  # Only padding: 0, not a division by zero.
  zero = np.zeros(6, np.float32)
  assert float(losses.hinge_discriminator(real, fake, zero)) == 0.0
  assert float(losses.generator_adversarial(fake, zero)) == 0.0


# ------------------------------------------------------------ 2. consistency loss


def _consistency_problem(seed=0, groups=2, tokens=23, **overrides):
  # chunk 5 does not divide 23 tokens: the last chunk is padded.
  defaults = dict(mode="sgc", num_codes=11, dim_sem=3, dim_det=2, num_classes=1, w_sem=1.0,
                  w_det=0.3, chunk_size=5, consistency_temperature=0.7,
                  consistency_sharpen=0.5)
  defaults.update(overrides)
  config = cb.CodebookConfig(**defaults)
  rng = np.random.default_rng(seed)
  student = rng.normal(size=(groups, tokens, config.dim)).astype(np.float32)
  teacher = (student + 0.5 * rng.normal(size=student.shape)).astype(np.float32)
  valid = (rng.uniform(size=(groups, tokens)) > 0.3).astype(np.float32)
  codes = rng.normal(size=(config.num_codes, config.dim)).astype(np.float32)
  return config, student, teacher, valid, codes


def test_consistency_loss_equals_numpy_sharpened_cross_entropy():
  """consistency_loss = mean over valid tokens of CE(softmax(-d_w(t)/(τs)), log_softmax(-d_w(s)/τ))."""
  config, student, teacher, valid, codes = _consistency_problem()
  assert config.w_sem != config.w_det and config.dim_det > 0
  assert student.shape[1] % config.chunk_size != 0
  value = cb.consistency_loss(student, teacher, valid, codes, config)
  expected = _np_consistency(student, teacher, valid, codes, config)
  np.testing.assert_allclose(value, expected, rtol=2e-5)
  # The det weight and the sharpening really enter: other values, other losses.
  for change in (dict(w_det=1.0), dict(consistency_sharpen=1.0),
                 dict(consistency_temperature=1.0)):
    other = dataclasses.replace(config, **change)
    np.testing.assert_allclose(cb.consistency_loss(student, teacher, valid, codes, other),
                               _np_consistency(student, teacher, valid, codes, other),
                               rtol=2e-5)
    assert abs(_np_consistency(student, teacher, valid, codes, other) - expected) > 1e-3


def test_consistency_sharpening_makes_the_target_more_peaked():
  """With sharpen < 1 the library's target has lower entropy than with 1 (read off the loss)."""
  # With codes of equal weighted norm, -d_w(z, e_k)/τ = (2 z·w e_k)/τ + const(z):
  # the target of teacher t at sharpen s is the student distribution at z = t/s.
  # So loss(student=t/s, teacher=t) = H(target) (cross-entropy with itself), and it
  # is the minimum over students (Gibbs): both are checked.
  config, _, teacher, _, codes = _consistency_problem(seed=3)
  w = np.concatenate([np.full(config.dim_sem, config.w_sem),
                      np.full(config.dim_det, config.w_det)])
  codes = codes / np.sqrt((codes ** 2 * w).sum(-1, keepdims=True))
  valid = np.ones(teacher.shape[:2], np.float32)
  entropies = {}
  for sharpen in (1.0, 0.5, 0.25):
    c = dataclasses.replace(config, consistency_sharpen=sharpen)
    entropy = float(cb.consistency_loss(teacher / sharpen, teacher, valid, codes, c))
    target = _np_softmax(-_np_distances(teacher, codes, c) / (c.consistency_temperature * sharpen))
    np.testing.assert_allclose(entropy, -(target * np.log(target)).sum(-1).mean(), rtol=1e-4)
    other_student = teacher / sharpen + 0.3
    assert float(cb.consistency_loss(other_student, teacher, valid, codes, c)) > entropy
    entropies[sharpen] = entropy
  assert entropies[1.0] > entropies[0.5] > entropies[0.25] > 0


def test_consistency_stop_gradient_on_the_teacher():
  """d loss / d teacher is exactly zero; d loss / d student is not (on valid tokens only)."""
  config, student, teacher, valid, codes = _consistency_problem(seed=4)
  d_student, d_teacher = jax.grad(
      lambda s, t: cb.consistency_loss(s, t, valid, codes, config), argnums=(0, 1))(
          jnp.asarray(student), jnp.asarray(teacher))
  np.testing.assert_array_equal(d_teacher, 0.0)
  d_student = np.asarray(d_student)
  assert np.all(np.abs(d_student[valid > 0]).sum(-1) > 0)
  np.testing.assert_array_equal(d_student[valid == 0], 0.0)


def test_consistency_ignores_invalid_tokens():
  """Perturbing student and teacher tokens where valid = 0 leaves the loss unchanged."""
  config, student, teacher, valid, codes = _consistency_problem(seed=5)
  base = float(cb.consistency_loss(student, teacher, valid, codes, config))
  rng = np.random.default_rng(6)
  invalid = (valid == 0)[..., None]
  assert invalid.any()
  noisy_s = np.where(invalid, student + 5 * rng.normal(size=student.shape), student)
  noisy_t = np.where(invalid, teacher - 5 * rng.normal(size=teacher.shape), teacher)
  assert float(cb.consistency_loss(noisy_s.astype(np.float32), noisy_t.astype(np.float32),
                                   valid, codes, config)) == pytest.approx(base, rel=1e-6)
  # Whereas the same perturbation on a valid token does change it.
  j = np.argwhere(valid > 0)[0]
  moved = student.copy()
  moved[j[0], j[1]] += 5.0
  assert abs(float(cb.consistency_loss(moved, teacher, valid, codes, config)) - base) > 1e-3


# ------------------------------------------------ 3. the trainer's instance filter


@pytest.fixture(scope="module")
def consistency_setup():
  config = tiny_config("unused")  # no data set is opened: class frequencies by hand
  config.model.codebook.update(dict(num_codes=16, w_det=0.5, chunk_size=40,
                                    consistency_temperature=0.8, consistency_weight=0.3))
  config.disc.ch = 8
  num_classes = 3
  mesh = sharding.create_mesh(devices=jax.devices()[:1])
  trainer = synthetic.make_trainer(config, num_classes, mesh)
  state = trainer.create_train_state(0)
  consistency = jax.jit(trainer._consistency)
  return trainer, state, consistency


def _views_batch(batch_size, size, grid, rng):
  """Two identical views (same box, no flip); instance ids constant on each token's patch."""
  patch = size // grid
  ids = rng.integers(0, 5, size=(batch_size, grid, grid)).astype(np.int32)
  instances = np.repeat(np.repeat(ids, patch, 1), patch, 2)
  box = np.array([0.1, 0.2, 0.8, 0.9], np.float32)
  return {
      "image": np.zeros((batch_size, 2, size, size, 3), np.float32),
      "segmentation": np.zeros((batch_size, 2, size, size), np.uint8),
      "instances": np.stack([instances, instances], 1),
      "box": np.broadcast_to(box, (batch_size, 2, 4)).copy(),
      "flip": np.zeros((batch_size, 2), bool),
      "mask": np.ones((batch_size,), bool),
  }


def _expected_consistency(trainer, state, z, token_valid):
  """0.5·w·(CL(a→b) + CL(b→a)) in NumPy, views matched token i to token i."""
  mc = trainer.model_config
  batch_size = z.shape[0] // 2
  z = np.asarray(z).reshape(batch_size, 2, -1, z.shape[-1])
  codes = np.asarray(state.codebook["codebook"]["centres"])
  a, b = z[:, 0], z[:, 1]
  return mc.codebook.consistency_weight * 0.5 * (
      _np_consistency(a, b, token_valid, codes, mc.codebook) +
      _np_consistency(b, a, token_valid, codes, mc.codebook))


def test_trainer_consistency_excludes_tokens_whose_instances_differ(consistency_setup):
  """Tokens whose instance id differs between views (or of padding examples) drop out of the loss."""
  trainer, state, consistency = consistency_setup
  mc = trainer.model_config
  size, grid, batch_size = mc.resolution, mc.grid, 3
  tokens = grid * grid
  rng = np.random.default_rng(7)
  batch = _views_batch(batch_size, size, grid, rng)
  z = rng.normal(size=(2 * batch_size, grid, grid, mc.codebook.dim)).astype(np.float32)
  # chunk_size does not divide the B·T tokens of the group: padding is exercised.
  assert (batch_size * tokens) % mc.codebook.chunk_size != 0

  def loss(b):
    return float(consistency(state.params, state.codebook, jnp.asarray(z), b))

  # Same instances in both views: every token counts.
  all_valid = np.ones((batch_size, tokens), np.float32)
  full = loss(batch)
  assert full > 0
  np.testing.assert_allclose(full, _expected_consistency(trainer, state, z, all_valid),
                             rtol=1e-4)

  # Every token's instance differs: nothing is left.
  differ = dict(batch, instances=batch["instances"].copy())
  differ["instances"][:, 1] += 100
  assert loss(differ) == 0.0

  # Some tokens differ: exactly those are masked out.
  changed = rng.uniform(size=(batch_size, grid, grid)) < 0.4
  patch = size // grid
  pixel_changed = np.repeat(np.repeat(changed, patch, 1), patch, 2)
  some = dict(batch, instances=batch["instances"].copy())
  some["instances"][:, 1][pixel_changed] += 100
  token_valid = (~changed).reshape(batch_size, tokens).astype(np.float32)
  partial = loss(some)
  np.testing.assert_allclose(partial, _expected_consistency(trainer, state, z, token_valid),
                             rtol=1e-4)
  # The same through the model's own consistency method, with those tokens masked.
  variables = {"params": state.params, "codebook": state.codebook}
  zr = jnp.asarray(z).reshape(batch_size, 2, tokens, 1, mc.codebook.dim)
  valid = jnp.asarray(token_valid)[:, :, None]
  direct = 0.5 * (
      trainer.model.apply(variables, zr[:, 0], zr[:, 1], valid,
                          method=vqgan.SGCVQGAN.consistency) +
      trainer.model.apply(variables, zr[:, 1], zr[:, 0], valid,
                          method=vqgan.SGCVQGAN.consistency))
  np.testing.assert_allclose(partial, float(direct), rtol=1e-5)
  assert abs(partial - full) > 1e-4

  # Instance ids are read at token centres: a change off the centres filters nothing.
  off_centre = dict(batch, instances=batch["instances"].copy())
  off_centre["instances"][:, 1, ::patch, ::patch] += 100  # patch corners
  np.testing.assert_allclose(loss(off_centre), full, rtol=1e-6)

  # A padding example (mask False) counts for nothing.
  padded = dict(batch, mask=np.array([True, False, True]))
  padded_valid = all_valid.copy()
  padded_valid[1] = 0
  np.testing.assert_allclose(loss(padded), _expected_consistency(trainer, state, z, padded_valid),
                             rtol=1e-4)

  # A mirrored second view (flip, mirrored instances and tokens) is matched back:
  # the same loss as the identical views.
  flipped = dict(batch, flip=np.array([[False, True]] * batch_size),
                 instances=batch["instances"].copy())
  flipped["instances"][:, 1] = flipped["instances"][:, 1, :, ::-1]
  z_flip = z.reshape(batch_size, 2, grid, grid, -1).copy()
  z_flip[:, 1] = z_flip[:, 1, :, ::-1]
  z_flip = z_flip.reshape(z.shape)
  np.testing.assert_allclose(
      float(consistency(state.params, state.codebook, jnp.asarray(z_flip), flipped)), full,
      rtol=1e-5)


# ------------------------------------------------ 4. pyramid neck and top-down path


def _model_config(dim_det=4, detail_levels=(1,), top_down=True):
  return vqgan.ModelConfig(
      resolution=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
      z_channels=32, detail_levels=detail_levels, top_down=top_down,
      codebook=cb.CodebookConfig(mode="sgc", num_codes=16, dim_sem=4, dim_det=dim_det,
                                 num_classes=2))


def test_encoder_returns_every_level_finest_first():
  """The encoder's levels are each level's last block output (before downsampling), finest first."""
  c = _model_config()
  images = jnp.asarray(np.random.default_rng(8).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  encoder = vqgan.Encoder(c)
  params = encoder.init(jax.random.PRNGKey(0), images)
  (top, levels), inter = encoder.apply(params, images, capture_intermediates=True)
  chex.assert_shape(top, (2, c.grid, c.grid, c.z_channels))
  assert len(levels) == len(c.ch_mult)
  for i, (level, mult) in enumerate(zip(levels, c.ch_mult)):
    chex.assert_shape(level, (2, 16 // 2 ** i, 16 // 2 ** i, c.ch * mult))
    block = inter["intermediates"][f"down_{i}_block_{c.num_res_blocks - 1}"]["__call__"][0]
    np.testing.assert_array_equal(level, block)


@pytest.mark.parametrize("detail_levels", [(1,), (1, 2)])
def test_pyramid_neck_z_sem_from_top_and_z_det_from_finer_levels(detail_levels):
  """z = [quant_conv(top) ; detail_conv([top, s2d(finer levels)])]; a finer pixel moves one z_det token."""
  c = _model_config(detail_levels=detail_levels)
  dim_sem, dim_det, g = c.codebook.dim_sem, c.codebook.dim_det, c.grid
  rng = np.random.default_rng(9)
  top = rng.normal(size=(2, g, g, c.z_channels)).astype(np.float32)
  levels = [rng.normal(size=(2, 16 // 2 ** i, 16 // 2 ** i, c.ch * m)).astype(np.float32)
            for i, m in enumerate(c.ch_mult)]
  neck = vqgan.PyramidNeck(c)
  variables = neck.init(jax.random.PRNGKey(1), top, levels)
  p = variables["params"]
  z = np.asarray(neck.apply(variables, top, levels))
  chex.assert_shape(z, (2, g, g, dim_sem + dim_det))
  # The formula, with the NumPy space-to-depth.
  sem_kernel = np.asarray(p["quant_conv"]["kernel"])[0, 0]
  np.testing.assert_allclose(z[..., :dim_sem], top @ sem_kernel + p["quant_conv"]["bias"],
                             rtol=1e-4, atol=1e-4)
  inputs = np.concatenate(
      [top] + [_np_space_to_depth(levels[-1 - l], 2 ** l) for l in detail_levels], -1)
  det_kernel = np.asarray(p["detail_conv"]["kernel"])[0, 0]
  chex.assert_axis_dimension(det_kernel, 0, inputs.shape[-1])
  np.testing.assert_allclose(z[..., dim_sem:], inputs @ det_kernel + p["detail_conv"]["bias"],
                             rtol=1e-4, atol=1e-4)

  # One pixel of a detail level: z_sem untouched, z_det changes at its token only.
  for level in range(len(c.ch_mult)):
    moved = [x.copy() for x in levels]
    finer = len(c.ch_mult) - 1 - level  # levels[-1 - level]
    y, x = 5 % moved[finer].shape[1], 3 % moved[finer].shape[2]
    moved[finer][0, y, x] += 10.0
    z_moved = np.asarray(neck.apply(variables, top, moved))
    np.testing.assert_array_equal(z_moved[..., :dim_sem], z[..., :dim_sem])
    change = np.abs(z_moved[..., dim_sem:] - z[..., dim_sem:]).max(-1)
    if level in detail_levels:
      f = 2 ** level
      expected = np.zeros_like(change, bool)
      expected[0, y // f, x // f] = True
      np.testing.assert_array_equal(change > 1e-4, expected)
    else:  # not a detail level (level 0: the top, which the neck takes as `top`)
      np.testing.assert_array_equal(change, 0.0)
  # The top level moves both parts (semantics, and context of the details).
  top_moved = top.copy()
  top_moved[1, 2, 1] += 10.0
  z_moved = np.asarray(neck.apply(variables, top_moved, levels))
  assert np.abs(z_moved[1, 2, 1, :dim_sem] - z[1, 2, 1, :dim_sem]).max() > 1e-4
  assert np.abs(z_moved[1, 2, 1, dim_sem:] - z[1, 2, 1, dim_sem:]).max() > 1e-4


def test_full_model_tokens_have_sem_and_det_channels_at_the_token_grid():
  """SGCVQGAN.tokens = neck(encoder(x)) with dim_sem + dim_det channels on the g×g grid."""
  c = _model_config()
  images = jnp.asarray(np.random.default_rng(10).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
  model = vqgan.SGCVQGAN(c)
  variables = model.init(jax.random.PRNGKey(2), images)
  z = model.apply(variables, images, method=vqgan.SGCVQGAN.tokens)
  chex.assert_shape(z, (1, c.grid, c.grid, c.codebook.dim_sem + c.codebook.dim_det))
  p = variables["params"]
  top, levels = vqgan.Encoder(c).apply({"params": p["encoder"]}, images)
  np.testing.assert_allclose(z, vqgan.PyramidNeck(c).apply({"params": p["neck"]}, top, levels),
                             rtol=1e-6, atol=1e-6)
  chex.assert_shape(variables["codebook"]["codebook"]["centres"], (16, c.codebook.dim))


def test_decoder_top_down_path_uses_the_quantized_details():
  """With top_down, q_det reaches the output through top_down_conv; zeroing it gives the plain decoder."""
  c = _model_config(top_down=True)
  plain_config = _model_config(top_down=False)
  dim_sem, g = c.codebook.dim_sem, c.grid
  rng = np.random.default_rng(11)
  q = rng.normal(size=(1, g, g, c.codebook.dim)).astype(np.float32)
  decoder, plain = vqgan.Decoder(c), vqgan.Decoder(plain_config)
  params = decoder.init(jax.random.PRNGKey(3), q)["params"]
  channels = c.ch * c.ch_mult[-1]
  chex.assert_shape(params["top_down_conv"]["kernel"], (1, 1, c.codebook.dim_det, 4 * channels))
  plain_params = {k: v for k, v in params.items() if k != "top_down_conv"}
  chex.assert_trees_all_equal_structs(plain_params,
                                      plain.init(jax.random.PRNGKey(3), q)["params"])
  # Details only through the top-down path: post_quant_conv blind to q_det.
  kernel = np.asarray(params["post_quant_conv"]["kernel"]).copy()
  kernel[:, :, dim_sem:] = 0.0
  params = dict(params, post_quant_conv=dict(params["post_quant_conv"], kernel=kernel))
  plain_params = dict(plain_params, post_quant_conv=params["post_quant_conv"])
  q_det_moved = q.copy()
  q_det_moved[..., dim_sem:] += rng.normal(size=q[..., dim_sem:].shape).astype(np.float32)

  out = decoder.apply({"params": params}, q)
  out_moved = decoder.apply({"params": params}, q_det_moved)
  assert np.abs(np.asarray(out_moved - out)).max() > 1e-3
  np.testing.assert_array_equal(plain.apply({"params": plain_params}, q),
                                plain.apply({"params": plain_params}, q_det_moved))
  # A zero top-down convolution adds nothing: the plain decoder's output.
  zero_td = dict(params, top_down_conv=jax.tree.map(jnp.zeros_like, params["top_down_conv"]))
  np.testing.assert_allclose(decoder.apply({"params": zero_td}, q),
                             plain.apply({"params": plain_params}, q), rtol=1e-5, atol=1e-5)


def test_without_details_the_model_is_the_plain_vqgan():
  """dim_det = 0: quant_conv z_channels -> dim_sem, no detail_conv or top_down_conv, z = quant_conv(top)."""
  c = _model_config(dim_det=0, top_down=True)
  images = jnp.asarray(np.random.default_rng(12).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
  model = vqgan.SGCVQGAN(c)
  variables = model.init(jax.random.PRNGKey(4), images)
  p = variables["params"]
  assert set(p["neck"]) == {"quant_conv"}
  chex.assert_shape(p["neck"]["quant_conv"]["kernel"], (1, 1, c.z_channels, c.codebook.dim_sem))
  assert "top_down_conv" not in p["decoder"]
  chex.assert_shape(p["decoder"]["post_quant_conv"]["kernel"],
                    (1, 1, c.codebook.dim_sem, c.z_channels))
  chex.assert_shape(variables["codebook"]["codebook"]["centres"], (16, c.codebook.dim_sem))
  z = np.asarray(model.apply(variables, images, method=vqgan.SGCVQGAN.tokens))
  top, _ = vqgan.Encoder(c).apply({"params": p["encoder"]}, images)
  kernel = np.asarray(p["neck"]["quant_conv"]["kernel"])[0, 0]
  np.testing.assert_allclose(z, np.asarray(top) @ kernel + p["neck"]["quant_conv"]["bias"],
                             rtol=1e-4, atol=1e-4)
  out = model.apply(variables, images)
  chex.assert_equal_shape([out["reconstruction"], images])


# ------------------------------------------------------- 5. space-to-depth


@pytest.mark.parametrize("shape, factor", [((2, 4, 6, 3), 2), ((1, 6, 9, 2), 3),
                                           ((3, 8, 4, 5), 4), ((1, 5, 7, 4), 1)])
def test_space_to_depth_layout_and_depth_to_space_inverse(shape, factor):
  """space_to_depth matches the (dy·f+dx)·C+c block layout, and depth_to_space inverts it both ways."""
  rng = np.random.default_rng(sum(shape) + factor)
  x = rng.normal(size=shape).astype(np.float32)
  s2d = np.asarray(vqgan.space_to_depth(jnp.asarray(x), factor))
  np.testing.assert_array_equal(s2d, _np_space_to_depth(x, factor))
  np.testing.assert_array_equal(vqgan.depth_to_space(jnp.asarray(s2d), factor), x)
  y = rng.normal(size=(shape[0], 3, 2, factor * factor * shape[3])).astype(np.float32)
  np.testing.assert_array_equal(
      vqgan.space_to_depth(vqgan.depth_to_space(jnp.asarray(y), factor), factor), y)


# --------------------------------------- 6. reconstruction and PSNR, jit or not


class TestReconstructionLossesWithAndWithoutJit(chex.TestCase):
  """losses.reconstruction (L1, L2 over the weight-1 examples) and losses.psnr
  hold their NumPy formulas traced by jit and run eagerly."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_reconstruction_losses_and_psnr_match_numpy(self):
    rng = np.random.default_rng(13)
    x = rng.uniform(-1, 1, (4, 6, 5, 3)).astype(np.float32)
    x_hat = np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1).astype(np.float32)
    weight = np.array([1, 0, 1, 1], np.float32)
    x_hat[1] = -x[1]  # a padding example, far off: it must not count
    keep = weight > 0
    diff = x.astype(np.float64) - x_hat
    reconstruction = self.variant(losses.reconstruction, static_argnames="kind")
    l1, l2 = (reconstruction(x, x_hat, weight, kind=kind) for kind in ("l1", "l2"))
    chex.assert_shape([l1, l2], ())
    chex.assert_trees_all_close((l1, l2), (np.abs(diff[keep]).mean(), (diff[keep] ** 2).mean()),
                                rtol=1e-5)
    psnr = self.variant(losses.psnr)
    mse = ((diff / 2) ** 2).reshape(4, -1).mean(-1)
    got = psnr(x, x_hat)
    chex.assert_shape(got, (4,))
    chex.assert_trees_all_close(got, -10 * np.log10(mse), rtol=1e-5)
    # A perfect reconstruction: the cap, 100 dB, not infinity.
    chex.assert_trees_all_close(psnr(x, x), np.full(4, 100.0), rtol=1e-6)
    # Images without the batch axis: an error that names the ranks, at the entry.
    with self.assertRaisesRegex(AssertionError, "assert_rank"):
      psnr(x[0], x_hat[0])
