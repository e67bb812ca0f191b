"""NumPy references of PyTorch layers (NCHW, PyTorch weight layouts), and
taming-transformers' VQGAN built from them, for the importer tests."""

import numpy as np


def conv2d(x, weight, bias=None, stride=1, padding=(0, 0, 0, 0)):
  """x [N, C, H, W], weight [O, C, kh, kw]; padding (top, bottom, left, right)."""
  top, bottom, left, right = padding
  x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
  _, _, kh, kw = weight.shape
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
  windows = windows[:, :, ::stride, ::stride]
  out = np.einsum("nchwij,ocij->nohw", windows, weight)
  return out if bias is None else out + bias[None, :, None, None]


def same(k):
  return (k // 2,) * 4


def group_norm(x, gamma, beta, groups=32, eps=1e-6):
  n, c, h, w = x.shape
  g = x.reshape(n, groups, -1)
  g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
  return g.reshape(n, c, h, w) * gamma[None, :, None, None] + beta[None, :, None, None]


def batch_norm(x, gamma, beta, mean, var, eps=1e-3):
  shape = (1, -1, 1, 1)
  return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(
      shape) + beta.reshape(shape)


def swish(x):
  return x / (1 + np.exp(-x))


def avg_pool3_exclude_pad(x):
  ones = np.ones_like(x[:1, :1])
  kernel = np.ones((1, 1, 3, 3))
  sums = np.concatenate([conv2d(x[:, c:c + 1], kernel, padding=(1,) * 4)
                         for c in range(x.shape[1])], 1)
  return sums / conv2d(ones, kernel, padding=(1,) * 4)


def max_pool3(x, stride, pad):
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
  windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))
  return windows[:, :, ::stride, ::stride].max((-1, -2))


# ------------------------------------------------------------------ taming VQGAN


