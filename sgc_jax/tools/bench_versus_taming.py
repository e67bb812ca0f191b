"""Our VQGAN train step against taming-transformers' own PyTorch modules, on this CPU.

    python -m sgc_jax.tools.bench versus-taming --official=PATH [--batch_size=8]
        [--steps=3] [--config=configs/bench_taming64.py[:quantizer=sgc]]

PATH is a checkout of github.com/CompVis/taming-transformers; its
`taming/modules/diffusionmodules/model.py` (Encoder, Decoder) and
`taming/modules/vqvae/quantize.py` (VectorQuantizer2, which its VQModel uses)
are imported from there as they are. The reference side is VQModel's training
forward without the discriminator and the perceptual term: encoder -> 1x1
quant_conv -> quantizer (codebook and commitment loss, beta 0.25) -> 1x1
post_quant_conv -> decoder, loss = L1 + the quantizer's loss, Adam. It is built
from the config's model fields (ch, ch_mult, num_res_blocks, attn_resolutions,
z_channels, num_codes, image size), in float32; `pytorch_lightning` (which
taming's VQModel class needs) is not involved. Our side is `bench train`'s step
of the same config (its quantizer, its losses: with configs/bench_taming64.py,
L1 + codebook terms, Adam, no GAN, no perceptual loss). Steps are timed in
alternating blocks as `versus-slotcon` times them.
"""

from __future__ import annotations

import math

from sgc_jax.runtime import hugepages
from sgc_jax.tools.bench_versus_slotcon import (ROUNDS, WARMUP_STEPS, BenchError, Ours, _load, _timed,
                                  available_cores, check_checkout, cpu_description, read_cpuinfo)

OFFICIAL_FILES = ("taming/modules/diffusionmodules/model.py",
                  "taming/modules/vqvae/quantize.py")


def check_official(path: str | None) -> str:
  return check_checkout(path, OFFICIAL_FILES, "versus-taming", "CompVis/taming-transformers")


def taming_fields(config) -> dict:
  """taming's ddconfig and quantizer fields for our VQGAN config."""
  if config.get("method", "sgc_vqgan") != "sgc_vqgan":
    raise BenchError(f"versus-taming needs an SGC-VQGAN config, got method "
                      f"{config.get('method')!r}")
  m, size = config.model, config.data.image_size
  z_dim = m.codebook.dim_sem + m.codebook.dim_det
  return {"ddconfig": dict(ch=m.ch, out_ch=3, ch_mult=tuple(m.ch_mult),
                           num_res_blocks=m.num_res_blocks,
                           attn_resolutions=list(m.attn_resolutions), dropout=0.0,
                           in_channels=3, resolution=size, z_channels=m.z_channels,
                           double_z=False),
          "n_embed": m.codebook.num_codes, "embed_dim": z_dim}


class Taming:
  """taming's VQModel pieces, trained with L1 + the quantizer's loss, Adam."""

  def __init__(self, path: str, config, images, threads: int):
    import torch
    self.torch = torch
    torch.set_num_threads(threads)
    model = _load(path, OFFICIAL_FILES[0], "taming_official_model")
    quantize = _load(path, OFFICIAL_FILES[1], "taming_official_quantize")
    fields = taming_fields(config)
    torch.manual_seed(config.seed)
    dd = fields["ddconfig"]
    self.modules = torch.nn.ModuleDict(dict(
        encoder=model.Encoder(**dd), decoder=model.Decoder(**dd),
        quantize=quantize.VectorQuantizer2(fields["n_embed"], fields["embed_dim"], beta=0.25),
        quant_conv=torch.nn.Conv2d(dd["z_channels"], fields["embed_dim"], 1),
        post_quant_conv=torch.nn.Conv2d(fields["embed_dim"], dd["z_channels"], 1)))
    self.modules.train()
    opt = config.optimizer
    self.optimizer = torch.optim.Adam(self.modules.parameters(), lr=opt.learning_rate,
                                      betas=(opt.b1, opt.b2), eps=opt.eps)
    self.x = torch.from_numpy(images[:, 0].transpose(0, 3, 1, 2).copy())
    self.loss = float("nan")

  def student_parameters(self) -> int:
    return sum(p.numel() for p in self.modules.parameters())

  def step(self) -> None:
    m = self.modules
    quant, codebook_loss, _ = m.quantize(m.quant_conv(m.encoder(self.x)))
    reconstruction = m.decoder(m.post_quant_conv(quant))
    loss = (self.x - reconstruction).abs().mean() + codebook_loss.mean()
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    self.loss = loss.item()

  def close(self) -> None:
    pass


def versus(official_path: str | None, config, batch_size: int, steps: int,
           rounds: int = ROUNDS) -> tuple[str, list, list]:
  """(a line about the run, table header, table rows)."""
  path = check_official(official_path)
  taming_fields(config)
  try:
    import torch
  except ImportError:
    raise BenchError("versus-taming needs PyTorch: pip install -e '.[torch]'") from None
  import jax
  config = config.copy_and_resolve_references()
  if config.data.num_views != 1:
    raise BenchError(f"versus-taming times one view per image (taming's step); the config "
                      f"has data.num_views={config.data.num_views}")
  threads = available_cores()
  ours = Ours(config, batch_size, same_views=False)
  theirs = Taming(path, config, ours.images, threads)
  for side in (ours, theirs):
    _timed(side, WARMUP_STEPS)
  times = {"ours": [], "taming": []}
  for _ in range(rounds):
    times["ours"].append(_timed(ours, steps))
    times["taming"].append(_timed(theirs, steps))
  losses = (ours.loss, theirs.loss)
  rate = {k: batch_size * steps * rounds / sum(v) for k, v in times.items()}
  per_round = {k: ", ".join(f"{batch_size * steps / t:.2f}" for t in v)
               for k, v in times.items()}
  model, simd = cpu_description(read_cpuinfo())
  params = (ours.student_parameters(), theirs.student_parameters())
  header = ["CPU", "SIMD", "threads", "batch", "px", "ours images/s", "taming images/s",
            "ours/taming", "ours per round", "taming per round", "params M (ours, taming)",
            "loss (ours, taming)"]
  row = [model, simd, threads, batch_size, config.data.image_size, rate["ours"],
         rate["taming"], rate["ours"] / rate["taming"], per_round["ours"],
         per_round["taming"], f"{params[0] / 1e6:.2f}, {params[1] / 1e6:.2f}",
         f"{losses[0]:.3f}, {losses[1]:.3f}"]
  m = config.model
  about = (f"VQGAN train step, ours ({m.codebook.mode} quantizer; JAX {jax.__version__}, "
           f"{jax.devices()[0].platform}, compiled in {ours.compile_seconds:.1f} s) vs "
           f"taming-transformers' modules (VectorQuantizer2; PyTorch {torch.__version__}, "
           f"{torch.get_num_threads()} threads): ch {m.ch}, ch_mult {tuple(m.ch_mult)}, "
           f"{m.num_res_blocks} res block(s), attention at {tuple(m.attn_resolutions)}, "
           f"z {m.z_channels}, K {m.codebook.num_codes}, float32, L1 + codebook loss, Adam; "
           f"{rounds} rounds x {steps} steps each after {WARMUP_STEPS} of warm-up; malloc: "
           f"{hugepages.describe()}.")
  if not all(map(math.isfinite, losses)):
    about += " NOTE: a loss is not finite."
  return about, header, [row]
