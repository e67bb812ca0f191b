"""ACSeg: the modularity loss against a direct NumPy Newman modularity, its
memory (one image's N x N at a time), the concept generator's invariances,
and the method through the core over a frozen library backbone (SlotCon's, from
a bundle): the backbone never moves and has no optimizer state, 1 and 8 devices
agree, the concept classifier, evaluation, export and pseudo-labels."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.bundle import inference
from sgc_jax.config_lib import ConfigError
from sgc_jax.configs import acseg_scenes
from sgc_jax.core import loop
from sgc_jax.methods import acseg, slotcon
from sgc_jax.models import acseg as parts
from sgc_jax.modes import eval_checkpoint, export, pseudo_labels, train
from sgc_jax.ops.kmeans import kmeans_centres, unit_rows
from sgc_jax.runtime import sharding

from test_slotcon_method import shrink, tiny_slotcon_config, train_batches


def numpy_modularity(features, assignment):
  """Q = (1/2m) Σ_ij (A_ij − k_i k_j / 2m) δ_ij with δ = S Sᵀ formed in full."""
  unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
  a = np.maximum(unit @ unit.T, 0.0)
  k = a.sum(1)
  two_m = a.sum()
  delta = assignment @ assignment.T
  return float(np.sum((a - np.outer(k, k) / two_m) * delta) / two_m)


def newman_modularity(a, communities):
  """Newman's Q of a weighted graph and a hard partition: Σ_c [e_cc − a_c²]."""
  two_m = a.sum()
  k = a.sum(1)
  q = 0.0
  for c in np.unique(communities):
    members = communities == c
    q += a[np.ix_(members, members)].sum() / two_m - (k[members].sum() / two_m) ** 2
  return q


def test_modularity_matches_numpy_soft_and_hard():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(3, 12, 6)).astype(np.float32)
  soft = jax.nn.softmax(rng.normal(size=(3, 12, 4)) * 2, -1)
  loss = float(parts.modularity_loss(jnp.asarray(features), soft))
  want = -np.mean([numpy_modularity(f, np.asarray(s, np.float64)) for f, s in zip(features, soft)])
  assert loss == pytest.approx(want, rel=1e-5, abs=1e-6)
  # Centred: the same on the features minus each image's mean.
  loss = float(parts.modularity_loss(jnp.asarray(features), soft, centre=True))
  centred = features - features.mean(1, keepdims=True)
  want = -np.mean([numpy_modularity(f, np.asarray(s, np.float64)) for f, s in zip(centred, soft)])
  assert loss == pytest.approx(want, rel=1e-5, abs=1e-6)
  # The hard limit is Newman's modularity of the affinity graph.
  hard = rng.integers(0, 4, size=(3, 12))
  loss = float(parts.modularity_loss(jnp.asarray(features), jax.nn.one_hot(hard, 4)))
  unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
  graphs = np.maximum(np.einsum("bnd,bmd->bnm", unit, unit), 0)
  want = -np.mean([newman_modularity(a, c) for a, c in zip(graphs, hard)])
  assert loss == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_two_disconnected_groups_have_modularity_one_half():
  """Two orthogonal groups of identical features (A: two blocks of ones): Q =
  2 (1/2 − 1/4) = 1/2 for the true split, 0 for everything in one concept,
  2 ((3² + 2²)/50 − 1/4) = 0.02 for concepts holding 3 + 2 of the groups' 5."""
  features = np.concatenate([np.tile([1.0, 0.0], (5, 1)), np.tile([0.0, 1.0], (5, 1))])[None]
  split = jax.nn.one_hot(np.repeat([0, 1], 5), 2)[None]
  assert float(parts.modularity_loss(jnp.asarray(features), split)) == pytest.approx(-0.5)
  together = jax.nn.one_hot(np.zeros(10, int), 2)[None]
  assert float(parts.modularity_loss(jnp.asarray(features), together)) == pytest.approx(0.0,
                                                                                      abs=1e-6)
  mixed = jax.nn.one_hot(np.tile([0, 1], 5), 2)[None]
  assert float(parts.modularity_loss(jnp.asarray(features), mixed)) == pytest.approx(-0.02)


