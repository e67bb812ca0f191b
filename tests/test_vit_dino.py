"""DINO's ViT (`sgc_jax.models.vit`) and its importer (`sgc_jax.convert.dino`):
state dicts under DINO's names (random values, small sizes) through the
importer, the model against a NumPy forward of DINO's `vision_transformer.py`
written here, at the trained grid and at others (the position embedding
resampled per output pixel with PyTorch's bicubic, also checked against torch
where it is installed), the released and the training-checkpoint layouts
written without torch, errors, and the CLI."""

from __future__ import annotations

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from sgc_jax.convert import dino, torch_file
from sgc_jax.models import vit
from test_weight_files import Op, _run, encode, global_, ordered_dict, tensor, write

DIM, DEPTH, HEADS, PATCH, GRID = 32, 2, 4, 8, 4
FIELDS = {"arch": None, "patch_size": PATCH, "embed_dim": DIM, "depth": DEPTH,
          "num_heads": HEADS, "mlp_ratio": 4.0, "qkv_bias": True, "image_size": PATCH * GRID}
# PyTorch's cubic convolution coefficient.
A = -0.75


def _random(rng):
  def values(shape, scale):
    return (rng.normal(size=shape) * scale).astype(np.float32)
  return values


def _zeros(shape, scale):
  del scale
  return np.broadcast_to(np.float32(0), shape)


def dino_state_dict(dim=DIM, depth=DEPTH, patch=PATCH, grid=GRID, seed=0, values=None):
  """`vit_*(patch_size=patch).state_dict()` for a g x g training grid: DINO's
  names and shapes, `values(shape, scale)` (default random)."""
  values = values or _random(np.random.default_rng(seed))
  sd = {"cls_token": values((1, 1, dim), 0.5),
        "pos_embed": values((1, 1 + grid * grid, dim), 0.5),
        "patch_embed.proj.weight": values((dim, 3, patch, patch), (3 * patch * patch) ** -0.5),
        "patch_embed.proj.bias": values((dim,), 0.1)}
  linears = {"attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim), "mlp.fc1": (4 * dim, dim),
             "mlp.fc2": (dim, 4 * dim)}
  for i in range(depth):
    for norm in ("norm1", "norm2"):
      sd[f"blocks.{i}.{norm}.weight"] = 1 + values((dim,), 0.2)
      sd[f"blocks.{i}.{norm}.bias"] = values((dim,), 0.1)
    for name, (out, cin) in linears.items():
      sd[f"blocks.{i}.{name}.weight"] = values((out, cin), cin ** -0.5)
      sd[f"blocks.{i}.{name}.bias"] = values((out,), 0.1)
  sd["norm.weight"], sd["norm.bias"] = 1 + values((dim,), 0.2), values((dim,), 0.1)
  return sd


@pytest.fixture(scope="module")
def sd():
  return dino_state_dict()


@pytest.fixture(scope="module")
def variables(sd):
  return dino.convert(sd, FIELDS)


# ------------------------------------------------------------------ DINO in NumPy


def torch_bicubic(x, scale_factor):
  """`F.interpolate(x[None], scale_factor=scale_factor, mode="bicubic",
  align_corners=False)[0]` for x [C, H, W], per output pixel as PyTorch's
  kernel: floor(size · scale) outputs, output i at input (i + 0.5) / scale -
  0.5, the cubic convolution kernel over the 4 x 4 nearest input pixels, reads
  clamped to the border."""

  def kernel(s):
    s = abs(s)
    if s <= 1:
      return (A + 2) * s ** 3 - (A + 3) * s ** 2 + 1
    if s < 2:
      return A * s ** 3 - 5 * A * s ** 2 + 8 * A * s - 4 * A
    return 0.0

  channels, height, width = x.shape
  out_h, out_w = int(height * scale_factor[0]), int(width * scale_factor[1])
  out = np.zeros((channels, out_h, out_w))
  for i in range(out_h):
    sy = (i + 0.5) / scale_factor[0] - 0.5
    for j in range(out_w):
      sx = (j + 0.5) / scale_factor[1] - 0.5
      for m in range(math.floor(sy) - 1, math.floor(sy) + 3):
        for n in range(math.floor(sx) - 1, math.floor(sx) + 3):
          pixel = x[:, min(max(m, 0), height - 1), min(max(n, 0), width - 1)]
          out[:, i, j] += kernel(sy - m) * kernel(sx - n) * pixel
  return out


