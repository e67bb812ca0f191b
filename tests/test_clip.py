"""CLIP (`sgc_jax.models.clip`), its BPE tokenizer (`clip_tokenizer`) and its
importer (`sgc_jax.convert.clip`): tiny state dicts under CLIP's names
through the importer, the model against a float64 NumPy forward of openai/CLIP
`model.py` written here (image tower with its MaskCLIP dense path, at the
trained grid and at others; causal text tower), OpenAI's TorchScript layout
written without torch and an archive torch itself writes, plain state dicts,
the .npz and the CLI, damaged files, and the tokenizer on a vocabulary whose
ids are worked out by hand below (and on the real one where SGC_CLIP_VOCAB
names it)."""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import subprocess
import sys
import warnings
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgc_jax.convert import torch_file
from sgc_jax.convert import clip as convert_clip
from sgc_jax.models import clip, clip_tokenizer
from test_vit_dino import torch_bicubic
from test_weight_files import ROOT, Op, _run, encode, global_, tensor

# A tiny CLIP: the towers differ in width and heads, so that a mix-up shows.
CONFIG = clip.CLIPConfig(vision_width=32, vision_layers=3, vision_heads=4, patch_size=8,
                         image_size=24, embed_dim=16, context_length=8, vocab_size=40,
                         text_width=24, text_heads=2, text_layers=2)
FIELDS = {"arch": None, **{name: getattr(CONFIG, name) for name in convert_clip.MODEL_FIELDS}}
HEADS = {"vision_heads": CONFIG.vision_heads, "text_heads": CONFIG.text_heads}
BLOCKS = (1, 3)


def clip_state_dict(config=CONFIG, seed=0, values=None):
  """`CLIP(...).state_dict()` of openai/CLIP's model.py for `config`: its names
  and shapes, `values(shape, scale)` (default random)."""
  if values is None:
    rng = np.random.default_rng(seed)

    def values(shape, scale):
      return (rng.normal(size=shape) * scale).astype(np.float32)

  def blocks(prefix, width, layers):
    linears = {"attn.in_proj": (3 * width, width), "attn.out_proj": (width, width),
               "mlp.c_fc": (4 * width, width), "mlp.c_proj": (width, 4 * width)}
    for i in range(layers):
      block = f"{prefix}transformer.resblocks.{i}"
      for name, (out, cin) in linears.items():
        weight = "attn.in_proj_weight" if name == "attn.in_proj" else f"{name}.weight"
        bias = "attn.in_proj_bias" if name == "attn.in_proj" else f"{name}.bias"
        sd[f"{block}.{weight}"] = values((out, cin), cin ** -0.5)
        sd[f"{block}.{bias}"] = values((out,), 0.1)
      for norm in ("ln_1", "ln_2"):
        norms(f"{block}.{norm}", width)

  def norms(name, width):
    sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + values((width,), 0.2), values((width,), 0.1)

  c = config
  width, patch, grid = c.vision_width, c.patch_size, c.image_size // c.patch_size
  sd = {"positional_embedding": values((c.context_length, c.text_width), 0.5),
        "text_projection": values((c.text_width, c.embed_dim), c.text_width ** -0.5),
        "logit_scale": np.float32(math.log(1 / 0.07)) + values((), 0.1),
        "visual.class_embedding": values((width,), 0.5),
        "visual.positional_embedding": values((1 + grid * grid, width), 0.5),
        "visual.proj": values((width, c.embed_dim), width ** -0.5),
        "visual.conv1.weight": values((width, 3, patch, patch), (3 * patch * patch) ** -0.5)}
  norms("visual.ln_pre", width)
  blocks("visual.", width, c.vision_layers)
  norms("visual.ln_post", width)
  sd["token_embedding.weight"] = values((c.vocab_size, c.text_width), 0.5)
  blocks("", c.text_width, c.text_layers)
  norms("ln_final", c.text_width)
  return sd


@pytest.fixture(scope="module")
def sd():
  return clip_state_dict()


@pytest.fixture(scope="module")
def variables(sd):
  return convert_clip.convert(sd, FIELDS)


# ------------------------------------------------------------------ CLIP in NumPy


