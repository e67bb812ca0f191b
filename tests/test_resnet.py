"""ResNet backbone and its torchvision importer: a NumPy reference forward from
state dicts under torchvision's names, parameter counts, strides and
dilation, BatchNorm train mode and global statistics over a sharded batch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import torch_reference as ref
from sgc_jax.convert import torch_file
from sgc_jax.convert import resnet as convert_lib
from sgc_jax.models import resnet

# Independent of the model code: torchvision's resnetN (block, blocks per layer).
LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}


def _blocks(depth, dilate=(False, False, False)):
  """(name, kind, in, planes, stride, dilation, downsample) in torchvision's order."""
  kind, layers = LAYOUTS[depth]
  expansion = 1 if kind == "basic" else 4
  out, inplanes, dilation = [], 64, 1
  for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
    stride, previous = (1 if i == 0 else 2), dilation
    if i and dilate[i - 1]:
      dilation, stride = dilation * stride, 1
    for j in range(n):
      down = j == 0 and (stride != 1 or inplanes != planes * expansion)
      out.append((f"layer{i + 1}.{j}", kind, inplanes, planes, stride if j == 0 else 1,
                  previous if j == 0 else dilation, down))
      inplanes = planes * expansion
  return out


def torchvision_state_dict(depth, seed=0, prefix=""):
  """Random tensors under torchvision's names and shapes, with the buffers."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, cin, cout, k):
    sd[f"{prefix}{name}.weight"] = rng.normal(0, np.sqrt(1 / (cin * k * k)),
                                              (cout, cin, k, k)).astype(np.float32)

  def bn(name, c):
    sd[f"{prefix}{name}.weight"] = rng.uniform(0.5, 1.0, c).astype(np.float32)
    sd[f"{prefix}{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f"{prefix}{name}.running_mean"] = rng.normal(0, 0.2, c).astype(np.float32)
    sd[f"{prefix}{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    sd[f"{prefix}{name}.num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1", 3, 64, 7), bn("bn1", 64)
  for name, kind, cin, planes, _, _, down in _blocks(depth):
    if kind == "basic":
      conv(f"{name}.conv1", cin, planes, 3), bn(f"{name}.bn1", planes)
      conv(f"{name}.conv2", planes, planes, 3), bn(f"{name}.bn2", planes)
      width = planes
    else:
      conv(f"{name}.conv1", cin, planes, 1), bn(f"{name}.bn1", planes)
      conv(f"{name}.conv2", planes, planes, 3), bn(f"{name}.bn2", planes)
      conv(f"{name}.conv3", planes, 4 * planes, 1), bn(f"{name}.bn3", 4 * planes)
      width = 4 * planes
    if down:
      conv(f"{name}.downsample.0", cin, width, 1), bn(f"{name}.downsample.1", width)
  sd[f"{prefix}fc.weight"] = np.zeros((1000, 512 if depth == 18 else 2048), np.float32)
  sd[f"{prefix}fc.bias"] = np.zeros(1000, np.float32)
  return sd


class NumpyResNet:
  """torchvision's forward in float64, NCHW; BN from running stats (eval) or
  from the batch with the biased variance (train)."""

  def __init__(self, sd, depth, dilate=(False, False, False), train=False):
    self.sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    self.depth, self.dilate, self.train = depth, dilate, train

  def conv(self, name, x, stride=1, dilation=1):
    w = self.sd[f"{name}.weight"]
    k = w.shape[-1]
    if dilation > 1:
      dilated = np.zeros(w.shape[:2] + ((k - 1) * dilation + 1,) * 2)
      dilated[:, :, ::dilation, ::dilation] = w
      w = dilated
    return ref.conv2d(x, w, stride=stride, padding=(dilation * (k - 1) // 2,) * 4)

  def bn(self, name, x):
    mean, var = self.sd[f"{name}.running_mean"], self.sd[f"{name}.running_var"]
    if self.train:
      mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
    return ref.batch_norm(x, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"], mean, var,
                          eps=1e-5)

  def block(self, spec, x):
    name, kind, _, _, stride, dilation, down = spec
    relu = lambda v: np.maximum(v, 0)
    if kind == "basic":
      out = relu(self.bn(f"{name}.bn1", self.conv(f"{name}.conv1", x, stride, dilation)))
      out = self.bn(f"{name}.bn2", self.conv(f"{name}.conv2", out, 1, dilation))
    else:
      out = relu(self.bn(f"{name}.bn1", self.conv(f"{name}.conv1", x)))
      out = relu(self.bn(f"{name}.bn2", self.conv(f"{name}.conv2", out, stride, dilation)))
      out = self.bn(f"{name}.bn3", self.conv(f"{name}.conv3", out))
    if down:
      x = self.bn(f"{name}.downsample.1", self.conv(f"{name}.downsample.0", x, stride))
    return relu(out + x)

  def stem(self, x):
    x = np.maximum(self.bn("bn1", self.conv("conv1", x, stride=2)), 0)
    return ref.max_pool3(x, stride=2, pad=1)

  def __call__(self, x_nhwc, layers=None):
    x = self.stem(np.asarray(x_nhwc, np.float64).transpose(0, 3, 1, 2))
    for spec in _blocks(self.depth, self.dilate):
      x = self.block(spec, x)
    return x.transpose(0, 2, 3, 1)


def _close(got, want, rtol=1e-4):
  got, want = np.asarray(got, np.float64), np.asarray(want)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def _images(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ------------------------------------------------------------------ forward vs NumPy


def test_resnet18_eval_matches_numpy_reference():
  sd = torchvision_state_dict(18, prefix="module.encoder_k.")
  variables = convert_lib.convert(sd, 18, prefix="module.encoder_k.")
  x = _images((2, 64, 64, 3))
  got = jax.jit(resnet.ResNet(18).apply)(variables, x)
  assert got.shape == (2, 2, 2, 512)
  plain = {k[len("module.encoder_k."):]: v for k, v in sd.items()}
  want = NumpyResNet(plain, 18)(x)
  assert np.abs(want).max() > 0.1
  _close(got, want)


def test_resnet50_bottleneck_stages_match_numpy_reference():
  # The whole ResNet-50 converts; layer2 (4 bottlenecks, stride-2 shortcut) and a
  # dilated layer4 (stride 1, dilation 2 after its first block) run alone.
  sd = torchvision_state_dict(50, seed=1)
  variables = convert_lib.convert(sd, 50)
  numpy_model = NumpyResNet(sd, 50, dilate=(False, False, True))
  specs = _blocks(50, (False, False, True))
  for layer, size in (("layer2", 8), ("layer4", 4)):
    stage = [s for s in specs if s[0].startswith(layer + ".")]
    x = _images((2, size, size, stage[0][2]), seed=2)

    @jax.jit
    def run(variables, x, stage=stage):
      for name, _, _, planes, stride, dilation, down in stage:
        path = name.replace(".", "_")
        block = resnet.Bottleneck(planes, stride=stride, dilation=dilation, downsample=down)
        x = block.apply({c: variables[c][path] for c in variables}, x)
      return x

    got = run(variables, x)
    want = np.asarray(x, np.float64).transpose(0, 3, 1, 2)
    for spec in stage:
      want = numpy_model.block(spec, want)
    _close(got, want.transpose(0, 2, 3, 1))
  assert [s[4:6] for s in specs if s[0].startswith("layer4")] == [(1, 1), (1, 2), (1, 2)]


# ------------------------------------------------------------------ architecture


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth,params,features", [
    (18, 11_176_512, 512), (34, 21_284_672, 512), (50, 23_508_032, 2048),
    (101, 42_500_160, 2048)])
def test_parameter_counts_and_shapes(depth, params, features):
  # torchvision's counts (11,689,512 / 21,797,672 / 25,557,032 / 44,549,160)
  # less fc (features·1000 + 1000).
  x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  variables = jax.eval_shape(resnet.ResNet(depth).init, jax.random.key(0), x)
  assert _count(variables["params"]) == params
  assert resnet.num_features(depth) == features
  out = jax.eval_shape(resnet.ResNet(depth).apply, variables, x)
  assert out.shape == (2, 2, 3, features)
  for dilate, stride in (((False, False, True), 16), ((False, True, True), 8)):
    out = jax.eval_shape(resnet.ResNet(depth, replace_stride_with_dilation=dilate).apply,
                         variables, x)
    assert out.shape == (2, 64 // stride, 96 // stride, features)
  bf16 = jax.eval_shape(resnet.ResNet(depth, dtype=jnp.bfloat16).init_with_output,
                        jax.random.key(0), x)
  assert bf16[0].dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(bf16[1])} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("depth", [18, 50])
def test_blocks_stride_dilation_and_shortcuts_are_torchvision_s(depth):
  dilate = (False, True, True)
  seen = []

  def record(next_fun, args, kwargs, context):
    m = context.module
    if isinstance(m, (resnet.BasicBlock, resnet.Bottleneck)) and context.method_name == "__call__":
      seen.append((m.name, m.planes, m.stride, m.dilation, m.downsample))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(resnet.ResNet(depth, replace_stride_with_dilation=dilate).init,
                   jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  want = [(name.replace(".", "_"), planes, stride, dilation, down)
          for name, _, _, planes, stride, dilation, down in _blocks(depth, dilate)]
  assert seen == want


def test_init_follows_the_official_code():
  variables = jax.jit(resnet.ResNet(18).init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params = variables["params"]
  # Zero gamma on each block's last BN only; the shortcut's and the others' are 1.
  for name, block in params.items():
    if name.startswith("layer"):
      assert np.all(np.asarray(block["bn2"]["scale"]) == 0), name
      assert np.all(np.asarray(block["bn1"]["scale"]) == 1), name
      if "downsample_1" in block:
        assert np.all(np.asarray(block["downsample_1"]["scale"]) == 1), name
  assert np.all(np.asarray(params["bn1"]["scale"]) == 1)
  # N(0, 2 / (k·k·out)), untruncated: a 3x3 conv from 128 to 256 channels.
  kernel = np.asarray(params["layer3_0"]["conv1"]["kernel"])
  assert abs(kernel.std() / np.sqrt(2 / (9 * 256)) - 1) < 0.02
  assert abs(kernel).max() / kernel.std() > 4  # a truncated normal stops at 2 std
  stats = variables["batch_stats"]["layer1_0"]["bn1"]
  assert np.all(np.asarray(stats["mean"]) == 0) and np.all(np.asarray(stats["var"]) == 1)
  block = resnet.Bottleneck(4, downsample=True).init(jax.random.key(1), jnp.zeros((1, 4, 4, 8)))
  scales = {name: float(np.asarray(p["scale"]).max()) for name, p in block["params"].items()
            if "scale" in p}
  assert scales == {"bn1": 1, "bn2": 1, "bn3": 0, "downsample_1": 1}
  # torchvision's default (no zero init) on request.
  block = resnet.BasicBlock(8, zero_init_residual=False).init(jax.random.key(1),
                                                              jnp.zeros((1, 4, 4, 8)))
  assert np.all(np.asarray(block["params"]["bn2"]["scale"]) == 1)


# ------------------------------------------------------------------ BatchNorm


def _train_step(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))


def test_train_mode_uses_batch_statistics_and_momentum_0_1():
  sd = torchvision_state_dict(18, seed=3)
  variables = convert_lib.convert(sd, 18)
  x = _images((4, 64, 64, 3), seed=4)
  # Dilated layer4 (stride 16): basic blocks' dilation checked here too.
  dilate = (False, False, True)
  got, updated = _train_step(resnet.ResNet(18, replace_stride_with_dilation=dilate))(variables, x)
  assert got.shape == (4, 4, 4, 512)
  _close(got, NumpyResNet(sd, 18, dilate, train=True)(x))
  # Stem BN: new = 0.9·old + 0.1·batch statistic (flax: biased variance).
  conv1 = NumpyResNet(sd, 18).conv("conv1", np.asarray(x, np.float64).transpose(0, 3, 1, 2),
                                   stride=2)
  stats = updated["batch_stats"]["bn1"]
  np.testing.assert_allclose(stats["mean"], 0.9 * sd["bn1.running_mean"] +
                             0.1 * conv1.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["var"], 0.9 * sd["bn1.running_var"] +
                             0.1 * conv1.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
  # Every BN's running statistics moved.
  moved = jax.tree.map(lambda new, old: bool(np.any(np.asarray(new) != old)),
                       updated["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(moved))


def test_sharded_batch_gives_global_batch_statistics():
  devices = np.array(jax.devices())
  if len(devices) < 8:
    pytest.skip("needs 8 devices")
  model = resnet.ResNet(18, replace_stride_with_dilation=(False, False, True))
  variables = model.init(jax.random.key(5), jnp.zeros((1, 32, 32, 3)))
  # Nonzero residual gammas: with the zero init every block's branch would vanish.
  variables = jax.tree.map(lambda v: v + 0.5 if v.ndim == 1 else v, variables)
  x = _images((8, 32, 32, 3), seed=6) * np.arange(1, 9, dtype=np.float32)[:, None, None, None]
  step = _train_step(model)
  want, want_stats = step(variables, x)
  mesh = jax.sharding.Mesh(devices[:8], ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  got, got_stats = step(variables, jax.device_put(x, batch))
  assert got.sharding.is_equivalent_to(batch, got.ndim)
  assert got.shape == (8, 2, 2, 512)
  _close(got, want, rtol=1e-5)
  # One image per device, of different scales: per-device statistics would differ.
  jax.tree.map(lambda a, b: _close(a, b, rtol=1e-5), got_stats, want_stats)


# ------------------------------------------------------------------ importer


def test_convert_maps_names_and_layouts():
  sd = torchvision_state_dict(18, seed=7, prefix="encoder_k.")
  sd["encoder_q.conv1.weight"] = np.zeros((1,), np.float32)  # another prefix: ignored
  variables = convert_lib.convert(sd, 18, prefix="encoder_k.")
  np.testing.assert_array_equal(variables["params"]["layer2_0"]["downsample_0"]["kernel"],
                                sd["encoder_k.layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["layer4_1"]["bn2"]["scale"],
                                sd["encoder_k.layer4.1.bn2.weight"])
  np.testing.assert_array_equal(variables["batch_stats"]["layer3_0"]["downsample_1"]["var"],
                                sd["encoder_k.layer3.0.downsample.1.running_var"])
  assert convert_lib.infer_depth(sd, "encoder_k.") == 18
  assert convert_lib.infer_depth(torchvision_state_dict(50)) == 50
  with pytest.raises(ValueError, match="no ResNet"):
    convert_lib.infer_depth(sd)
  # Every torch key (less fc and num_batches_tracked) is used exactly once.
  names = {"encoder_k." + convert_lib.torch_name(c, path) for c in ("params", "batch_stats")
           for path in traverse_util.flatten_dict(variables[c])}
  assert names == {k for k in sd if k.startswith("encoder_k.") and
                   not k.startswith("encoder_k.fc.") and not k.endswith("num_batches_tracked")}


def test_convert_errors_name_the_key():
  sd = torchvision_state_dict(18, seed=8)
  missing = dict(sd)
  del missing["layer3.1.bn1.running_var"]
  with pytest.raises(ValueError, match=r"missing tensor 'layer3\.1\.bn1\.running_var'"):
    convert_lib.convert(missing, 18)
  wrong = dict(sd, **{"layer2.0.downsample.0.weight": np.zeros((128, 64, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"'layer2\.0\.downsample\.0\.weight' has shape"):
    convert_lib.convert(wrong, 18)
  extra = dict(sd, **{"layer4.2.conv1.weight": np.zeros((512, 512, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected tensor 'layer4\.2\.conv1\.weight'"):
    convert_lib.convert(extra, 18)
  with pytest.raises(ValueError, match=r"no tensors under the prefix 'module\.'"):
    convert_lib.convert(sd, 18, prefix="module.")
  with pytest.raises(ValueError, match=r"missing tensor 'layer1\.0\.bn3\.bias'; "
                     r"its blocks are a ResNet-18's"):
    convert_lib.convert(sd, 50)
  with pytest.raises(ValueError, match="depth 19"):
    convert_lib.convert(sd, 19)
  with pytest.raises(torch_file.WeightFileError) as error:
    convert_lib.convert(missing, 18, source="ckpt.pth")
  assert "\n" not in str(error.value) and str(error.value).startswith("ckpt.pth: ")
