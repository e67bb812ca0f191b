"""A method is one module: a toy method defined here, in a few lines, goes
through the core unchanged (train loop, checkpoints and exact resume, the
evaluators, --mode=eval, export and the inference bundle), and the core,
the evaluators, export and inference import no method's code."""

import ast
import json
import os
import subprocess
import sys
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import PIL.Image
import pytest

from sgc_jax import config_lib, main, methods
from sgc_jax.bundle import inference
from sgc_jax.core import loop, optim
from sgc_jax.core.method import Method, Prediction, Units
from sgc_jax.modes import eval_checkpoint, export, train
from test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 4


# ------------------------------------------------------------------ the toy method


class ToyNet(nn.Module):
  """Patches -> [g, g] tokens, each the nearest of K prototypes -> patches."""
  num_units: int
  dim: int
  patch: int

  def setup(self):
    p = (self.patch, self.patch)
    self.encoder = nn.Conv(self.dim, p, strides=p, padding="VALID")
    self.prototypes = self.param("prototypes", nn.initializers.normal(0.5),
                                 (self.num_units, self.dim))
    self.decoder = nn.ConvTranspose(3, p, strides=p, padding="VALID")

  def encode(self, images):
    z = self.encoder(images)
    distances = jnp.sum((z[..., None, :] - self.prototypes) ** 2, -1)
    return z, jnp.argmin(distances, -1).astype(jnp.int32)

  def decode(self, indices):
    return self.decoder(self.prototypes[indices])

  def __call__(self, images):  # straight-through VQ
    z, indices = self.encode(images)
    q = self.prototypes[indices]
    return self.decoder(z + jax.lax.stop_gradient(q - z)), z, q


@flax.struct.dataclass
class ToyState:
  step: jax.Array
  params: Any
  opt_state: Any
  key: jax.Array


class ToyMethod(Method):
  name = "toy"
  state_fields = ("toy",)
  progress = {"loss": "loss/total"}

  def __init__(self, config, mesh, class_names=()):
    super().__init__(config, mesh)
    self.class_names = tuple(class_names)
    self.net = _net(config.toy.to_dict())
    self.tx = optim.create(config.optimizer, config.optimizer.learning_rate, config.total_steps)

  @classmethod
  def build(cls, config, mesh, dataset):
    return cls(config, mesh, dataset.class_names)

  @classmethod
  def validate(cls, config):
    if config.data.image_size % config.toy.patch:
      raise config_lib.ConfigError(f"config.toy.patch={config.toy.patch} does not divide "
                                   f"config.data.image_size={config.data.image_size}")

  def init(self, key):
    k_params, k_state = jax.random.split(key)
    size = self.config.data.image_size
    params = self.net.init(k_params, jnp.zeros((1, size, size, 3)))["params"]
    return ToyState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=self.tx.init(params), key=k_state)

  def train_step(self, state, batch, phase):
    x = self.constrain(batch["image"][:, 0], ("batch", "height", "width", "channels"))
    weight = batch["mask"].astype(jnp.float32)
    mean = lambda per_example: jnp.sum(per_example * weight) / jnp.maximum(weight.sum(), 1.0)

    def loss(params):
      x_hat, z, q = self.net.apply({"params": params}, x)
      terms = {"reconstruction": mean(jnp.abs(x - x_hat).mean((1, 2, 3))),
               "commitment": self.config.toy.beta * mean(
                   ((z - jax.lax.stop_gradient(q)) ** 2).mean((1, 2, 3))),
               "codebook": mean(((jax.lax.stop_gradient(z) - q) ** 2).mean((1, 2, 3)))}
      return sum(terms.values()), terms

    grads, terms = jax.grad(loss, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    metrics = {f"loss/{k}": v for k, v in terms.items()}
    metrics["loss/total"] = sum(terms.values())
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state, key=jax.random.split(state.key)[0]), metrics

  def eval_variables(self, state):
    return {"params": state.params}

  def predict(self, variables, images):
    z, indices = self.net.apply(variables, images, method=ToyNet.encode)
    return Prediction(indices, features=z,
                      reconstruction=self.net.apply(variables, indices, method=ToyNet.decode))

  def units(self, variables):
    return Units(np.asarray(jax.device_get(variables["params"]["prototypes"])))

  def export_functions(self):
    return _functions(self.net, self.config.toy.to_dict(), self.config.data.image_size)

  def bundle_fields(self):
    return {"toy": dict(self.config.toy.to_dict(), image_size=self.config.data.image_size)}

  @classmethod
  def functions_from_bundle(cls, description):
    fields = dict(description["toy"])
    size = fields.pop("image_size")
    net = _net(fields)
    abstract = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    return {n: fn for n, (fn, _) in _functions(net, fields, size).items()}, abstract


def _net(fields: dict) -> ToyNet:
  return ToyNet(fields["num_units"], fields["dim"], fields["patch"])


