"""The official SlotCon checkpoint importer: state dicts under the official
names and shapes (built here in NumPy, small sizes), where every tensor lands,
the converted networks against NumPy forwards, errors, `.pth` files written
without torch, and the CLI."""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from scipy.special import erf

from sgc_jax.configs import slotcon_scenes
from sgc_jax.convert import torch_file
from sgc_jax.convert import slotcon as convert_lib
from sgc_jax.methods import slotcon
from sgc_jax.models import slotcon as parts
from sgc_jax.runtime import sharding
from test_resnet import NumpyResNet, torchvision_state_dict
from test_weight_files import Op, _run, encode, global_, ordered_dict, tensor, write

DEPTH, HIDDEN, OUT, K = 18, 64, 32, 8
DDP = "module."


def model_config(**overrides):
  config = slotcon_scenes.get_config().model
  config.update(dict(depth=DEPTH, dim_hidden=HIDDEN, dim_out=OUT, num_prototypes=K))
  config.update(overrides)
  return config


def _bn(sd, name, c, rng):
  sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
  sd[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
  sd[f"{name}.running_mean"] = rng.normal(0, 0.2, c).astype(np.float32)
  sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
  sd[f"{name}.num_batches_tracked"] = np.array(5, np.int64)


def _head(sd, name, cin, conv, rng):
  """DINOHead(2d) with nlayers 3, BN: mlp.0 layer, .1 BN, .2 GELU, .3, .4, .5, .6."""
  for i, (a, b) in enumerate(((cin, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, OUT))):
    shape = (b, a, 1, 1) if conv else (b, a)
    sd[f"{name}.mlp.{3 * i}.weight"] = rng.normal(0, a ** -0.5, shape).astype(np.float32)
    sd[f"{name}.mlp.{3 * i}.bias"] = rng.normal(0, 0.1, b).astype(np.float32)
    if i < 2:
      _bn(sd, f"{name}.mlp.{3 * i + 1}", b, rng)


def official_state_dict(prefix=DDP):
  """`SlotCon(...).state_dict()` as DDP saves it: student and teacher differ."""
  rng = np.random.default_rng(0)
  sd = {}
  for seed, side in enumerate("qk"):
    encoder = f"{prefix}encoder_{side}."
    # The official encoders (head_type='early_return') have no fc.
    sd.update({k: v for k, v in torchvision_state_dict(DEPTH, seed, encoder).items()
               if not k.startswith(encoder + "fc.")})
    _head(sd, f"{prefix}projector_{side}", 512, True, rng)
  sd[f"{prefix}center"] = rng.normal(0, 0.1, (1, K)).astype(np.float32)
  for side in "qk":
    sd[f"{prefix}grouping_{side}.slot_embed.weight"] = rng.normal(size=(K, OUT)).astype(
        np.float32)
  _head(sd, f"{prefix}predictor_slot", OUT, False, rng)
  return sd


@pytest.fixture(scope="module")
def sd():
  return official_state_dict()


@pytest.fixture(scope="module")
def converted(sd):
  return convert_lib.convert(sd, model_config())


def _pth(path, state_dict, wrap=True):
  """A torch.save file without torch: the official checkpoint dict (args as an
  argparse.Namespace, optimizer, epoch) around the state dict, or it bare."""
  tensors, storages = {}, {}
  for i, (name, value) in enumerate(state_dict.items()):
    value = np.ascontiguousarray(value)
    kind = "LongStorage" if value.dtype == np.int64 else "FloatStorage"
    value = value.astype(np.int64 if kind == "LongStorage" else np.float32)
    strides = tuple(s // value.itemsize for s in value.strides)
    tensors[name] = tensor(str(i), 0, value.shape, strides, value.size, kind)
    storages[str(i)] = value.tobytes()
  obj = ordered_dict(tensors)
  if wrap:
    args = Op(global_("argparse", "Namespace") + b")\x81" + encode({"arch": "resnet18"}) + b"b")
    obj = {"args": args, "model": obj, "epoch": 800,
           "optimizer": {"state": {}, "param_groups": ({"lr": 0.1},)}}
  return write(path, obj, storages)


# ------------------------------------------------------------------ where tensors land


def test_tree_is_the_methods_state_and_leaves_land_exactly(sd, converted):
  config = slotcon_scenes.get_config("size=32")
  config.model.update(dict(dim_hidden=HIDDEN, dim_out=OUT, num_prototypes=K))
  method = slotcon.SlotConMethod(config, sharding.create_mesh(devices=jax.devices()[:1]))
  state = jax.eval_shape(method.init, jax.random.PRNGKey(0))
  for field in ("params", "batch_stats", "teacher_params", "teacher_stats", "center"):
    want = jax.tree.map(lambda x: (x.shape, x.dtype), getattr(state, field))
    got = jax.tree.map(lambda x: (x.shape, x.dtype), converted[field])
    assert got == want, field
  assert set(converted) == {"params", "batch_stats", "teacher_params", "teacher_stats",
                            "center"}

  p, s = converted["params"], converted["batch_stats"]
  tp, ts = converted["teacher_params"], converted["teacher_stats"]
  eq = np.testing.assert_array_equal
  eq(p["net"]["projector"]["conv_1"]["kernel"],
     sd["module.projector_q.mlp.3.weight"].transpose(2, 3, 1, 0))
  eq(tp["projector"]["conv_2"]["kernel"][0, 0], sd["module.projector_k.mlp.6.weight"][..., 0, 0].T)
  eq(tp["projector"]["conv_2"]["bias"], sd["module.projector_k.mlp.6.bias"])
  eq(tp["projector"]["bn_1"]["scale"], sd["module.projector_k.mlp.4.weight"])
  eq(ts["projector"]["bn_0"]["var"], sd["module.projector_k.mlp.1.running_var"])
  eq(s["net"]["projector"]["bn_1"]["mean"], sd["module.projector_q.mlp.4.running_mean"])
  eq(p["net"]["grouping"]["slot_embed"], sd["module.grouping_q.slot_embed.weight"])
  eq(tp["grouping"]["slot_embed"], sd["module.grouping_k.slot_embed.weight"])
  eq(p["predictor"]["linear_0"]["kernel"], sd["module.predictor_slot.mlp.0.weight"].T)
  eq(p["predictor"]["linear_2"]["bias"], sd["module.predictor_slot.mlp.6.bias"])
  eq(p["predictor"]["bn_1"]["bias"], sd["module.predictor_slot.mlp.4.bias"])
  eq(s["predictor"]["bn_0"]["var"], sd["module.predictor_slot.mlp.1.running_var"])
  eq(converted["center"], sd["module.center"])
  eq(tp["encoder"]["conv1"]["kernel"], sd["module.encoder_k.conv1.weight"].transpose(2, 3, 1, 0))
  eq(p["net"]["encoder"]["layer4_1"]["conv2"]["kernel"],
     sd["module.encoder_q.layer4.1.conv2.weight"].transpose(2, 3, 1, 0))
  eq(ts["encoder"]["layer2_0"]["downsample_1"]["mean"],
     sd["module.encoder_k.layer2.0.downsample.1.running_mean"])
  # Every tensor but num_batches_tracked is used exactly once.
  leaves = sum(x.size for x in jax.tree.leaves(converted))
  assert leaves == sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))


