"""Importers of published weights, on state dicts the tests make."""

import os

import jax
import numpy as np
import pytest

import torch_reference as ref
from sgc_jax.convert import taming, torch_file
from sgc_jax.convert import inception as inception_convert
from sgc_jax.convert import lpips as lpips_convert
from sgc_jax.models import inception, vqgan
from sgc_jax.models.lpips import LPIPS
from sgc_jax.utils import tree_io

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "tiny_checkpoint.pt")


def test_reads_a_torch_checkpoint_without_torch():
  state_dict = torch_file.load_state_dict(FIXTURE)
  assert sorted(state_dict) == sorted(["conv", "half", "bf16", "steps", "transposed",
                                       "view", "scalar", "param"])
  assert state_dict["conv"].shape == (4, 3, 3, 3) and state_dict["conv"].dtype == np.float32
  np.testing.assert_allclose(state_dict["conv"].ravel()[:3], [-1.1258398, -1.1523602, -0.2505786])
  np.testing.assert_allclose(state_dict["half"].astype(np.float32),
                             [1.892578125, 3.111328125, -0.45849609375, -0.3359375, -1.5703125])
  np.testing.assert_allclose(state_dict["bf16"].astype(np.float32), [1.234375, 1.3984375, 1.171875])
  np.testing.assert_array_equal(state_dict["steps"], np.array([7, -2], np.int64))
  np.testing.assert_array_equal(state_dict["transposed"], np.arange(12.).reshape(3, 4).T)
  np.testing.assert_array_equal(state_dict["view"], [2, 4, 6])  # offset and stride
  assert state_dict["scalar"].shape == () and state_dict["scalar"] == 1.5
  np.testing.assert_array_equal(state_dict["param"], [1, 1])


def test_weight_file_errors_name_the_file(tmp_path):
  with pytest.raises(torch_file.WeightFileError, match="no such weight file"):
    torch_file.load_state_dict(str(tmp_path / "missing.pth"))
  legacy = tmp_path / "legacy.pth"
  legacy.write_bytes(b"\x80\x02not a zip")
  with pytest.raises(torch_file.WeightFileError, match="legacy.pth: not a torch zip"):
    torch_file.load_state_dict(str(legacy))
  with pytest.raises(torch_file.WeightFileError, match="'conv' has shape"):
    torch_file.require(torch_file.load_state_dict(FIXTURE), "conv", (4, 3, 1, 1), "x.pth")


# ------------------------------------------------------------------ taming

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), z_channels=32,
            embed_dim=8, num_codes=16)


def _nchw(x):
  return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def test_taming_import_layer_by_layer_and_whole_model():
  sd = ref.taming_state_dict(**TINY)
  config = taming.infer_model_config(sd, resolution=16)
  assert (config.ch, config.ch_mult, config.num_res_blocks, config.attn_resolutions,
          config.z_channels, config.codebook.num_codes, config.codebook.dim_sem) == (
              32, (1, 2), 1, (8,), 32, 16, 8)
  params = taming.convert(sd, config)
  numpy_model = ref.Taming(sd, TINY["ch_mult"], TINY["num_res_blocks"], TINY["attn_levels"])
  rng = np.random.default_rng(0)
  dtype = np.float32

  # Layers: a ResNet block with a 1x1 shortcut, attention, the asymmetric-pad
  # downsampling, the nearest upsampling, a 3x3 convolution, GroupNorm.
  x = rng.normal(size=(2, 8, 8, 32)).astype(dtype)
  h = rng.normal(size=(2, 8, 8, 64)).astype(dtype)
  got = vqgan.ResnetBlock(32, 0.0, dtype).apply({"params": params["decoder"]["up_0_block_0"]}, h)
  np.testing.assert_allclose(got, numpy_model.resnet("decoder.up.0.block.0", _nchw(h)).transpose(
      0, 2, 3, 1), atol=2e-4)
  got = vqgan.AttnBlock(dtype).apply({"params": params["encoder"]["mid_attn_1"]}, h)
  np.testing.assert_allclose(got, numpy_model.attn("encoder.mid.attn_1", _nchw(h)).transpose(
      0, 2, 3, 1), atol=2e-4)
  got = vqgan.Downsample(dtype).apply({"params": params["encoder"]["down_0_downsample"]}, x)
  np.testing.assert_allclose(got, numpy_model.downsample(
      "encoder.down.0.downsample", _nchw(x)).transpose(0, 2, 3, 1), atol=2e-4)
  got = vqgan.Upsample(dtype).apply({"params": params["decoder"]["up_1_upsample"]}, h)
  np.testing.assert_allclose(got, numpy_model.upsample(
      "decoder.up.1.upsample", _nchw(h)).transpose(0, 2, 3, 1), atol=2e-4)

  # The whole tokenizer: the same tokens, and the same images from them.
  images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(dtype)
  model = vqgan.SGCVQGAN(config)
  variables = model.init(jax.random.PRNGKey(0), images)
  variables = {"params": params, "codebook": variables["codebook"]}
  indices, _ = model.apply(variables, images, method=vqgan.SGCVQGAN.encode)
  np.testing.assert_array_equal(indices, numpy_model.encode(images))
  decoded = model.apply(variables, indices, method=vqgan.SGCVQGAN.decode)
  np.testing.assert_allclose(decoded, numpy_model.decode(np.asarray(indices)), atol=5e-4)