def _layer_norm(x, sd, name):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _linear(x, sd, name):
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _block(x, sd, name, heads, causal=False):
  """ResidualAttentionBlock on [B, N, D] -> (output, the value path
  out_proj(v(ln_1(x))))."""
  batch, tokens, dim = x.shape
  y = _layer_norm(x, sd, f"{name}.ln_1")
  qkv = y @ sd[f"{name}.attn.in_proj_weight"].T + sd[f"{name}.attn.in_proj_bias"]
  q, k, v = (part.reshape(batch, tokens, heads, -1).transpose(0, 2, 1, 3)
             for part in np.split(qkv, 3, axis=-1))
  logits = q @ k.swapaxes(-1, -2) / np.sqrt(dim // heads)
  if causal:  # CLIP's additive mask: -inf above the diagonal.
    logits = logits + np.triu(np.full((tokens, tokens), -np.inf), 1)
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  out = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
  values = _linear(v.transpose(0, 2, 1, 3).reshape(batch, tokens, dim), sd,
                   f"{name}.attn.out_proj")
  x = x + _linear(out, sd, f"{name}.attn.out_proj")
  h = _linear(_layer_norm(x, sd, f"{name}.ln_2"), sd, f"{name}.mlp.c_fc")
  x = x + _linear(h / (1 + np.exp(-1.702 * h)), sd, f"{name}.mlp.c_proj")
  return x, values


def numpy_image(sd, images, heads, blocks=BLOCKS):
  """CLIP's VisionTransformer in float64 on NHWC images: the patch tokens after
  `blocks`, MaskCLIP's and the final tokens' dense features, the image embedding."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  x = images.astype(np.float64)
  batch, height, width, _ = x.shape
  dim, _, patch, _ = sd["visual.conv1.weight"].shape
  h, w = height // patch, width // patch
  patches = x.reshape(batch, h, patch, w, patch, 3)
  x = np.einsum("byixjc,dcij->byxd", patches, sd["visual.conv1.weight"]).reshape(batch, -1, dim)
  positions = sd["visual.positional_embedding"]
  grid = math.isqrt(len(positions) - 1)
  if (h, w) != (grid, grid):
    # F.interpolate(size=(h, w)): PyTorch's scale in/out, i.e. scale_factor n / g.
    resized = torch_bicubic(positions[1:].reshape(grid, grid, dim).transpose(2, 0, 1),
                            (h / grid, w / grid))
    assert resized.shape == (dim, h, w)
    positions = np.concatenate([positions[:1], resized.transpose(1, 2, 0).reshape(-1, dim)])
  x = np.concatenate([np.broadcast_to(sd["visual.class_embedding"], (batch, 1, dim)), x], 1)
  x = _layer_norm(x + positions, sd, "visual.ln_pre")
  layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.")})
  out = {}
  for i in range(layers):
    x, values = _block(x, sd, f"visual.transformer.resblocks.{i}", heads)
    out[i + 1] = x[:, 1:].reshape(batch, h, w, dim)

  def head(tokens):
    return _layer_norm(tokens, sd, "visual.ln_post") @ sd["visual.proj"]

  embed_dim = sd["visual.proj"].shape[1]
  return {"blocks": tuple(out[b] for b in blocks),
          "maskclip": head(values[:, 1:]).reshape(batch, h, w, embed_dim),
          "tokens": head(x[:, 1:]).reshape(batch, h, w, embed_dim),
          "image_embedding": head(x[:, 0])}


def numpy_text(sd, ids, heads):
  """CLIP's encode_text in float64."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:ids.shape[1]]
  layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.")})
  for i in range(layers):
    x, _ = _block(x, sd, f"transformer.resblocks.{i}", heads, causal=True)
  x = _layer_norm(x, sd, "ln_final")
  return x[np.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]


def _close(got, want, rtol=1e-4):
  got = np.asarray(got, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def _images(height, width, seed=1):
  return np.random.default_rng(seed).normal(size=(2, height, width, 3)).astype(np.float32)


def _ids(seed=2, length=CONFIG.context_length, ends=(5, 7, 1)):
  """Token ids as `tokenize` makes them: the end-of-text token (the largest
  id) at `ends`, zeros after it."""
  ids = np.random.default_rng(seed).integers(0, CONFIG.vocab_size - 1,
                                             (len(ends), length)).astype(np.int32)
  for row, end in enumerate(ends):
    ids[row, end], ids[row, end + 1:] = CONFIG.vocab_size - 1, 0
  return ids


# ------------------------------------------------------------------ the model


@pytest.mark.parametrize("height, width", [
    (24, 24),  # the trained 3 x 3 grid: the positional embedding as stored
    (40, 32),  # 5 x 4: resampled bicubically
])
def test_image_tower_matches_numpy_clip(sd, variables, height, width):
  images = _images(height, width)
  tower = clip.vision_tower(CONFIG, blocks=BLOCKS)
  got = jax.jit(tower.apply)({"params": variables["params"]["visual"]}, images)
  want = numpy_image(sd, images, CONFIG.vision_heads)
  assert set(got) == {"blocks", "dense", "image_embedding"} and len(got["blocks"]) == 2
  for got_block, want_block in zip(got["blocks"], want["blocks"]):
    _close(got_block, want_block)
  _close(got["dense"], want["maskclip"])
  _close(got["image_embedding"], want["image_embedding"])


def test_tokens_dense_mode_and_the_whole_model(sd, variables):
  images, ids = _images(16, 40), _ids()
  model = clip.CLIP(CONFIG, dense="tokens")
  got = jax.jit(lambda v, x: model.apply(v, x, method="encode_image"))(variables, images)
  want = numpy_image(sd, images, CONFIG.vision_heads)
  _close(got["dense"], want["tokens"])
  image, text = want["image_embedding"], numpy_text(sd, ids, CONFIG.text_heads)
  cosine = (image / np.linalg.norm(image, axis=-1, keepdims=True)) @ (
      text / np.linalg.norm(text, axis=-1, keepdims=True)).T
  _close(jax.jit(model.apply)(variables, images, ids), np.exp(sd["logit_scale"]) * cosine)


def test_text_tower_matches_numpy_clip_and_is_causal(sd, variables):
  ids = _ids()
  tower = jax.jit(clip.text_tower(CONFIG).apply)
  params = {"params": variables["params"]["text"]}
  got = tower(params, ids)
  _close(got, numpy_text(sd, ids, CONFIG.text_heads))
  # What follows the end-of-text token changes nothing: the causal mask.
  after = ids.copy()
  after[0, 6:], after[2, 2:] = (3, 4), 9
  np.testing.assert_allclose(tower(params, after), got, rtol=1e-6, atol=1e-6)
  # Nor does cutting it off (rows 0 and 2 end before 6): the same positions are read.
  np.testing.assert_allclose(tower(params, ids[:, :6])[::2], got[::2], rtol=1e-5, atol=1e-6)
  # Before it, it does.
  before = ids.copy()
  before[0, 4] = (before[0, 4] + 1) % (CONFIG.vocab_size - 1)
  changed = np.abs(np.asarray(tower(params, before)) - np.asarray(got)).max(-1)
  assert changed[0] > 1e-3 and changed[1:].max() == 0


def test_bfloat16_compute_keeps_float32_params(variables):
  half = clip.CLIP(CONFIG, dtype=jnp.bfloat16)
  abstract = jax.eval_shape(half.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 24, 24, 3), jnp.float32),
                            jax.ShapeDtypeStruct((1, 8), jnp.int32))
  assert {x.dtype for x in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  images = _images(24, 24)
  got = half.apply(variables, images, method="encode_image")["image_embedding"]
  want = clip.CLIP(CONFIG).apply(variables, images, method="encode_image")["image_embedding"]
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.1 * np.abs(want).max())