def test_gradient_equals_the_direct_formula():
  rng = np.random.default_rng(1)
  features = jnp.asarray(rng.normal(size=(2, 9, 5)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(2, 9, 3)), jnp.float32)

  def direct(lg):
    s = jax.nn.softmax(lg, -1)
    a = jax.vmap(parts.affinity)(features)
    k = a.sum(-1)
    two_m = a.sum((1, 2))
    delta = jnp.einsum("bnc,bmc->bnm", s, s)
    b = a - k[:, :, None] * k[:, None, :] / two_m[:, None, None]
    return -jnp.mean(jnp.sum(b * delta, (1, 2)) / two_m)

  got = jax.grad(lambda lg: parts.modularity_loss(features, jax.nn.softmax(lg, -1)))(logits)
  np.testing.assert_allclose(np.asarray(got), np.asarray(jax.grad(direct)(logits)),
                             rtol=1e-4, atol=1e-6)


def test_loss_and_gradient_hold_one_image_affinity_at_a_time():
  """XLA's temporary buffers of the loss and its gradient over 8 images of
  N = 1024 tokens stay under 3 N x N floats (8 would be 8 of them)."""
  batch, n, dim, concepts = 8, 1024, 32, 5
  features = jax.ShapeDtypeStruct((batch, n, dim), jnp.float32)
  logits = jax.ShapeDtypeStruct((batch, n, concepts), jnp.float32)
  fn = jax.jit(jax.value_and_grad(
      lambda lg, f: parts.modularity_loss(f, jax.nn.softmax(lg, -1))))
  analysis = fn.lower(logits, features).compile().memory_analysis()
  one_image = n * n * 4
  assert analysis.temp_size_in_bytes < 3 * one_image, analysis.temp_size_in_bytes


def test_concepts_adapt_to_the_image_and_ignore_pixel_order():
  rng = np.random.default_rng(2)
  generator = parts.ConceptGenerator(num_prototypes=5, num_blocks=2, num_heads=4)
  pixels = jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32)
  params = generator.init(jax.random.PRNGKey(0), pixels)
  concepts = generator.apply(params, pixels)
  assert concepts.shape == (2, 5, 32)
  assert not np.allclose(concepts[0], concepts[1], atol=1e-3)  # per image
  shuffled = generator.apply(params, pixels[:, rng.permutation(16)])
  np.testing.assert_allclose(np.asarray(shuffled), np.asarray(concepts), rtol=1e-5, atol=1e-5)


class _PixelsAsFeatures:
  """A backbone whose features are its input: known features for the net."""

  def features(self, variables, images):
    del variables
    return images


@pytest.mark.parametrize("classifier_input", ["concepts", "regions"])
def test_each_token_takes_the_cluster_of_its_concepts_vector(classifier_input):
  rng = np.random.default_rng(4)
  images = jnp.asarray(rng.normal(size=(2, 4, 4, 6)), jnp.float32)
  generator = parts.ConceptGenerator(num_prototypes=3, num_blocks=1, num_heads=2)
  net = acseg.ACSegNet(_PixelsAsFeatures(), generator, 0.1, classifier_input)
  params = generator.init(jax.random.PRNGKey(0), images.reshape(2, 16, 6))["params"]
  centres = rng.normal(size=(4, 6))
  mean = rng.normal(size=6)
  variables = {"backbone": None, "generator": params,
               "classifier": {"centres": jnp.asarray(centres / np.linalg.norm(
                   centres, axis=1, keepdims=True), jnp.float32),
                              "mean": jnp.asarray(mean, jnp.float32)}}
  _, concepts, logits = net.concepts(variables, images)
  winner = np.asarray(jnp.argmax(logits, -1)).reshape(2, 16)
  tokens = np.asarray(images).reshape(2, 16, 6)
  _, _, vectors, shares = net.classified(variables, images)
  for b in range(2):
    for p in range(3):
      won = winner[b] == p
      assert float(shares[b, p]) == pytest.approx(won.mean())
      want = (np.asarray(concepts[b, p]) if classifier_input == "concepts"
              else tokens[b][won].mean(0) if won.any() else np.zeros(6))
      np.testing.assert_allclose(np.asarray(vectors[b, p]), want, rtol=1e-5, atol=1e-6)
  # A concept's cluster: the nearest centre (cosine) to its vector less the mean.
  concept_cluster = np.argmax((np.asarray(vectors) - mean) @ centres.T
                              / np.linalg.norm(centres, axis=1), -1)
  _, token_cluster, _, got = net.clusters(variables, images)
  np.testing.assert_array_equal(np.asarray(got), concept_cluster)
  np.testing.assert_array_equal(np.asarray(token_cluster).reshape(2, 16),
                                np.take_along_axis(concept_cluster, winner, 1))