def test_without_the_ddp_prefix_the_same(sd, converted):
  bare = convert_lib.convert({k[len(DDP):]: v for k, v in sd.items()}, model_config())
  chex.assert_trees_all_equal(bare, converted)


# ------------------------------------------------------------------ forwards vs NumPy


def _np_gelu(x):
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _np_head(sd, name, x):
  """The official DINOHead / DINOHead2d (eval) on [..., C], channels last."""
  for i in range(3):
    w = sd[f"{name}.mlp.{3 * i}.weight"].astype(np.float64)
    x = x @ w.reshape(w.shape[0], -1).T + sd[f"{name}.mlp.{3 * i}.bias"]
    if i < 2:
      bn = f"{name}.mlp.{3 * i + 1}"
      x = (x - sd[f"{bn}.running_mean"]) / np.sqrt(sd[f"{bn}.running_var"] + 1e-5)
      x = _np_gelu(x * sd[f"{bn}.weight"] + sd[f"{bn}.bias"])
  return x


def _np_grouping(x, embed, temp=0.07, eps=1e-6):
  """The official SemanticGrouping, [B, H, W, D] -> (slots [B, K, D], dots [B, H, W, K])."""
  normalize = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  dots = np.einsum("kd,bhwd->bhwk", normalize(embed.astype(np.float64)), normalize(x))
  logits = dots / temp
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn = attn / attn.sum(-1, keepdims=True) + eps
  attn = attn / attn.sum((1, 2), keepdims=True)
  return np.einsum("bhwd,bhwk->bkd", x, attn), dots