@pytest.mark.parametrize("name, count", [
    # openai/CLIP's models: sum(p.numel() for p in model.parameters()).
    ("ViT-B/32", 151_277_313), ("ViT-B/16", 149_620_737), ("ViT-L/14", 427_616_513),
])
def test_released_architectures(name, count):
  model = clip.clip_model(name, blocks=(3, 6, 9, 12))
  config = clip.ARCHITECTURES[name]
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
                          jax.ShapeDtypeStruct((1, 77), jnp.int32))["params"]
  assert sum(x.size for x in jax.tree.leaves(params)) == count
  assert set(params) == {"visual", "text", "logit_scale"}
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="encode_image"), params,
                       jax.ShapeDtypeStruct((2, 448, 672, 3), jnp.float32))
  grid = (448 // config.patch_size, 672 // config.patch_size)
  assert [b.shape for b in out["blocks"]] == [(2, *grid, config.vision_width)] * 4
  assert out["dense"].shape == (2, *grid, config.embed_dim)
  assert out["image_embedding"].shape == (2, config.embed_dim)


def test_bad_inputs_are_value_errors(variables):
  visual = {"params": variables["params"]["visual"]}
  with pytest.raises(ValueError, match="images of 28x24 pixels; height and width must be "
                                       "multiples of the patch size 8"):
    clip.vision_tower(CONFIG).apply(visual, jnp.zeros((1, 28, 24, 3)))
  with pytest.raises(ValueError, match=r"blocks \(0, 2\) must be block counts in 1\.\.3"):
    clip.vision_tower(CONFIG, blocks=(0, 2)).apply(visual, jnp.zeros((1, 24, 24, 3)))
  with pytest.raises(ValueError, match="dense='attention', not one of"):
    clip.vision_tower(CONFIG, dense="attention").apply(visual, jnp.zeros((1, 24, 24, 3)))
  with pytest.raises(ValueError, match="9 tokens per text, more than the context length 8"):
    clip.text_tower(CONFIG).apply({"params": variables["params"]["text"]},
                                  jnp.zeros((1, 9), jnp.int32))
  with pytest.raises(ValueError, match="the widths multiples of their head counts"):
    dataclasses.replace(CONFIG, vision_heads=5)
  with pytest.raises(ValueError, match=r"clip_model\('ViT-H/14'\): one of ViT-B/32, "):
    clip.clip_model("ViT-H/14")


# ------------------------------------------------------------------ the importer


def test_leaves_land_exactly(sd, variables):
  p = variables["params"]
  abstract = convert_clip.abstract_params(FIELDS)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), p) == jax.tree.map(
      lambda x: (x.shape, x.dtype), abstract)
  eq = np.testing.assert_array_equal
  v, t = p["visual"], p["text"]
  eq(v["conv1"]["kernel"], sd["visual.conv1.weight"].transpose(2, 3, 1, 0))
  eq(v["positional_embedding"], sd["visual.positional_embedding"])
  eq(v["proj"], sd["visual.proj"])
  eq(v["resblocks_2"]["attn"]["in_proj"]["kernel"],
     sd["visual.transformer.resblocks.2.attn.in_proj_weight"].T)
  eq(v["resblocks_0"]["attn"]["in_proj"]["bias"],
     sd["visual.transformer.resblocks.0.attn.in_proj_bias"])
  eq(v["resblocks_1"]["mlp"]["c_proj"]["kernel"],
     sd["visual.transformer.resblocks.1.mlp.c_proj.weight"].T)
  eq(v["ln_post"]["scale"], sd["visual.ln_post.weight"])
  eq(t["token_embedding"]["embedding"], sd["token_embedding.weight"])
  eq(t["resblocks_1"]["attn"]["out_proj"]["kernel"],
     sd["transformer.resblocks.1.attn.out_proj.weight"].T)
  eq(t["ln_final"]["bias"], sd["ln_final.bias"])
  eq(t["text_projection"], sd["text_projection"])
  eq(p["logit_scale"], sd["logit_scale"])
  assert sum(x.size for x in jax.tree.leaves(p)) == sum(np.size(x) for x in sd.values())