def _functions(net: ToyNet, fields: dict, size: int):
  """tokens: images -> unit ids; render: unit ids -> images (batch symbolic)."""
  b, = jax.export.symbolic_shape("b")
  grid = size // fields["patch"]
  return {
      "tokens": (lambda v, x: net.apply(v, x, method=ToyNet.encode)[1],
                 jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32)),
      "render": (lambda v, i: net.apply(v, i, method=ToyNet.decode),
                 jax.ShapeDtypeStruct((b, grid, grid), jnp.int32))}


# ------------------------------------------------------------------ config and runs


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
  methods.register("toy", ToyMethod)
  yield
  methods._REGISTRY.pop("toy", None)


def toy_config(data_dir, with_evals=True, total_steps=TOTAL_STEPS):
  config = tiny_config(data_dir, total_steps=total_steps)
  config.method = "toy"
  config.data.image_size = 64
  config.data.num_views = 1
  config.toy = ml_collections.ConfigDict(dict(num_units=16, dim=8, patch=16, beta=0.25))
  # A constant rate after the warm-up: a run to N/2 steps and one to N take the same first steps.
  config.optimizer.update(dict(learning_rate=1e-2, warmup_steps=1, final_lr_fraction=1.0))
  config.checkpoint.update(dict(every=TOTAL_STEPS // 2, keep=5))
  if with_evals:
    for name in ("reconstruction", "codebook", "segmentation"):
      config.evals[name].every = 2
    config.evals.segmentation.update(dict(probe_images=16, probe_steps=20))
    config.evals.pictures.update(dict(every=2, num_examples=2))
  else:
    config.evals = ml_collections.ConfigDict()
  return config


@pytest.fixture(scope="module")
def toy_run(data_dir, scenes64, tmp_path_factory):
  """(config, workdir, metrics, initial state) of a 4-step toy run, checkpoints at 2 and 4."""
  config = toy_config(data_dir)
  main.validate(config)
  assert main.validate_method(config, scenes64) is ToyMethod
  workdir = str(tmp_path_factory.mktemp("toy"))
  metrics = train.train_and_evaluate(config, workdir)
  initial = train.build_method(config, scenes64).create_train_state(config.seed)
  return config, workdir, metrics, initial


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


# ------------------------------------------------------------------ tests


def test_the_core_loop_trains_and_evaluates_the_toy(toy_run):
  config, workdir, metrics, initial = toy_run
  assert metrics["step"] == TOTAL_STEPS and metrics["last_checkpoint"] == TOTAL_STEPS
  assert {2, 4} <= {int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                    if s.isdigit()}
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [l for l in lines if "loss/total" in l]
  assert [l["step"] for l in train_lines] == [1, 2, 3, 4]
  for line in train_lines:
    assert {"loss/reconstruction", "loss/commitment", "loss/codebook"} <= set(line)
  first, last = train_lines[0], train_lines[-1]
  print(f"\ntoy L1 {first['loss/reconstruction']:.4f} -> {last['loss/reconstruction']:.4f}, "
        f"total {first['loss/total']:.4f} -> {last['loss/total']:.4f}")
  assert last["loss/reconstruction"] < first["loss/reconstruction"]
  # The evaluators ran at steps 2 and 4, on the toy's predictions and units.
  val_lines = [l for l in lines if "val/psnr" in l]
  assert [l["step"] for l in val_lines] == [2, 4]
  for key in ("psnr", "ssim", "l1", "codebook_usage", "perplexity", "code_purity",
              "hungarian_miou"):
    assert np.isfinite(val_lines[-1][f"val/{key}"]), key
  assert val_lines[-1]["val/images"] == 128
  assert 0 < val_lines[-1]["val/codebook_usage"] <= 1
  assert metrics["val/psnr"] == val_lines[-1]["val/psnr"]
  for step in (2, 4):
    path = os.path.join(workdir, "images", f"reconstructions_{step:07d}.png")
    assert min(PIL.Image.open(path).size) >= 64
  # Every parameter leaf of the last checkpoint moved.
  _, _, state, step = train.restore_latest(config, workdir)
  assert step == TOTAL_STEPS and int(state.step) == TOTAL_STEPS
  for before, after in zip(_leaves(initial.params), _leaves(state.params)):
    assert np.abs(after - before).max() > 1e-5


def test_a_resumed_toy_run_equals_a_straight_one(toy_run, tmp_path):
  config, straight, _, _ = toy_run
  resumed = str(tmp_path / "resumed")
  half = toy_config(config.data.data_dir, with_evals=False, total_steps=TOTAL_STEPS // 2)
  assert train.train_and_evaluate(half, resumed)["step"] == TOTAL_STEPS // 2
  metrics = train.train_and_evaluate(toy_config(config.data.data_dir, with_evals=False),
                                     resumed)
  assert metrics["step"] == TOTAL_STEPS
  _, _, state_a, step_a = loop.restore_latest(ToyMethod, config, straight)
  _, _, state_b, step_b = loop.restore_latest(ToyMethod, config, resumed)
  assert step_a == step_b == TOTAL_STEPS
  leaves_a, leaves_b = _leaves(state_a), _leaves(state_b)
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)


def test_eval_mode_evaluates_the_toy(toy_run):
  config, workdir, metrics, _ = toy_run
  results = eval_checkpoint.evaluate_checkpoint(config, workdir)
  saved = json.load(open(os.path.join(workdir, "eval", "eval.json")))
  assert saved["method"] == results["method"] == "toy"
  assert saved["step"] == TOTAL_STEPS and saved["images"] == 128
  assert saved["psnr"] == pytest.approx(metrics["val/psnr"], abs=1e-4)
  assert saved["token_purity"] is None and saved["zero_shot_miou"] is None  # units w/o class
  assert 0 < saved["probe_miou"] <= 1 and 0 < saved["hungarian_miou"] <= 1
  # Its dense features (the encoder's z) through k-means + Hungarian and a probe.
  for key in ("feature_hungarian_miou", "feature_hungarian_pixel_accuracy",
              "feature_probe_miou", "feature_probe_pixel_accuracy"):
    assert 0 < saved[key] <= 1, key
  # In training (no probes due) the feature metrics are not computed.
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l.get("val/feature_probe_miou") for l in lines if "val/psnr" in l] == [None, None]
  for name in ("reconstructions", "codebook_usage", "codes_pca"):
    assert os.path.exists(os.path.join(workdir, "eval", f"{name}.png")), name


def test_pseudo_labels_of_a_method_that_does_not_segment_are_a_config_error(toy_run):
  from sgc_jax.modes import pseudo_labels
  config, workdir, _, _ = toy_run
  with pytest.raises(config_lib.ConfigError, match="config.method=.toy.: the method does not "
                     "segment images, so it makes no pseudo-labels"):
    pseudo_labels.write_pseudo_labels(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "pseudo_labels"))