def _close(got, want, rtol=2e-4):
  got = np.asarray(got, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def test_converted_teacher_and_predictor_match_numpy_forwards(sd, converted):
  config = model_config()
  net = parts.SlotConNet(DEPTH, tuple(config.dilation), HIDDEN, OUT, K, config.teacher_temp)
  images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = {"params": converted["teacher_params"], "batch_stats": converted["teacher_stats"]}
  features = jax.jit(lambda v, x: net.apply(v, x, method=parts.SlotConNet.features))(
      variables, images)
  slots, dots = jax.jit(net.apply)(variables, images)

  teacher = {k[len("module.encoder_k."):]: v for k, v in sd.items()
             if k.startswith("module.encoder_k.")}
  encoded = NumpyResNet(teacher, DEPTH, tuple(config.dilation))(images)
  assert encoded.shape == (2, 4, 4, 512)  # stride 8: layers 3 and 4 dilated
  projected = _np_head(sd, "module.projector_k", encoded)
  want_slots, want_dots = _np_grouping(projected, sd["module.grouping_k.slot_embed.weight"])
  _close(features, encoded)
  _close(dots, want_dots)
  _close(slots, want_slots)

  # The student's slot predictor (eval: running statistics).
  predictor = parts.DINOHead(hidden_dim=HIDDEN, bottleneck_dim=OUT)
  x = np.random.default_rng(2).normal(size=(5, OUT)).astype(np.float32)
  got = predictor.apply({"params": converted["params"]["predictor"],
                         "batch_stats": converted["batch_stats"]["predictor"]}, jnp.asarray(x))
  _close(got, _np_head(sd, "module.predictor_slot", x.astype(np.float64)))


# ------------------------------------------------------------------ fields and errors


def test_fields_are_inferred_from_the_shapes(sd):
  want = {"depth": DEPTH, "dim_hidden": HIDDEN, "dim_out": OUT, "num_prototypes": K}
  assert convert_lib.infer_fields(sd) == want
  assert convert_lib.infer_fields({k[len(DDP):]: v for k, v in sd.items()}) == want
  with pytest.raises(torch_file.WeightFileError,
                     match=r"^f\.pth: not a SlotCon model state dict: no "
                           r"'grouping_k\.slot_embed\.weight' \(keys begin 'w'"):
    convert_lib.infer_fields({"w": np.zeros(2)}, "f.pth")


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("module.projector_k.mlp.4.running_var"),
     r"missing tensor 'module\.projector_k\.mlp\.4\.running_var'$"),
    (lambda sd: sd.update({"module.predictor_slot.mlp.3.weight": np.zeros((HIDDEN, OUT))}),
     r"tensor 'module\.predictor_slot\.mlp\.3\.weight' has shape \(64, 32\), expected "
     r"\(64, 64\)$"),
    (lambda sd: sd.update({"module.predictor_slot.mlp.8.weight": np.zeros(3)}),
     r"unexpected tensor 'module\.predictor_slot\.mlp\.8\.weight', not in SlotCon "
     r"\(1 such\)$"),
    (lambda sd: sd.update({"encoder_q.conv1.weight": np.zeros(3)}),
     r"unexpected tensor 'encoder_q\.conv1\.weight'"),
])
def test_errors_name_the_first_offending_key(sd, damage, message):
  damaged = dict(sd)
  damage(damaged)
  with pytest.raises(torch_file.WeightFileError, match=r"^ckpt\.pth: " + message) as error:
    convert_lib.convert(damaged, model_config(), "ckpt.pth")
  assert "\n" not in str(error.value)