def test_fields_are_inferred(sd):
  assert convert_clip.infer_fields(sd, **HEADS) == FIELDS
  with pytest.raises(torch_file.WeightFileError, match=(
      r"^clip\.pt: the text tower is 24 wide, not a multiple of CLIP's 64-wide heads: give "
      r"text_heads$")):
    convert_clip.infer_fields(sd, "clip.pt", vision_heads=4)
  with pytest.raises(torch_file.WeightFileError, match=(
      r"^clip\.pt: the vision tower's width 32 is not a multiple of 3 heads$")):
    convert_clip.infer_fields(sd, "clip.pt", vision_heads=3, text_heads=2)


def _zeros(shape, scale):
  del scale
  return np.broadcast_to(np.float32(0), shape)


@pytest.mark.parametrize("name", clip.ARCHITECTURES)
def test_released_files_name_their_architecture(name):
  config = clip.ARCHITECTURES[name]
  sd = clip_state_dict(config, values=_zeros)
  assert convert_clip.infer_fields(sd) == {"arch": name, **dataclasses.asdict(config)}


def _load_dict(state_dict, source="clip.pt"):
  """What `load` does with a state dict read from `source`."""
  return convert_clip.convert(state_dict, convert_clip.infer_fields(state_dict, source, **HEADS),
                              source)


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("visual.transformer.resblocks.1.mlp.c_fc.bias"),
     r"missing tensor 'visual\.transformer\.resblocks\.1\.mlp\.c_fc\.bias'$"),
    (lambda sd: sd.pop("logit_scale"), r"missing tensor 'logit_scale'$"),
    (lambda sd: sd.update({"transformer.resblocks.0.attn.in_proj_weight": np.zeros((72, 25))}),
     r"tensor 'transformer\.resblocks\.0\.attn\.in_proj_weight' has shape \(72, 25\), "
     r"expected \(72, 24\)$"),
    (lambda sd: sd.update({"text_projection": np.zeros((24, 15))}),
     r"tensor 'text_projection' has shape \(24, 15\), expected \(24, 16\)$"),
    (lambda sd: sd.update({"visual.positional_embedding": np.zeros((9, 32))}),
     r"tensor 'visual\.positional_embedding' has shape \(9, 32\): 8 patch positions, not a "
     r"square grid$"),
    (lambda sd: sd.update({"visual.conv1.weight": np.zeros((32, 3, 8, 4))}),
     r"tensor 'visual\.conv1\.weight' has shape \(32, 3, 8, 4\): not square patches of RGB$"),
    (lambda sd: sd.update({"ln_final.weight": np.ones(24, np.int64)}),
     r"tensor 'ln_final\.weight' is int64, not floating point$"),
    # Block 1 of 3 gone: the count stops at 1, and block 2 is unexpected.
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("visual.transformer.resblocks.1.")],
     r"unexpected tensor 'visual\.transformer\.resblocks\.2\.attn\.in_proj_weight', not in a "
     r"CLIP ViT of 1 image and 2 text blocks \(12 such\)$"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("transformer.resblocks.")],
     r"no tensor 'transformer\.resblocks\.0\.\*': not a CLIP ViT state dict$"),
    (lambda sd: sd.update({"visual.attnpool.c_proj.weight": np.zeros((4, 4))}),
     r"unexpected tensor 'visual\.attnpool\.c_proj\.weight', not in a CLIP ViT of 3 image and "
     r"2 text blocks \(1 such\)$"),
    (lambda sd: sd.update({"input_resolution": np.array(224)}),
     r"tensor 'input_resolution' is 224, but the weights' image_size is 24$"),
    (lambda sd: sd.update({"vocab_size": np.zeros(2)}),
     r"tensor 'vocab_size' is a float64 tensor of shape \(2,\), but the weights' vocab_size "
     r"is 40$"),
])
def test_errors_name_the_file_and_the_key(sd, damage, message):
  damaged = dict(sd)
  damage(damaged)
  with pytest.raises(torch_file.WeightFileError, match=r"^clip\.pt: " + message) as error:
    _load_dict(damaged)
  assert "\n" not in str(error.value)


def test_errors_name_the_keys_of_the_file(sd):
  with pytest.raises(torch_file.WeightFileError, match=(
      r"^state dict: not a CLIP ViT state dict: no 'visual\.conv1\.weight' \(keys begin "
      r"'cls_token'")):
    convert_clip.infer_fields({"cls_token": np.zeros((1, 1, 8))})
  with pytest.raises(torch_file.WeightFileError, match=(
      r"^state dict: missing tensor 'transformer\.resblocks\.2\.attn\.in_proj_bias'; the "
      r"checkpoint's CLIP has text_layers=2$")):
    convert_clip.convert(sd, {**FIELDS, "text_layers": 3})


# ------------------------------------------------------------------ files and the CLI