def test_taming_import_rejects_other_architectures():
  sd = ref.taming_state_dict(**TINY)
  config = taming.infer_model_config(sd, resolution=16)
  wrong = vqgan.ModelConfig(**{**config.__dict__, "z_channels": 64})
  with pytest.raises(torch_file.WeightFileError, match="tensor 'decoder.conv_in.weight' has shape"):
    taming.convert(sd, wrong)
  extra = dict(sd, **{"encoder.down.0.attn.0.q.weight": np.zeros((32, 32, 1, 1))})
  with pytest.raises(torch_file.WeightFileError, match="does not have"):
    taming.convert(extra, config)


# ------------------------------------------------------------------ LPIPS


def test_lpips_import_matches_numpy_layers():
  rng = np.random.default_rng(0)
  vgg, heads, cin, index = {}, {}, 3, 0
  for s, stage in enumerate(((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)):
    for cout in stage:
      vgg[f"features.{index}.weight"] = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3))
      vgg[f"features.{index}.bias"] = rng.normal(0, 0.1, cout)
      cin, index = cout, index + 2
    index += 1  # the max pool
    heads[f"lin{s}.model.1.weight"] = rng.uniform(0, 0.1, (1, cout, 1, 1))
  vgg["classifier.0.weight"] = np.zeros((4, 4))  # not used by LPIPS
  params = lpips_convert.convert(vgg, heads)
  x = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)

  # First layer against NumPy: scaling, conv 0 (OIHW -> HWIO), ReLU.
  shift = np.array([-.030, -.088, -.188])[None, :, None, None]
  scale = np.array([.458, .448, .450])[None, :, None, None]
  want = np.maximum(ref.conv2d((_nchw(x) - shift) / scale, vgg["features.0.weight"],
                               vgg["features.0.bias"], padding=(1,) * 4), 0)

  def first_layer(module, image):
    import flax.linen as nn
    h = (image - np.array([-.030, -.088, -.188], np.float32)) / np.array(
        [.458, .448, .450], np.float32)
    return nn.relu(nn.Conv(64, (3, 3), padding=1).apply({"params": params["vgg_0_0"]}, h))

  np.testing.assert_allclose(first_layer(None, x), want.transpose(0, 2, 3, 1), atol=1e-4)

  # The whole distance against NumPy, stage by stage.
  def numpy_lpips(a, b):
    def taps(image):
      h, out, i = (_nchw(image) - shift) / scale, [], 0
      for s, stage in enumerate(((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)):
        if s:
          n, c, hh, ww = h.shape
          h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).max((3, 5))
        for _ in stage:
          h = np.maximum(ref.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"],
                                    padding=(1,) * 4), 0)
          i += 2
        i += 1
        out.append(h)
      return out
    total = 0.0
    for s, (fa, fb) in enumerate(zip(taps(a), taps(b))):
      fa = fa / (np.sqrt((fa ** 2).sum(1, keepdims=True)) + 1e-10)
      fb = fb / (np.sqrt((fb ** 2).sum(1, keepdims=True)) + 1e-10)
      total += ref.conv2d((fa - fb) ** 2, heads[f"lin{s}.model.1.weight"]).mean()
    return total

  got = LPIPS().apply({"params": params}, x, y)
  np.testing.assert_allclose(got, [numpy_lpips(x, y)], rtol=1e-4)