def taming_state_dict(ch, ch_mult, num_res_blocks, attn_levels, z_channels, embed_dim,
                      num_codes, seed=0):
  """Random tensors under taming's key names and shapes (plus a `loss.` entry)."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, cin, cout, k):
    sd[f"{name}.weight"] = rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k))
    sd[f"{name}.bias"] = rng.normal(0, 0.1, cout)

  def norm(name, c):
    sd[f"{name}.weight"] = 1 + rng.normal(0, 0.1, c)
    sd[f"{name}.bias"] = rng.normal(0, 0.1, c)

  def resnet(name, cin, cout):
    norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
    norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
    if cin != cout:
      conv(f"{name}.nin_shortcut", cin, cout, 1)

  def attn(name, c):
    norm(f"{name}.norm", c)
    for part in ("q", "k", "v", "proj_out"):
      conv(f"{name}.{part}", c, c, 1)

  conv("encoder.conv_in", 3, ch, 3)
  cin = ch
  for i, mult in enumerate(ch_mult):
    for j in range(num_res_blocks):
      resnet(f"encoder.down.{i}.block.{j}", cin, ch * mult)
      cin = ch * mult
      if i in attn_levels:
        attn(f"encoder.down.{i}.attn.{j}", cin)
    if i != len(ch_mult) - 1:
      conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
  resnet("encoder.mid.block_1", cin, cin), attn("encoder.mid.attn_1", cin)
  resnet("encoder.mid.block_2", cin, cin)
  norm("encoder.norm_out", cin), conv("encoder.conv_out", cin, z_channels, 3)
  conv("quant_conv", z_channels, embed_dim, 1)
  sd["quantize.embedding.weight"] = rng.normal(0, 1, (num_codes, embed_dim))
  conv("post_quant_conv", embed_dim, z_channels, 1)
  block_in = ch * ch_mult[-1]
  conv("decoder.conv_in", z_channels, block_in, 3)
  resnet("decoder.mid.block_1", block_in, block_in), attn("decoder.mid.attn_1", block_in)
  resnet("decoder.mid.block_2", block_in, block_in)
  for i in reversed(range(len(ch_mult))):
    for j in range(num_res_blocks + 1):
      resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
      block_in = ch * ch_mult[i]
      if i in attn_levels:
        attn(f"decoder.up.{i}.attn.{j}", block_in)
    if i != 0:
      conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
  norm("decoder.norm_out", block_in), conv("decoder.conv_out", block_in, 3, 3)
  sd["loss.discriminator.main.0.weight"] = rng.normal(0, 1, (64, 3, 4, 4))
  return {k: v.astype(np.float32) for k, v in sd.items()}


class Taming:
  """taming-transformers' VQModel forward in NumPy (float64), from a state dict."""

  def __init__(self, sd, ch_mult, num_res_blocks, attn_levels):
    self.sd = {k: v.astype(np.float64) for k, v in sd.items()}
    self.ch_mult, self.blocks, self.attn_levels = ch_mult, num_res_blocks, attn_levels

  def conv(self, name, x, stride=1, padding=None):
    w = self.sd[f"{name}.weight"]
    return conv2d(x, w, self.sd[f"{name}.bias"], stride,
                  same(w.shape[-1]) if padding is None else padding)

  def norm(self, name, x):
    return group_norm(x, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"])

  def resnet(self, name, x):
    h = self.conv(f"{name}.conv1", swish(self.norm(f"{name}.norm1", x)))
    h = self.conv(f"{name}.conv2", swish(self.norm(f"{name}.norm2", h)))
    if f"{name}.nin_shortcut.weight" in self.sd:
      x = self.conv(f"{name}.nin_shortcut", x)
    return x + h

  def attn(self, name, x):
    n, c, hh, ww = x.shape
    h = self.norm(f"{name}.norm", x)
    q, k, v = (self.conv(f"{name}.{p}", h).reshape(n, c, -1) for p in "qkv")
    w = np.einsum("bci,bcj->bij", q, k) * c ** -0.5
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bij,bcj->bci", w, v).reshape(n, c, hh, ww)
    return x + self.conv(f"{name}.proj_out", out)

  def downsample(self, name, x):
    return self.conv(f"{name}.conv", x, stride=2, padding=(0, 1, 0, 1))

  def upsample(self, name, x):
    return self.conv(f"{name}.conv", x.repeat(2, 2).repeat(2, 3))

  def tokens(self, images_nhwc):
    """z [N, g, g, D] before quantization."""
    h = self.conv("encoder.conv_in", images_nhwc.transpose(0, 3, 1, 2).astype(np.float64))
    for i in range(len(self.ch_mult)):
      for j in range(self.blocks):
        h = self.resnet(f"encoder.down.{i}.block.{j}", h)
        if i in self.attn_levels:
          h = self.attn(f"encoder.down.{i}.attn.{j}", h)
      if i != len(self.ch_mult) - 1:
        h = self.downsample(f"encoder.down.{i}.downsample", h)
    h = self.resnet("encoder.mid.block_2", self.attn(
        "encoder.mid.attn_1", self.resnet("encoder.mid.block_1", h)))
    h = self.conv("encoder.conv_out", swish(self.norm("encoder.norm_out", h)))
    return self.conv("quant_conv", h).transpose(0, 2, 3, 1)

  def encode(self, images_nhwc):
    z = self.tokens(images_nhwc)
    codes = self.sd["quantize.embedding.weight"]
    distances = ((z[..., None, :] - codes) ** 2).sum(-1)
    return np.argmin(distances, -1)

  def decode(self, indices):
    q = self.sd["quantize.embedding.weight"][indices].transpose(0, 3, 1, 2)
    h = self.conv("decoder.conv_in", self.conv("post_quant_conv", q))
    h = self.resnet("decoder.mid.block_2", self.attn(
        "decoder.mid.attn_1", self.resnet("decoder.mid.block_1", h)))
    for i in reversed(range(len(self.ch_mult))):
      for j in range(self.blocks + 1):
        h = self.resnet(f"decoder.up.{i}.block.{j}", h)
        if i in self.attn_levels:
          h = self.attn(f"decoder.up.{i}.attn.{j}", h)
      if i != 0:
        h = self.upsample(f"decoder.up.{i}.upsample", h)
    h = self.conv("decoder.conv_out", swish(self.norm("decoder.norm_out", h)))
    return h.transpose(0, 2, 3, 1)


# ------------------------------------------------------------------ pytorch-fid Inception


def inception_state_dict(seed=0):
  """Random tensors under pytorch-fid's Inception-v3 names and shapes."""
  convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
           ("Conv2d_2b_3x3", 32, 64, 3, 3), ("Conv2d_3b_1x1", 64, 80, 1, 1),
           ("Conv2d_4a_3x3", 80, 192, 3, 3)]
  for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
    convs += [(f"{name}.branch1x1", cin, 64, 1, 1), (f"{name}.branch5x5_1", cin, 48, 1, 1),
              (f"{name}.branch5x5_2", 48, 64, 5, 5), (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
              (f"{name}.branch3x3dbl_2", 64, 96, 3, 3), (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
              (f"{name}.branch_pool", cin, pool, 1, 1)]
  convs += [("Mixed_6a.branch3x3", 288, 384, 3, 3), ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
            ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    convs += [(f"{name}.branch1x1", 768, 192, 1, 1), (f"{name}.branch7x7_1", 768, c7, 1, 1),
              (f"{name}.branch7x7_2", c7, c7, 1, 7), (f"{name}.branch7x7_3", c7, 192, 7, 1),
              (f"{name}.branch7x7dbl_1", 768, c7, 1, 1),
              (f"{name}.branch7x7dbl_2", c7, c7, 7, 1), (f"{name}.branch7x7dbl_3", c7, c7, 1, 7),
              (f"{name}.branch7x7dbl_4", c7, c7, 7, 1), (f"{name}.branch7x7dbl_5", c7, 192, 1, 7),
              (f"{name}.branch_pool", 768, 192, 1, 1)]
  convs += [("Mixed_7a.branch3x3_1", 768, 192, 1, 1), ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
            ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
            ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
  for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    convs += [(f"{name}.branch1x1", cin, 320, 1, 1), (f"{name}.branch3x3_1", cin, 384, 1, 1),
              (f"{name}.branch3x3_2a", 384, 384, 1, 3), (f"{name}.branch3x3_2b", 384, 384, 3, 1),
              (f"{name}.branch3x3dbl_1", cin, 448, 1, 1),
              (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
              (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
              (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1), (f"{name}.branch_pool", cin, 192, 1, 1)]
  rng = np.random.default_rng(seed)
  sd = {}
  for name, cin, cout, kh, kw in convs:
    sd[f"{name}.conv.weight"] = rng.normal(0, np.sqrt(2 / (cin * kh * kw)), (cout, cin, kh, kw))
    sd[f"{name}.bn.weight"] = 1 + rng.normal(0, 0.1, cout)
    sd[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout)
    sd[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout)
  sd["fc.weight"] = rng.normal(0, 0.01, (1008, 2048))
  sd["fc.bias"] = np.zeros(1008)
  return {k: v.astype(np.float32) for k, v in sd.items()}


def basic_conv(sd, name, x, stride=1, padding=(0, 0, 0, 0)):
  bn = lambda p: sd[f"{name}.bn.{p}"].astype(np.float64)
  h = conv2d(x, sd[f"{name}.conv.weight"].astype(np.float64), None, stride, padding)
  return np.maximum(batch_norm(h, bn("weight"), bn("bias"), bn("running_mean"),
                               bn("running_var")), 0)