def _tensor_record(value, storages):
  """A tensor on a new storage in `storages` (float16 and int64 as such, else float32)."""
  value = np.array(value)  # C order; ascontiguousarray would make a scalar 1-d
  if value.dtype not in (np.float16, np.int64):
    value = value.astype(np.float32)
  storage = {np.float16: "HalfStorage", np.int64: "LongStorage"}.get(value.dtype.type,
                                                                     "FloatStorage")
  key = str(len(storages))
  storages[key] = value.tobytes()
  return tensor(key, 0, value.shape, tuple(s // value.itemsize for s in value.strides),
                value.size, storage)


def _script_module(kind, attributes):
  """A TorchScript module object as data.pkl pickles it: an instance of
  `__torch__.<kind>` made by NEWOBJ, its attributes set by BUILD."""
  module, name = f"__torch__.{kind}".rsplit(".", 1)
  return Op(global_(module, name) + b")\x81" + encode(
      {**attributes, "training": False, "_is_full_backward_hook": None}) + b"b")


def write_torchscript(path, state_dict, name="ViT-T-8"):
  """OpenAI's released layout, as `torch.jit.save` writes it: `<name>/data.pkl`
  pickling the module tree (parameters as tensor attributes of the module
  objects, submodules as module attributes), the code and constants beside it
  (which the reader never touches), `<name>/data/N` the storages."""
  storages, tree = {}, {}
  for key, value in state_dict.items():
    *modules, leaf = key.split(".")
    node = tree
    for module in modules:
      node = node.setdefault(module, {})
    node[leaf] = value

  def build(node, kind):
    attributes = {}
    for attribute, value in node.items():
      attributes[attribute] = (build(value, f"model.{attribute.title()}")
                               if isinstance(value, dict) else _tensor_record(value, storages))
    return _script_module(kind, attributes)

  data = b"\x80\x02" + encode(build(tree, "multimodal.model.Multimodal")) + b"."
  entries = {"data.pkl": data, "constants.pkl": b"\x80\x02).", "version": b"3\n",
             "byteorder": b"little", "code/__torch__/multimodal/model.py": b"def f(): pass\n",
             **{f"data/{key}": value for key, value in storages.items()}}
  with zipfile.ZipFile(path, "w") as archive:
    for entry, value in entries.items():
      archive.writestr(f"{name}/{entry}", value)
  return str(path)


def write_state_dict(path, state_dict):
  """torch.save(model.state_dict()): an OrderedDict of tensors."""
  from test_weight_files import ordered_dict, write
  storages = {}
  tensors = {k: _tensor_record(v, storages) for k, v in state_dict.items()}
  return write(path, ordered_dict(tensors), storages)


def _released_layout(sd):
  """`sd` as OpenAI's archives hold it: float16, with the integer sizes."""
  half = {k: np.asarray(v, np.float16) for k, v in sd.items()}
  return {**half, "input_resolution": np.array(CONFIG.image_size, np.int64),
          "context_length": np.array(CONFIG.context_length, np.int64),
          "vocab_size": np.array(CONFIG.vocab_size, np.int64)}


def test_load_reads_torchscript_archives_and_state_dicts(tmp_path, sd, variables):
  released = _released_layout(sd)
  want = convert_clip.convert(released, FIELDS)
  fields, loaded = convert_clip.load(write_torchscript(tmp_path / "ViT-T-8.pt", released),
                                     **HEADS)
  assert fields == FIELDS
  chex.assert_trees_all_equal(loaded, want)
  fields, loaded = convert_clip.load(write_state_dict(tmp_path / "open_clip.bin", sd), **HEADS)
  assert fields == FIELDS
  chex.assert_trees_all_equal(loaded, variables)


def test_crafted_archives_fail_cleanly(tmp_path, sd):
  marker = tmp_path / "ran"
  evil = Op(global_("os", "system") + encode((f"touch {marker}",)) + b"R")
  archive = write_torchscript(tmp_path / "evil.pt", _released_layout(sd))
  with zipfile.ZipFile(archive) as source:
    entries = {n: source.read(n) for n in source.namelist()}
  data = entries["ViT-T-8/data.pkl"]
  # The call lands in an attribute of the root module: nothing runs, and the
  # placeholder it makes is no tensor, so the weights load as they are.
  assert data.endswith(b"ub.")  # The root's SETITEMS, BUILD, STOP.
  entries["ViT-T-8/data.pkl"] = data[:-3] + encode("hook") + evil + data[-3:]
  path = tmp_path / "crafted.pt"
  with zipfile.ZipFile(path, "w") as target:
    for entry, value in entries.items():
      target.writestr(entry, value)
  assert convert_clip.load(str(path), **HEADS)[0] == FIELDS
  assert not marker.exists()
  # A module whose attributes are no dict, and a storage that is too short.
  entries["ViT-T-8/data.pkl"] = (b"\x80\x02" + encode(Op(global_("__torch__", "M") + b")\x81" +
                                                          encode((1, 2)) + b"b")) + b".")
  with zipfile.ZipFile(path, "w") as target:
    for entry, value in entries.items():
      target.writestr(entry, value)
  with pytest.raises(torch_file.WeightFileError,
                     match=rf"^{path}: data.pkl: module '__torch__.M' has \(1, 2\) as its "
                           "attributes, not a dict$"):
    convert_clip.load(str(path))
  entries["ViT-T-8/data.pkl"] = data
  entries["ViT-T-8/data/3"] = entries["ViT-T-8/data/3"][:-2]
  with zipfile.ZipFile(path, "w") as target:
    for entry, value in entries.items():
      target.writestr(entry, value)
  with pytest.raises(torch_file.WeightFileError,
                     match=rf"^{path}: tensor 'visual\.class_embedding': 'ViT-T-8/data/3' holds "
                           "62 bytes, the pickle claims 32 float16 elements$"):
    convert_clip.load(str(path))


def test_module_trees_that_loop_or_nest_deep(tmp_path):
  """A module that holds itself (through the pickle's memo) is walked once; a
  chain of modules deeper than the reader's limit is an error, not a crash."""
  weight = tensor("0", 0, (2,), (1,), 2)
  looped = Op(global_("__torch__", "M") + b")\x81q\x00" +
              encode({"self": Op(b"h\x00"), "w": weight}) + b"b")
  path = str(tmp_path / "looped.pt")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("looped/data.pkl", b"\x80\x02" + encode(looped) + b".")
    archive.writestr("looped/data/0", np.ones(2, np.float32).tobytes())
  np.testing.assert_array_equal(torch_file.load_state_dict(path)["w"], [1, 1])
  chain = _script_module("M", {"w": weight})
  for _ in range(70):
    chain = _script_module("M", {"child": chain})
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("looped/data.pkl", b"\x80\x02" + encode(chain) + b".")
  with pytest.raises(torch_file.WeightFileError,
                     match=rf"^{path}: data.pkl: modules nested more than 64 deep$"):
    torch_file.load_state_dict(path)


def test_randomly_damaged_archives_fail_cleanly_or_load(tmp_path, sd):
  """test_weight_files' byte flips, on a TorchScript archive, in a subprocess
  (a crash must fail the test, not end the session)."""
  path = write_torchscript(tmp_path / "ViT-T-8.pt", _released_layout(sd))
  code = "import sys, test_weight_files as t; t.mutate_and_load(sys.argv[1:], 300)"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(__file__)]))
  result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def test_cli_writes_an_npz_that_load_reads(tmp_path, sd, variables):
  path = write_torchscript(tmp_path / "ViT-T-8.pt", sd)
  result = _run("clip", path, "clip", "--vision_heads", "4", "--text_heads", "2", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(
      "wrote clip.npz: a CLIP ViT of no released architecture (vision_width=32, ")
  out = str(tmp_path / "clip.npz")
  fields, loaded = convert_clip.load(out)
  assert fields == FIELDS
  chex.assert_trees_all_equal(loaded, variables)

  with np.load(out) as data:
    stored = dict(data)
  for change, message in (
      ({"params/text/ln_final/scale": np.zeros(23)},
       r"'params/text/ln_final/scale' has shape \(23,\), expected \(24,\)$"),
      ({"params/logit_scale": np.zeros((), np.int32)}, r"'params/logit_scale' is int32"),
      ({"fields/text_heads": np.zeros(2)}, r"no integer 'fields/text_heads': not an \.npz of "),
      ({"fields/vision_heads": np.array(5)}, r"the widths multiples of their head counts"),
      ({"params/visual/extra": np.zeros(2)}, r"unexpected 'params/visual/extra'$")):
    damaged = str(tmp_path / "damaged.npz")
    np.savez(damaged, **{**stored, **change})
    with pytest.raises(torch_file.WeightFileError, match=rf"^{damaged}: .*{message}"):
      convert_clip.load(damaged)
  with pytest.raises(torch_file.WeightFileError, match=r"a text tower with 2 heads, not 4$"):
    convert_clip.load(out, text_heads=4)


def test_cli_ends_a_bad_file_with_one_error_line(tmp_path, sd):
  bad = write_torchscript(tmp_path / "bad.pt", dict(sd, logit_scale=np.zeros(2, np.float32)))
  result = _run("clip", bad, str(tmp_path / "out.npz"), "--vision_heads", "4", "--text_heads",
                "2", cwd=tmp_path)
  assert (result.returncode, result.stderr) == (
      1, f"error: {bad}: tensor 'logit_scale' has shape (2,), expected ()\n")
  assert sorted(os.listdir(tmp_path)) == ["bad.pt"]


def test_an_archive_torch_writes(tmp_path, sd):
  """A CLIP module tree under CLIP's names in torch (nn.MultiheadAttention,
  the towers' forward as openai/CLIP computes it), traced and saved with
  torch.jit in float16: the reader finds every tensor, and the converted
  model gives torch's embeddings. Also PyTorch's bicubic `size=` resampling."""
  torch = pytest.importorskip("torch")
  nn = torch.nn

  class Block(nn.Module):
    def __init__(self, width, heads, mask=None):
      super().__init__()
      self.attn = nn.MultiheadAttention(width, heads)
      self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
      self.mlp = nn.Sequential()
      self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
      self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
      self.attn_mask = mask

    def forward(self, x):  # [tokens, batch, width], as CLIP's
      y = self.ln_1(x)
      x = x + self.attn(y, y, y, need_weights=False, attn_mask=self.attn_mask)[0]
      h = self.mlp.c_fc(self.ln_2(x))
      return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))

  class Transformer(nn.Module):
    def __init__(self, width, layers, heads, mask=None):
      super().__init__()
      self.resblocks = nn.Sequential(*[Block(width, heads, mask) for _ in range(layers)])

  c = CONFIG
  visual = nn.Module()
  visual.conv1 = nn.Conv2d(3, c.vision_width, c.patch_size, c.patch_size, bias=False)
  for name in ("class_embedding", "positional_embedding", "proj"):
    visual.register_parameter(name, nn.Parameter(torch.zeros(sd[f"visual.{name}"].shape)))
  visual.ln_pre, visual.ln_post = nn.LayerNorm(c.vision_width), nn.LayerNorm(c.vision_width)
  visual.transformer = Transformer(c.vision_width, c.vision_layers, c.vision_heads)
  mask = torch.full((c.context_length, c.context_length), float("-inf")).triu(1)

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.visual = visual
      self.transformer = Transformer(c.text_width, c.text_layers, c.text_heads, mask)
      self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
      for name in ("positional_embedding", "text_projection", "logit_scale"):
        self.register_parameter(name, nn.Parameter(torch.zeros(sd[name].shape)))
      self.ln_final = nn.LayerNorm(c.text_width)

    def forward(self, images, ids):
      v = self.visual
      x = v.conv1(images).flatten(2).permute(0, 2, 1)
      x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1)
      x = v.ln_pre(x + v.positional_embedding).permute(1, 0, 2)
      x = v.transformer.resblocks(x).permute(1, 0, 2)
      image = v.ln_post(x[:, 0]) @ v.proj
      t = self.token_embedding(ids) + self.positional_embedding
      t = self.ln_final(self.transformer.resblocks(t.permute(1, 0, 2)).permute(1, 0, 2))
      text = t[torch.arange(t.shape[0]), ids.argmax(-1)] @ self.text_projection
      return image, text

  model = Model().eval()
  model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()})
  images, ids = _images(24, 24), _ids()
  with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter("ignore")  # The tracer's notes on MultiheadAttention's shape checks.
    traced = torch.jit.trace(model, (torch.from_numpy(images).permute(0, 3, 1, 2),
                                     torch.from_numpy(ids).long()))
    want_image, want_text = (x.numpy() for x in traced(
        torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(ids).long()))
  path = str(tmp_path / "ViT-T-8.pt")
  torch.jit.save(traced.half(), path)
  with zipfile.ZipFile(path) as archive:
    assert any(n.endswith("/data.pkl") for n in archive.namelist())
  state_dict = torch_file.load_state_dict(path)
  assert sorted(state_dict) == sorted(sd)
  for key, value in sd.items():
    assert state_dict[key].dtype == np.float16
    np.testing.assert_array_equal(state_dict[key], np.asarray(value, np.float16), err_msg=key)

  # The converted (float16-rounded) weights against torch's float32 forward.
  fields, variables = convert_clip.load(path, **HEADS)
  model = clip.CLIP(config=convert_clip.config(fields))
  got = model.apply(variables, images, method="encode_image")["image_embedding"]
  np.testing.assert_allclose(got, want_image, atol=0.02 * np.abs(want_image).max())
  got = model.apply(variables, ids, method="encode_text")
  np.testing.assert_allclose(got, want_text, atol=0.02 * np.abs(want_text).max())

  grid = np.random.default_rng(3).normal(size=(5, 3, 3))
  for size in ((5, 4), (7, 2), (14, 14)):
    want = torch.nn.functional.interpolate(torch.from_numpy(grid)[None], size=size,
                                           mode="bicubic", align_corners=False)[0].numpy()
    got = clip.resize_positions(jnp.asarray(grid.transpose(1, 2, 0), jnp.float32), size)
    np.testing.assert_allclose(np.asarray(got).transpose(2, 0, 1), want, atol=1e-5)