# ------------------------------------------------------------------ Inception


def test_inception_import_layer_by_layer(tmp_path):
  sd = ref.inception_state_dict()
  params = inception_convert.convert(sd)
  path = str(tmp_path / "inception.npz")
  tree_io.save(params, path)
  reloaded = inception_convert.load(path)
  np.testing.assert_array_equal(reloaded["Mixed_7c"]["branch_pool"]["conv"]["kernel"],
                                params["Mixed_7c"]["branch_pool"]["conv"]["kernel"])
  rng = np.random.default_rng(0)

  def check(module, name, x, **kwargs):
    node = params
    for part in name.split("."):
      node = node[part]
    got = module.apply({"params": node}, x)
    want = ref.basic_conv(sd, name, _nchw(x), **kwargs).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)

  check(inception.BasicConv(32, (3, 3), stride=2), "Conv2d_1a_3x3",
        rng.uniform(-1, 1, (1, 15, 15, 3)).astype(np.float32), stride=2)
  check(inception.BasicConv(128, (1, 7), padding=(0, 3)), "Mixed_6b.branch7x7_2",
        rng.normal(size=(1, 5, 9, 128)).astype(np.float32), padding=(0, 0, 3, 3))
  # Pool branches: average without padding (A), max (the last E).
  x = rng.normal(size=(1, 6, 6, 192)).astype(np.float32)
  got = inception.InceptionA(32).apply({"params": params["Mixed_5b"]}, x)[..., -32:]
  want = ref.basic_conv(sd, "Mixed_5b.branch_pool", ref.avg_pool3_exclude_pad(_nchw(x)))
  np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=2e-4, rtol=1e-4)
  x = rng.normal(size=(1, 3, 3, 2048)).astype(np.float32)
  got = inception.InceptionE(True).apply({"params": params["Mixed_7c"]}, x)[..., -192:]
  want = ref.basic_conv(sd, "Mixed_7c.branch_pool", ref.max_pool3(_nchw(x), 1, 1))
  np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=2e-4, rtol=1e-4)

  broken = dict(sd)
  del broken["Mixed_6e.branch7x7dbl_3.bn.running_var"]
  with pytest.raises(torch_file.WeightFileError, match="Mixed_6e.branch7x7dbl_3.bn.running_var"):
    inception_convert.convert(broken, "pt_inception.pth")


def test_training_starts_from_imported_taming_weights(data_dir, tmp_path):
  from sgc_jax.runtime import sharding
  from sgc_jax.tools import synthetic
  from test_train import tiny_config
  sd = ref.taming_state_dict(**TINY)
  path = str(tmp_path / "vqgan.npz")
  tree_io.save(taming.convert(sd, taming.infer_model_config(sd, 32)), path)
  config = tiny_config(data_dir, quantizer="vq", init_from=path)
  config.model.update(dict(ch=32, ch_mult=(1, 2), attn_resolutions=(16,), z_channels=32))
  config.model.codebook.update(dict(num_codes=16, dim_sem=8, dim_det=0))
  trainer = synthetic.make_trainer(config, 10, sharding.create_mesh())
  state = trainer.initial_state(trainer.create_train_state(config.seed))
  np.testing.assert_array_equal(state.params["codebook"]["embedding"],
                                sd["quantize.embedding.weight"])
  np.testing.assert_array_equal(state.params["encoder"]["conv_in"]["kernel"],
                                torch_file.conv_kernel(sd["encoder.conv_in.weight"]))
  assert state.params["decoder"]["up_1_block_0"]["conv1"]["kernel"].sharding == \
      trainer.state_shardings.params["decoder"]["up_1_block_0"]["conv1"]["kernel"]