def test_another_architecture_is_named(sd):
  with pytest.raises(torch_file.WeightFileError, match=(
      r"^state dict: missing tensor 'module\.encoder_q\.layer1\.0\.bn3\.bias'; the "
      r"checkpoint's model has "
      r"depth=18, num_prototypes=8$")):
    convert_lib.convert(sd, model_config(depth=50, num_prototypes=16))
  with pytest.raises(torch_file.WeightFileError, match=(
      r"'module\.projector_q\.mlp\.1\.bias' has shape \(64,\), expected \(128,\); the "
      r"checkpoint's model has dim_hidden=64$")):
    convert_lib.convert(sd, model_config(dim_hidden=128))


# ------------------------------------------------------------------ files and the CLI


def test_load_reads_official_and_bare_pth_files(tmp_path, sd, converted):
  for name, wrap in (("ckpt_epoch_800.pth", True), ("bare.pth", False)):
    path = _pth(tmp_path / name, sd, wrap)
    chex.assert_trees_all_equal(convert_lib.load(path, model_config()), converted)
  out = torch_file.write_npz(converted, str(tmp_path / "converted"))
  chex.assert_trees_all_equal(convert_lib.load(out, model_config()), converted)
  with pytest.raises(torch_file.WeightFileError, match=(
      r"converted\.npz: 'params/net/grouping/slot_embed' has shape \(8, 32\), "
      r"expected \(16, 32\)$")):
    convert_lib.load(out, model_config(num_prototypes=16))


def test_cli_converts_an_official_checkpoint(tmp_path, sd, converted):
  path = _pth(tmp_path / "ckpt_epoch_800.pth", sd)
  result = _run("slotcon", path, "--out", "slotcon", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path)) == ["ckpt_epoch_800.pth", "slotcon.npz"]
  for override in ("depth=18", "dim_hidden=64", "dim_out=32", "num_prototypes=8"):
    assert f"--config.model.{override}" in result.stdout
  got = convert_lib.load(str(tmp_path / "slotcon.npz"), model_config())
  flat_got = traverse_util.flatten_dict(got)
  flat_want = traverse_util.flatten_dict(converted)
  assert flat_got.keys() == flat_want.keys()
  for key, value in flat_want.items():
    np.testing.assert_array_equal(flat_got[key], value, err_msg=str(key))


def test_cli_ends_a_bad_file_with_one_error_line(tmp_path):
  # A tensor whose stride reaches past its storage, in the official layout.
  bad = write(tmp_path / "bad.pth", {"model": ordered_dict(
      {"w": tensor("0", 0, (2,), (2 ** 40,), 12)})}, {"0": np.zeros(12, np.float32).tobytes()})
  other = _pth(tmp_path / "other.pth", {"encoder.conv_in.weight": np.zeros((4, 3, 3, 3))})
  for path, problem in ((bad, "tensor 'w': "), (other, "not a SlotCon model state dict: ")):
    result = _run("slotcon", path, "--out", str(tmp_path / "out.npz"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: {path}: {problem}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
  assert sorted(os.listdir(tmp_path)) == ["bad.pth", "other.pth"]


def test_init_from_starts_every_part_from_the_converted_checkpoint(tmp_path, converted):
  from sgc_jax.methods.slotcon import SlotConMethod
  from sgc_jax.runtime import sharding
  from sgc_jax.utils import tree_io
  path = str(tmp_path / "slotcon.npz")
  tree_io.save(converted, path)
  config = slotcon_scenes.get_config("size=32")
  config.model = model_config()
  config.init_from = path
  method = SlotConMethod(config, sharding.create_mesh(devices=jax.devices()[:1]))
  state = method.initial_state(method.create_train_state(0))
  for name in ("params", "batch_stats", "teacher_params", "teacher_stats", "center"):
    chex.assert_trees_all_equal(getattr(state, name), converted[name])
  # A fresh optimizer state for the loaded student (LARS: one momentum per leaf).
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(state.opt_state))