def test_the_classifier_weights_concepts_by_share_and_drops_those_that_win_nothing():
  """40 large concepts in two nearby modes (a sky, share 0.5 each) and 4 tiny
  ones in another direction (a ball, share 0.01), 2 clusters: weighted by share,
  k-means splits the sky and merges the ball into it, where an unweighted
  k-means would give the ball a cluster of its own. Concepts that win no pixel
  do not count (6 of them, in a direction of their own)."""
  rng = np.random.default_rng(5)
  sky = np.concatenate([np.tile([1.0, 0.3, 0.0], (20, 1)), np.tile([1.0, -0.3, 0.0], (20, 1))])
  ball = np.tile([0.0, 0.0, 1.0], (4, 1))
  lost = np.tile([0.0, -1.0, 0.0], (6, 1))
  vectors = np.concatenate([sky, ball, lost]) + rng.normal(scale=0.01, size=(50, 3))
  shares = np.concatenate([np.full(40, 0.5), np.full(4, 0.01), np.zeros(6)])
  ball_direction = np.array([0.0, 0.0, 1.0])
  mean, centres = acseg.fit_classifier(vectors, shares, 2, False, 0, 10)
  np.testing.assert_array_equal(mean, 0)
  np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1, rtol=1e-6)
  assert np.max(centres @ ball_direction) < 0.5, centres
  unweighted = unit_rows(kmeans_centres(unit_rows(vectors[:44]), 2, seed=0, restarts=10))
  assert np.max(unweighted @ ball_direction) > 0.99, unweighted
  # Centring subtracts the share-weighted mean of the winners.
  mean, centres = acseg.fit_classifier(vectors, shares, 3, True, 0, 2)
  np.testing.assert_allclose(mean, shares[:44] @ vectors[:44] / shares[:44].sum(), rtol=1e-5)
  want = kmeans_centres(unit_rows(vectors[:44] - mean), 3, weights=shares[:44], seed=0,
                        restarts=2)
  np.testing.assert_allclose(centres, unit_rows(want), rtol=1e-6)
  # Fewer winning concepts than clusters: zero rows pad the centres.
  _, centres = acseg.fit_classifier(vectors[:2], shares[:2], 4, False, 0, 1)
  assert centres.shape == (4, 3) and not centres[2:].any()


# ---------------------------------------------------------------- the method


@pytest.fixture(scope="module")
def slotcon_bundle(data_dir, scenes64, tmp_path_factory):
  """An (untrained) SlotCon teacher exported as a bundle: a library backbone."""
  config = tiny_slotcon_config(data_dir)
  method = slotcon.SlotConMethod(config, sharding.create_mesh(devices=jax.devices()[:1]),
                                 scenes64.class_names)
  state = method.create_train_state(0)
  directory = str(tmp_path_factory.mktemp("slotcon") / "bundle")
  return export.write_bundle(directory, method, method.eval_variables(state), {"step": 0})


def tiny_acseg_config(data_dir, bundle, **overrides):
  config = shrink(acseg_scenes.get_config("size=32,steps=4"), data_dir)
  config.model.backbone.weights = bundle
  config.model.update(dict(num_blocks=2, classifier_images=16))
  config.update(overrides)
  return config


def _run(config, mesh, dataset, steps):
  method = acseg.ACSegMethod(config, mesh, dataset.class_names)
  state = method.initial_state(method.create_train_state(config.seed))
  batches = train_batches(config, mesh, dataset)
  step, history = None, []
  for _ in range(steps):
    batch = next(batches)
    step = step or method.jit_train_step(None, batch)
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  return method, state, history