def test_the_toy_exports_a_bundle_that_runs_like_the_method(toy_run, scenes64):
  config, workdir, _, _ = toy_run
  bundle = export.export_checkpoint(config, workdir, os.path.join(workdir, "toy_bundle"))
  description = json.load(open(os.path.join(bundle, "model.json")))
  assert description["method"] == "toy" and description["step"] == TOTAL_STEPS
  assert description["functions"] == ["tokens", "render"]
  _, method, state, _ = train.restore_latest(config, workdir)
  variables = method.eval_variables(state)
  images = np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  functions = {name: jax.jit(fn) for name, (fn, _) in method.export_functions().items()}
  tokens = np.asarray(functions["tokens"](variables, images))
  rendered = np.asarray(functions["render"](variables, tokens))
  assert tokens.shape == (3, 4, 4) and rendered.shape == (3, 64, 64, 3)
  np.testing.assert_array_equal(tokens, np.asarray(method.predict(variables, images).indices))
  for use_model_code in (False, True):
    loaded = inference.load(bundle, use_model_code=use_model_code)
    assert loaded.method == "toy" and sorted(loaded.functions) == ["render", "tokens"]
    np.testing.assert_array_equal(loaded.call("tokens", images), tokens)
    np.testing.assert_allclose(loaded.call("render", tokens), rendered, atol=1e-6)
    np.testing.assert_array_equal(loaded.call("tokens", images[:1]), tokens[:1])  # batch b


# ------------------------------------------------------------------ the core imports no method


def _imports(path: str) -> set[str]:
  """Modules a file imports (anywhere in it): `from a import b` gives a and a.b."""
  package = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".")
  names = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def _python_files(directory: str) -> list[str]:
  directory = os.path.join(ROOT, directory)
  return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".py"))


def test_the_core_evaluators_export_and_inference_import_no_method():
  core = _python_files("sgc_jax/core")
  assert len(core) >= 5
  for path in core:
    bad = {m for m in _imports(path) if m == "sgc_jax.methods" or
           m.startswith("sgc_jax.methods.")}
    assert not bad, (path, bad)
  models = ("sgc_jax.models.vqgan", "sgc_jax.methods.sgc_vqgan")
  generic = _python_files("sgc_jax/evaluators") + [
      os.path.join(ROOT, "sgc_jax", name) for name in ("modes/export.py", "bundle/inference.py")]
  for path in generic:
    bad = {m for m in _imports(path) if m.startswith(models)}
    assert not bad, (path, bad)
  # Nor through what they import.
  script = ("import sys\n"
            "import sgc_jax.core.loop, sgc_jax.modes.export, sgc_jax.bundle.inference, sgc_jax.modes.train\n"
            "import sgc_jax.modes.eval_checkpoint\n"
            "import sgc_jax.evaluators.reconstruction, sgc_jax.evaluators.codebook\n"
            "import sgc_jax.evaluators.segmentation, sgc_jax.evaluators.pictures\n"
            f"print(sorted(m for m in sys.modules if m.startswith({models!r})))\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "[]"