# ------------------------------------------------------------------ the tokenizer

# A vocabulary of 13 merges. Its first 512 ids are those of every CLIP
# vocabulary: the byte symbols in `bytes_to_unicode`'s order ("!".."~" are ids
# 0..93, so ASCII c is ord(c) - 33), then the same with "</w>" (+256).
TINY_MERGES = [
    "o f</w>",    # 512 of</w>
    "c a",        # 513 ca
    "ca t</w>",   # 514 cat</w>
    "p h",        # 515 ph
    "ph o",       # 516 pho
    "t o</w>",    # 517 to</w>
    "pho to</w>",  # 518 photo</w>
    "l l",        # 519 ll
    "h e",        # 520 he
    "he ll",      # 521 hell
    "! !</w>",    # 522 !!</w>
    "Ã ©</w>",    # 523 é</w>: UTF-8 C3 A9, bytes that stand for themselves
    "s s",        # 524 ss
]
SOT, EOT = 525, 526


def _vocab_file(path, lines, header="#version: tiny test vocabulary"):
  with gzip.open(path, "wt", encoding="utf-8") as file:
    file.write("\n".join([header, *lines]) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return clip_tokenizer.Tokenizer(_vocab_file(tmp_path_factory.mktemp("bpe") / "bpe.txt.gz",
                                              TINY_MERGES))


def test_tokenizer_on_a_tiny_vocabulary(tokenizer):
  assert (tokenizer.vocab_size, tokenizer.start_of_text, tokenizer.end_of_text) == (527, SOT, EOT)
  word_end = 256  # "x</w>" is 256 + the id of "x"
  # "a" is one symbol, a word's end; "photo": p h o t o</w> -> ph (rank 3),
  # pho (4), to</w> (5), photo</w> (6); "of" -> of</w>; "cat": c a t</w> -> ca,
  # cat</w>; "." -> .</w>.
  a, period = word_end + ord("a") - 33, word_end + ord(".") - 33
  assert tokenizer.encode("a photo of a cat.") == [a, 518, 512, a, 514, period]
  # Cleaned to "hello, world!!": "hello": l l first (rank 7), then h e (8),
  # he ll (9), o</w> left alone; "world" has no merge; "!!" is one piece.
  assert tokenizer.encode("Hello,  WORLD!!") == [
      521, word_end + ord("o") - 33, word_end + ord(",") - 33,
      *(ord(c) - 33 for c in "worl"), word_end + ord("d") - 33, 522]
  # "&amp;" unescaped to "&"; "café" = c a f Ã ©</w> -> ca, Ã©</w>; digits
  # are pieces one by one.
  assert tokenizer.encode("&amp; café 42") == [
      word_end + ord("&") - 33, 513, ord("f") - 33, 523, word_end + ord("4") - 33,
      word_end + ord("2") - 33]
  # A merge applies to its pair's occurrences left to right: s s s s</w> ->
  # ss s s</w> (the last s is "s</w>", another symbol).
  assert tokenizer.encode("ssss") == [524, ord("s") - 33, word_end + ord("s") - 33]
  assert tokenizer.decode(tokenizer.encode("A photo of a café!!")) == "a photo of a café !! "


def test_tokenize_frames_pads_and_truncates(tokenizer):
  ids = tokenizer.tokenize(["a photo of a cat.", "hello"], context_length=10)
  assert ids.dtype == np.int32 and ids.shape == (2, 10)
  np.testing.assert_array_equal(ids[0], [SOT, 320, 518, 512, 320, 514, 269, EOT, 0, 0])
  np.testing.assert_array_equal(ids[1], [SOT, 521, 334, EOT] + [0] * 6)
  # Truncated to the context length, the end-of-text token last.
  np.testing.assert_array_equal(tokenizer.tokenize("a photo of a cat.", context_length=5),
                                [[SOT, 320, 518, 512, EOT]])
  assert tokenizer.tokenize("", context_length=3).tolist() == [[SOT, EOT, 0]]
  with pytest.raises(ValueError, match="context_length 1; at least 2"):
    tokenizer.tokenize("a", context_length=1)


@pytest.mark.parametrize("kind, problem", [
    ("missing", "no such CLIP vocabulary file"),
    ("not-gzip", r"not a gzip'd CLIP vocabulary \(BadGzipFile"),
    ("truncated", r"not a gzip'd CLIP vocabulary \(EOFError"),
    ("not-utf8", "not UTF-8 text at byte"),
    ("empty", r"an empty CLIP vocabulary \(no header line\)"),
    ("directory", r"cannot read the CLIP vocabulary \(Is a directory\)"),
    ("three-symbols", "line 3 is 'c a t', not a merge of two symbols"),
    ("unknown-symbol", "line 2 merges 'ca', which no earlier line makes"),
])
def test_bad_vocabulary_files_are_one_value_error(tmp_path, kind, problem):
  path = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
  if kind == "not-gzip":
    path.write_text("#version: 0.2\ni n\n")
  elif kind == "truncated":
    _vocab_file(path, TINY_MERGES)
    path.write_bytes(path.read_bytes()[:-12])
  elif kind == "not-utf8":
    with gzip.open(path, "wb") as file:
      file.write(b"#version\n\xff\xfe n\n")
  elif kind == "empty":
    with gzip.open(path, "wb") as file:
      file.write(b"")
  elif kind == "directory":
    path.mkdir()
  elif kind == "three-symbols":
    _vocab_file(path, ["o f</w>", "c a t"])
  elif kind == "unknown-symbol":
    _vocab_file(path, ["ca t</w>"])
  with pytest.raises(ValueError, match=f"^{path}: {problem}") as error:
    clip_tokenizer.Tokenizer(str(path))
  assert "\n" not in str(error.value)


@pytest.mark.skipif(not os.path.isfile(os.environ.get("SGC_CLIP_VOCAB", "")),
                    reason="SGC_CLIP_VOCAB does not name CLIP's bpe_simple_vocab_16e6.txt.gz")
def test_the_released_vocabulary():
  tokenizer = clip_tokenizer.Tokenizer(os.environ["SGC_CLIP_VOCAB"])
  assert tokenizer.vocab_size == 49408
  assert tokenizer.tokenize("a photo of a cat")[0, :8].tolist() == [
      49406, 320, 1125, 539, 320, 2368, 49407, 0]
  assert tokenizer.encode("&amp; café 42") == [261, 15304, 275, 273]
  assert tokenizer.tokenize("a " * 100).tolist()[0][-2:] == [320, 49407]