def test_backbone_frozen_and_one_and_eight_devices_agree(data_dir, scenes64, slotcon_bundle):
  config = tiny_acseg_config(data_dir, slotcon_bundle)
  one = sharding.create_mesh(devices=jax.devices()[:1])
  method, state_1, history_1 = _run(config, one, scenes64, 2)
  _, state_8, history_8 = _run(config, sharding.create_mesh(), scenes64, 2)
  for m1, m8 in zip(history_1, history_8):
    assert np.isfinite(m1["loss/total"])
    assert float(m8["loss/total"]) == pytest.approx(float(m1["loss/total"]), rel=1e-4, abs=1e-6)
  for a, b in zip(jax.tree.leaves(state_1.params), jax.tree.leaves(state_8.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # The backbone is the bundle's, bit for bit, after steps that moved the generator.
  weights = inference.load(slotcon_bundle).variables
  for got, want in zip(jax.tree.leaves(state_1.backbone), jax.tree.leaves(weights)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  initial = method.create_train_state(config.seed)
  # Every generator leaf moved but the attention keys' biases (a softmax
  # ignores a shift common to a query's logits: their gradient is zero).
  still = [jax.tree_util.keystr(path, simple=True, separator="/")
           for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(initial.params)[0],
                                   jax.tree.leaves(state_1.params)) if np.allclose(a, b)]
  assert still and all(name.endswith("key/bias") for name in still), still
  # No optimizer state for the backbone: Adam's moments are the generator's size.
  size = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))
  assert size(state_1.opt_state) < 2 * size(state_1.params) + 16


def test_trains_evaluates_exports_and_pseudo_labels_through_the_core(data_dir, scenes64,
                                                                     slotcon_bundle, tmp_path):
  config = tiny_acseg_config(data_dir, slotcon_bundle)
  # The classifier's non-default input (the unit test above covers both), and
  # centring (the scenes recipe's), which the baseline's k-means shares.
  config.model.classifier_input = "regions"
  assert config.model.classifier_centring and config.evals.segmentation.feature_centring
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 4 and np.isfinite(metrics["loss/total"])
  assert 0 < metrics["val/hungarian_miou"] <= 1
  results = eval_checkpoint.evaluate_checkpoint(config, workdir)
  for key in ("hungarian_miou", "hungarian_pixel_accuracy", "feature_hungarian_miou"):
    assert 0 < results[key] <= 1, key
  dataset, method, state, _ = loop.restore_latest(acseg.ACSegMethod, config, workdir)
  variables = loop.prediction_variables(method, state, dataset, config)
  centres = np.asarray(variables["classifier"]["centres"])
  assert centres.shape == (len(scenes64.class_names), 512)
  np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1, rtol=1e-5)
  mean = np.asarray(variables["classifier"]["mean"])
  assert mean.shape == (512,) and np.all(mean >= 0) and mean.max() > 0  # of ReLU features
  images = np.stack([example["image"][0] for example in _centred(scenes64, config)])
  predictions = jax.jit(method.predict)(variables, images)
  # A token's cluster is the nearest centre (cosine) to its winning concept's
  # region mean less the fitted mean.
  _, logits, vectors, _ = method.net.classified(variables, images)
  winner = np.asarray(jnp.argmax(logits, -1))
  concept_cluster = np.argmax((np.asarray(vectors) - mean) @ centres.T, -1)
  want = np.take_along_axis(concept_cluster[:, None, :],
                            winner.reshape(len(images), 1, -1), -1).reshape(winner.shape)
  np.testing.assert_array_equal(np.asarray(predictions.indices), want)

  bundle = export.export_checkpoint(config, workdir)
  description = json.load(open(os.path.join(bundle, "model.json")))
  assert description["method"] == "acseg"
  assert description["functions"] == ["features", "concepts", "segment"]
  for use_model_code in (False, True):
    loaded = inference.load(bundle, use_model_code=use_model_code)
    segments = loaded.call("segment", images)
    np.testing.assert_array_equal(segments, np.asarray(jax.jit(method.segment)(variables,
                                                                               images)))
    assert segments.shape == (len(images), 32, 32) and segments.max() < len(centres)
  # A bundle exported before the classifier's inputs were a choice (no mean
  # stored) loads as concepts, not centred.
  del description["acseg"]["classifier_input"], description["acseg"]["classifier_centring"]
  functions, abstract = acseg.ACSegMethod.functions_from_bundle(description)
  assert set(abstract["classifier"]) == {"centres"}
  before = {**variables, "classifier": {"centres": variables["classifier"]["centres"]}}
  _, concepts, logits = method.net.concepts(variables, images)
  concept_cluster = np.argmax(np.asarray(parts.l2_normalize(concepts)) @ centres.T, -1)
  pixel_winner = np.asarray(jnp.argmax(jax.image.resize(
      logits, (len(images), 32, 32, logits.shape[-1]), "bilinear"), -1))
  want = np.take_along_axis(concept_cluster[:, None, :],
                            pixel_winner.reshape(len(images), 1, -1), -1)
  np.testing.assert_array_equal(np.asarray(jax.jit(functions["segment"])(before, images)),
                                want.reshape(pixel_winner.shape))

  folder = pseudo_labels.write_pseudo_labels(config, workdir)
  names = open(os.path.join(folder, "classes.txt")).read().split()
  assert names == [f"cluster_{k}" for k in range(len(centres))]
  from sgc_jax.data import sources
  from sgc_jax.data import folder as folder_lib
  prepared = sources.open_dataset("folder:" + folder_lib.prepare(folder, data_dir), data_dir)
  for split, original in (("train", "train"), ("validation", "validation")):
    assert len(prepared.split(split)) == len(scenes64.split(original))
  # The folder holds the views the method segmented (TFDS stores them in its
  # own order), each with the label map of that segmentation.
  view = _centred(scenes64, config, split="validation")[0]["image"]
  pixels = pseudo_labels._to_uint8(view, "imagenet")[0]
  validation = prepared.split("validation")
  record = next(validation[i] for i in range(len(validation))
                if np.array_equal(validation[i]["image"], pixels))
  np.testing.assert_array_equal(record["segmentation"],
                                np.asarray(jax.jit(method.segment)(variables, view))[0])