def _interpolate_pos_encoding(pos_embed, npatch, w, h, patch):
  """DINO's `interpolate_pos_encoding`, with its names: it unpacks NCHW as
  (B, nc, w, h), so `w` is the height."""
  N = pos_embed.shape[1] - 1
  if npatch == N and w == h:
    return pos_embed
  dim = pos_embed.shape[-1]
  w0, h0 = w // patch + 0.1, h // patch + 0.1
  side = int(math.sqrt(N))
  grid = pos_embed[0, 1:].reshape(side, side, dim).transpose(2, 0, 1)
  resized = torch_bicubic(grid, (w0 / math.sqrt(N), h0 / math.sqrt(N)))
  assert resized.shape[1:] == (int(w0), int(h0))
  return np.concatenate([pos_embed[:, :1], resized.transpose(1, 2, 0).reshape(1, -1, dim)], 1)


def _layer_norm(x, sd, name):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _linear(x, sd, name):
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def numpy_dino(sd, images, num_heads):
  """DINO's VisionTransformer (eval) in float64 on NHWC images: the final-normed
  tokens as a grid, the class token, the last block's keys as a grid, and
  every block's output tokens as grids."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  x = images.transpose(0, 3, 1, 2).astype(np.float64)
  batch, _, height, width = x.shape
  dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
  h, w = height // patch, width // patch
  # The kernel = stride = patch convolution, patch by patch.
  patches = x.reshape(batch, 3, h, patch, w, patch)
  embedded = np.einsum("bcyixj,dcij->byxd", patches, sd["patch_embed.proj.weight"])
  embedded = (embedded + sd["patch_embed.proj.bias"]).reshape(batch, h * w, dim)
  x = np.concatenate([np.broadcast_to(sd["cls_token"], (batch, 1, dim)), embedded], 1)
  x = x + _interpolate_pos_encoding(sd["pos_embed"], h * w, height, width, patch)
  tokens, head_dim = x.shape[1], dim // num_heads
  depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
  blocks = []
  for i in range(depth):
    block = f"blocks.{i}"
    qkv = _linear(_layer_norm(x, sd, f"{block}.norm1"), sd, f"{block}.attn.qkv")
    q, k, v = qkv.reshape(batch, tokens, 3, num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    logits = q @ k.swapaxes(-2, -1) * head_dim ** -0.5
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
    x = x + _linear(out, sd, f"{block}.attn.proj")
    y = _linear(_layer_norm(x, sd, f"{block}.norm2"), sd, f"{block}.mlp.fc1")
    x = x + _linear(0.5 * y * (1 + erf(y / np.sqrt(2))), sd, f"{block}.mlp.fc2")
    blocks.append(x[:, 1:].reshape(batch, h, w, dim))
  keys = k.transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
  x = _layer_norm(x, sd, "norm")
  return {"tokens": x[:, 1:].reshape(batch, h, w, dim), "class_token": x[:, 0],
          "keys": keys[:, 1:].reshape(batch, h, w, dim), "blocks": blocks}


def _close(got, want, rtol=1e-4):
  got = np.asarray(got, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


# ------------------------------------------------------------------ the model


@pytest.mark.parametrize("height, width", [
    (32, 32),  # the trained 4 x 4 grid: the position embedding as stored
    (48, 40),  # 6 x 5
    (16, 64),  # 2 x 8: as many patches as trained, but not square, so resampled
    (24, 24),  # 3 x 3: smaller
])
def test_converted_model_matches_numpy_dino(sd, variables, height, width):
  images = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype(np.float32)
  depth = FIELDS["depth"]
  got = jax.jit(dino.model(FIELDS).clone(blocks=(depth, 1)).apply)(variables, images)
  want = numpy_dino(sd, images, HEADS)
  assert set(got) == {"tokens", "class_token", "keys", "blocks"}
  for key in ("tokens", "class_token", "keys"):
    _close(got[key], want[key])
  _close(got["blocks"][0], want["blocks"][depth - 1])
  _close(got["blocks"][1], want["blocks"][0])


def test_bfloat16_compute_keeps_float32_params(variables):
  images = np.random.default_rng(2).normal(size=(1, 48, 40, 3)).astype(np.float32)
  fields = {name: FIELDS[name] for name in dino.MODEL_FIELDS}
  half = vit.VisionTransformer(**fields, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(jax.eval_shape(
      half.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)))} == {
          jnp.dtype(jnp.float32)}
  got = half.apply(variables, images)["tokens"]
  want = dino.model(FIELDS).apply(variables, images)["tokens"]
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.1 * np.abs(want).max())


@pytest.mark.parametrize("name, count", [
    # DINO's (and timm's) ViT-S and ViT-B with num_classes=0.
    ("dino_vits16", 21_665_664), ("dino_vits8", 21_670_272),
    ("dino_vitb16", 85_798_656), ("dino_vitb8", 85_807_872),
])
def test_released_architectures(name, count):
  model = vit.dino_vit(name)
  arch, patch = vit.HUB_MODELS[name]
  assert model == vit.dino_vit(arch, patch)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))["params"]
  assert sum(x.size for x in jax.tree.leaves(params)) == count
  out = jax.eval_shape(model.apply, {"params": params},
                       jax.ShapeDtypeStruct((2, 480, 320, 3), jnp.float32))
  grid = (480 // patch, 320 // patch)
  width = vit.ARCHITECTURES[arch]["embed_dim"]
  assert {k: v.shape for k, v in out.items() if k != "blocks"} == {
      "tokens": (2, *grid, width), "class_token": (2, width), "keys": (2, *grid, width)}
  assert out["blocks"] == ()


def test_bad_inputs_and_names_are_value_errors(variables):
  with pytest.raises(ValueError, match="images of 36x32 pixels; height and width must be "
                                       "multiples of the patch size 8"):
    dino.model(FIELDS).apply(variables, jnp.zeros((1, 36, 32, 3)))
  with pytest.raises(ValueError, match="dino_vits8 has patches of 8, not 16"):
    vit.dino_vit("dino_vits8", 16)
  with pytest.raises(ValueError, match=r"dino_vit\('vit_small', None\): one of vit_small, "
                                       "vit_base with a patch size"):
    vit.dino_vit("vit_small")


@pytest.mark.parametrize("grid, size", [(4, (6, 5)), (4, (2, 8)), (4, (4, 4)), (14, (28, 20)),
                                        (14, (9, 7)), (28, (60, 40))])
def test_bicubic_matches_torch(grid, size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(3).normal(size=(3, grid, grid))
  scale = tuple((n + 0.1) / grid for n in size)  # DINO's scale_factor
  want = torch.nn.functional.interpolate(torch.from_numpy(x)[None], scale_factor=scale,
                                         mode="bicubic", align_corners=False)[0].numpy()
  assert want.shape[1:] == size
  np.testing.assert_allclose(torch_bicubic(x, scale), want, rtol=1e-12, atol=1e-12)
  rows, cols = (vit.bicubic_matrix(grid, n, s) for n, s in zip(size, scale))
  np.testing.assert_allclose(np.einsum("ip,jq,cpq->cij", rows, cols, x), want, rtol=1e-12,
                             atol=1e-12)


# ------------------------------------------------------------------ the importer


def test_leaves_land_exactly(sd, variables):
  p = variables["params"]
  abstract = jax.eval_shape(dino.model(FIELDS).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), variables) == jax.tree.map(
      lambda x: (x.shape, x.dtype), abstract)
  eq = np.testing.assert_array_equal
  eq(p["cls_token"], sd["cls_token"])
  eq(p["pos_embed"], sd["pos_embed"])
  eq(p["patch_embed"]["proj"]["kernel"], sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  eq(p["patch_embed"]["proj"]["bias"], sd["patch_embed.proj.bias"])
  eq(p["blocks_1"]["attn"]["qkv"]["kernel"], sd["blocks.1.attn.qkv.weight"].T)
  eq(p["blocks_0"]["attn"]["proj"]["bias"], sd["blocks.0.attn.proj.bias"])
  eq(p["blocks_0"]["norm2"]["scale"], sd["blocks.0.norm2.weight"])
  eq(p["blocks_1"]["mlp"]["fc2"]["kernel"], sd["blocks.1.mlp.fc2.weight"].T)
  eq(p["norm"]["bias"], sd["norm.bias"])
  assert sum(x.size for x in jax.tree.leaves(p)) == sum(v.size for v in sd.values())


def test_fields_are_inferred(sd):
  assert dino.infer_fields(sd, num_heads=HEADS) == FIELDS
  for prefix in ("backbone.", "module.backbone.", "module."):
    assert dino.infer_fields({prefix + k: v for k, v in sd.items()}, num_heads=HEADS) == FIELDS
  with pytest.raises(torch_file.WeightFileError, match=(
      r"^dino\.pth: a ViT 32 wide and 2 deep, no DINO architecture \(vit_small 384 and 12; "
      r"vit_base 768 and 12\), and no tensor holds the head count: give num_heads$")):
    dino.infer_fields(sd, "dino.pth")


@pytest.mark.parametrize("name", vit.HUB_MODELS)
def test_released_files_name_their_architecture(name):
  arch, patch = vit.HUB_MODELS[name]
  shape = vit.ARCHITECTURES[arch]
  sd = dino_state_dict(shape["embed_dim"], shape["depth"], patch, 224 // patch, values=_zeros)
  assert dino.infer_fields(sd) == {"arch": arch, **shape, "patch_size": patch, "image_size": 224}


def _load_dict(state_dict, source="dino.pth"):
  """What `load` does with a state dict read from `source`."""
  return dino.convert(state_dict, dino.infer_fields(state_dict, source, HEADS), source)


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("blocks.1.mlp.fc2.bias"), r"missing tensor 'blocks\.1\.mlp\.fc2\.bias'$"),
    (lambda sd: sd.update({"blocks.0.attn.qkv.weight": np.zeros((3 * DIM, DIM + 1))}),
     r"tensor 'blocks\.0\.attn\.qkv\.weight' has shape \(96, 33\), expected \(96, 32\)$"),
    (lambda sd: sd.update({"pos_embed": np.zeros((1, 16, DIM))}),
     r"tensor 'pos_embed' has shape \(1, 16, 32\): 15 patch positions, not a square grid$"),
    (lambda sd: sd.update({"pos_embed": np.zeros((1, 17, DIM // 2))}),
     r"tensor 'pos_embed' has shape \(1, 17, 16\), expected \(1, 17, 32\)$"),
    (lambda sd: sd.update({"norm.weight": np.ones(DIM, np.int64)}),
     r"tensor 'norm\.weight' is int64, not floating point$"),
    (lambda sd: sd.update({"cls_token": np.zeros((1, DIM))}),
     r"tensor 'cls_token' has shape \(1, 32\)$"),
    (lambda sd: sd.update({"blocks.3.norm1.weight": np.zeros(DIM)}),
     r"unexpected tensor 'blocks\.3\.norm1\.weight', not in a 2-block DINO ViT \(1 such\)$"),
    (lambda sd: sd.update({"mask_token": np.zeros((1, DIM))}),
     r"unexpected tensor 'mask_token', not in a 2-block DINO ViT \(1 such\)$"),
])
def test_errors_name_the_file_and_the_key(sd, damage, message):
  damaged = dict(sd)
  damage(damaged)
  with pytest.raises(torch_file.WeightFileError, match=r"^dino\.pth: " + message) as error:
    _load_dict(damaged)
  assert "\n" not in str(error.value)


def test_errors_name_the_keys_of_the_file(sd):
  teacher = {"backbone." + k: v for k, v in sd.items() if k != "norm.bias"}
  with pytest.raises(torch_file.WeightFileError,
                     match=r"^dino\.pth: missing tensor 'backbone\.norm\.bias'$"):
    _load_dict(teacher)
  with pytest.raises(torch_file.WeightFileError, match=(
      r"^state dict: not a DINO ViT state dict: no 'cls_token' \(keys begin 'conv1\.weight'")):
    dino.infer_fields({"conv1.weight": np.zeros((64, 3, 7, 7))})
  with pytest.raises(torch_file.WeightFileError, match=(
      r"^state dict: missing tensor 'blocks\.2\.attn\.proj\.bias'; the checkpoint's ViT has "
      r"depth=2$")):
    dino.convert(sd, {**FIELDS, "depth": 3})


# ------------------------------------------------------------------ files and the CLI


def _state_dict_record(state_dict, storages):
  """The OrderedDict torch.save writes, each tensor on a storage added to `storages`."""
  tensors = {}
  for name, value in state_dict.items():
    value = np.ascontiguousarray(value, np.float32)
    key = str(len(storages))
    tensors[name] = tensor(key, 0, value.shape, tuple(s // 4 for s in value.strides), value.size)
    storages[key] = value.tobytes()
  return ordered_dict(tensors)


def write_pth(path, sd, checkpoint=False):
  """A released backbone file (the bare state dict), or DINO's training
  checkpoint.pth: a DDP student (other values) and a teacher, each with its
  MultiCropWrapper head, and the rest of what main_dino.py saves."""
  storages = {}
  if not checkpoint:
    return write(path, _state_dict_record(sd, storages), storages)
  head = {"head.mlp.0.weight": np.ones((8, DIM)), "head.last_layer.weight_g": np.ones((16, 1))}
  student = {f"module.backbone.{k}": v + 1 for k, v in sd.items()}
  student.update({f"module.{k}": v for k, v in head.items()})
  teacher = {f"backbone.{k}": v for k, v in sd.items()}
  teacher.update(head)
  args = Op(global_("argparse", "Namespace") + b")\x81" + encode({"arch": "vit_small"}) + b"b")
  obj = {"student": _state_dict_record(student, storages),
         "teacher": _state_dict_record(teacher, storages),
         "optimizer": {"state": {}, "param_groups": ({"lr": 0.1},)}, "epoch": 100,
         "args": args, "dino_loss": _state_dict_record({"center": np.zeros((1, 16))}, storages)}
  return write(path, obj, storages)


def test_load_reads_released_and_training_files(tmp_path, sd, variables):
  for name, checkpoint in (("dino_deitsmall8_pretrain.pth", False), ("checkpoint.pth", True)):
    fields, loaded = dino.load(write_pth(tmp_path / name, sd, checkpoint), num_heads=HEADS)
    assert fields == FIELDS
    chex.assert_trees_all_equal(loaded, variables)
  notes = tmp_path / "notes.pth"
  notes.write_text("not a checkpoint")
  with pytest.raises(torch_file.WeightFileError, match=rf"^{notes}: not a torch zip file"):
    dino.load(str(notes))


def test_cli_writes_an_npz_that_load_reads(tmp_path, sd, variables):
  path = write_pth(tmp_path / "checkpoint.pth", sd, checkpoint=True)
  result = _run("dino", path, "vit", "--num_heads", str(HEADS), cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("wrote vit.npz: a ViT of no DINO architecture (patch_size=8, ")
  out = str(tmp_path / "vit.npz")
  fields, loaded = dino.load(out)
  assert fields == FIELDS
  chex.assert_trees_all_equal(loaded, variables)

  with np.load(out) as data:
    stored = dict(data)
  for change, message in (
      ({"params/norm/scale": np.zeros(DIM - 1)},
       r"'params/norm/scale' has shape \(31,\), expected \(32,\)$"),
      ({"params/norm/scale": np.zeros(DIM, np.int32)}, r"'params/norm/scale' is int32"),
      ({"fields/num_heads": np.zeros(2)}, r"no number 'fields/num_heads': not an \.npz of "),
      ({"fields/depth": np.array(0)}, r"'fields/depth' is 0$"),
      ({"params/extra": np.zeros(2)}, r"unexpected 'params/extra'$")):
    damaged = str(tmp_path / "damaged.npz")
    np.savez(damaged, **{**stored, **change})
    with pytest.raises(torch_file.WeightFileError, match=rf"^{damaged}: {message}"):
      dino.load(damaged)
  with pytest.raises(torch_file.WeightFileError, match=r"a ViT with 4 heads, not 8$"):
    dino.load(out, num_heads=8)


def test_cli_ends_a_bad_file_with_one_error_line(tmp_path, sd):
  damaged = dict(sd, pos_embed=np.zeros((1, 1 + 15, DIM), np.float32))
  bad = write_pth(tmp_path / "bad.pth", damaged)
  result = _run("dino", bad, str(tmp_path / "out.npz"), "--num_heads", "4", cwd=tmp_path)
  assert (result.returncode, result.stderr) == (
      1, f"error: {bad}: tensor 'pos_embed' has shape (1, 16, 32): 15 patch positions, not a "
         "square grid\n")
  assert sorted(os.listdir(tmp_path)) == ["bad.pth"]