def _centred(dataset, config, split="train"):
  from sgc_jax.data import pipeline
  return pipeline.centred_examples(dataset.split(split), 4, config.data.image_size,
                                   "imagenet")


def test_config_errors_name_the_field(data_dir, scenes64, slotcon_bundle):
  from sgc_jax import main as main_lib
  config = tiny_acseg_config(data_dir, slotcon_bundle)
  config.data.normalization = "symmetric"
  with pytest.raises(ConfigError, match=r"config.data.normalization='symmetric': the backbone "
                     r"\(bundle\) was trained on 'imagenet' inputs"):
    acseg.ACSegMethod.validate_data(config, scenes64)
  config = tiny_acseg_config(data_dir, slotcon_bundle)
  config.model.num_heads = 7
  with pytest.raises(ConfigError, match=r"config.model.num_heads=7: must divide the "
                     r"backbone's feature dimension 512"):
    acseg.ACSegMethod.validate_data(config, scenes64)
  config = tiny_acseg_config(data_dir, str(data_dir))
  with pytest.raises(ConfigError, match=r"config.model.backbone.weights: .*not an sgc_jax "
                     r"bundle"):
    main_lib.validate_method(config, scenes64)
  config = tiny_acseg_config(data_dir, None)
  with pytest.raises(ConfigError, match=r"config.model.backbone.weights: kind 'bundle' needs"):
    main_lib.validate_method(config)


def test_an_eval_frame_is_checked_before_training_though_fit_makes_the_classifier(
    data_dir, scenes64, slotcon_bundle, tmp_path):
  config = tiny_acseg_config(data_dir, slotcon_bundle, total_steps=2)
  config.data.eval_frame = (20, 32)  # the backbone's 8-pixel tokens do not tile 20 rows
  with pytest.raises(ConfigError, match=r"config.data.eval_frame=\(20, 32\): "):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_over_a_dino_vit(data_dir, scenes64, tmp_path):
  """kind=dino: a (random) ViT-S/16 backbone trains the generator on its 384-d
  tokens; a DINO file of another architecture is a one-line config error."""
  from test_vit_dino import dino_state_dict, write_pth
  config = tiny_acseg_config(data_dir, None)
  config.model.backbone.update(dict(kind="dino", arch="vit_small", patch_size=16))
  config.model.num_blocks = 1
  acseg.ACSegMethod.validate_data(config, scenes64)
  method, state, history = _run(config, sharding.create_mesh(devices=jax.devices()[:1]),
                                scenes64, 1)
  assert np.isfinite(history[0]["loss/total"])
  assert state.params["prototypes"].shape == (5, 384)
  assert "pos_embed" in state.backbone["params"]
  path = str(tmp_path / "dino.pth")
  write_pth(path, dino_state_dict())  # embed 32, patch 8: no DINO release
  config.model.backbone.weights = path
  with pytest.raises(ConfigError, match=r"config.model.backbone.weights: .*dino.pth: a ViT 32 "
                     r"wide and 2 deep, no DINO architecture"):
    acseg.ACSegMethod.validate_data(config, scenes64)
