"""Our VQGAN train step against taming-transformers' own PyTorch modules, on this CPU.

    python -m sgc_jax.tools.bench versus-taming --official=PATH [--batch_size=8]
        [--steps=5] [--config=configs/bench_taming64.py[:quantizer=sgc]]

PATH is a checkout of github.com/CompVis/taming-transformers; its
`taming/modules/diffusionmodules/model.py` (Encoder, Decoder) and
`taming/modules/vqvae/quantize.py` (VectorQuantizer2, which its VQModel uses)
are imported from there as they are. The reference side is VQModel's training
forward without the discriminator and the perceptual term: encoder -> 1x1
quant_conv -> quantizer -> 1x1 post_quant_conv -> decoder, loss = mean L1 + the
quantizer's loss, Adam at a constant rate, no clipping (taming's recipe), in
float32; `pytorch_lightning` (which taming's VQModel class needs) is not
involved. Our side is `bench train`'s step of the same config, made like for
like by `like_for_like`.

The race is `sgc_jax.tools.versus`'s: each side alone in its own process,
alternating, after a warm-up. With `vq`, both sides start from the same
weights (taming's modules seeded, our parameters imported from their state
dict by `sgc_jax.convert.taming`), and the table prints the largest relative
difference of their per-step losses beside taming's own float32 noise.
taming's quantizer runs with `legacy=False`: its default puts beta on the
codebook term instead of the commitment term (the VQ-VAE paper's place, and
ours); the cost is the same. With `sgc`, our step is the method's (an EMA
codebook and the semantic loss over a [z_sem; z_det] pyramid), a different
computation from taming's, so no agreement is claimed.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from sgc_jax.configs import bench_taming64
from sgc_jax.runtime import hugepages
from sgc_jax.tools import versus
from sgc_jax.tools.versus import BenchError

OFFICIAL_FILES = ("taming/modules/diffusionmodules/model.py",
                  "taming/modules/vqvae/quantize.py")


def check_official(path: str | None) -> str:
  return versus.check_checkout(path, OFFICIAL_FILES, "versus-taming", "CompVis/taming-transformers")


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


def like_for_like(config):
  """A copy of an SGC-VQGAN config that trains as taming's side does: one view,
  float32, L1 and the codebook terms only (no perceptual term, no GAN, no
  parameter EMA), Adam at a constant rate without clipping; with `vq`, taming's
  single z (dim_det 0, dim_sem the whole embedding)."""
  taming_fields(config)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.num_views = 1
    config.model.dtype = "float32"
    config.model.dropout = 0.0
    config.ema_decay = 0.0
    config.loss.reconstruction = "l1"
    config.loss.lpips_weights = None
    config.loss.disc_start = 2**31 - 1
    config.optimizer.update(dict(name="adam", **bench_taming64.CONSTANT_RATE))
    codebook = config.model.codebook
    if codebook.mode == "vq":
      codebook.update(dict(dim_sem=codebook.dim_sem + codebook.dim_det, dim_det=0))
  return config


# ------------------------------------------------------------------ the two sides


class Taming:
  """taming's VQModel pieces, trained with L1 + the quantizer's loss, Adam."""

  def __init__(self, path: str, config, images, threads: int, state_dict=None):
    import torch
    self.torch = torch
    torch.set_num_threads(threads)
    model = versus.load_official(path, OFFICIAL_FILES[0], "taming_official_model")
    quantize = versus.load_official(path, OFFICIAL_FILES[1], "taming_official_quantize")
    fields = taming_fields(config)
    torch.manual_seed(config.seed)
    dd = fields["ddconfig"]
    self.modules = torch.nn.ModuleDict(dict(
        encoder=model.Encoder(**dd), decoder=model.Decoder(**dd),
        quantize=quantize.VectorQuantizer2(fields["n_embed"], fields["embed_dim"],
                                           beta=config.model.codebook.beta, legacy=False),
        quant_conv=torch.nn.Conv2d(dd["z_channels"], fields["embed_dim"], 1),
        post_quant_conv=torch.nn.Conv2d(fields["embed_dim"], dd["z_channels"], 1)))
    if state_dict is not None:
      self.modules.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    self.modules.train()
    opt = config.optimizer
    self.optimizer = torch.optim.Adam(self.modules.parameters(), lr=opt.learning_rate,
                                      betas=(opt.b1, opt.b2), eps=opt.eps)
    self.x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

  def state_dict(self) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in self.modules.state_dict().items()}

  def student_parameters(self) -> int:
    return sum(p.numel() for p in self.modules.parameters())

  def step(self) -> float:
    """One training step; its loss."""
    m = self.modules
    quant, codebook_loss, _ = m.quantize(m.quant_conv(m.encoder(self.x)))
    reconstruction = m.decoder(m.post_quant_conv(quant))
    loss = (self.x - reconstruction).abs().mean() + codebook_loss.mean()
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    return loss.item()


def _images(config, batch_size: int) -> np.ndarray:
  """The batch both sides step on, one view."""
  return versus.synthetic_images(config, batch_size, same_views=False)[:, 0]


def _make_start(job: dict, work: str) -> None:
  """taming's seeded initial weights and, with `vq`, ours imported from them."""
  config = job["config"]
  theirs = Taming(job["official"], config, _images(config, job["batch_size"]), threads=1)
  state_dict = theirs.state_dict()
  versus.save_start(work, state_dict)
  if config.model.codebook.mode == "vq":
    write_ours_start(state_dict, config, work)


def write_ours_start(state_dict: dict[str, np.ndarray], config, work: str) -> None:
  """Our parameters imported from taming's `state_dict`, where our side starts."""
  from sgc_jax.convert import taming as taming_import
  from sgc_jax.tools import synthetic
  model_config = synthetic.make_trainer(config).model_config
  versus.write_ours_start(taming_import.convert(state_dict, model_config, "taming's start"),
                          work)


def _run_taming(job: dict, work: str, perturbed: bool = False) -> dict:
  import torch
  config = job["config"]
  theirs = Taming(job["official"], config, _images(config, job["batch_size"]),
                  versus.available_cores(), versus.read_start(work, perturbed))
  losses, seconds = versus.warm_then_timed(theirs.step, job["warmup"], job["steps"])
  return {"losses": losses, "seconds": seconds, "parameters": theirs.student_parameters(),
          "version": f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"}


SIDES = versus.sides(_make_start, _run_taming)


# ------------------------------------------------------------------ the race


def table(official_path: str | None, config, batch_size: int, steps: int,
          rounds: int = versus.ROUNDS) -> tuple[str, list, list]:
  """(a line about the run, table header, table rows)."""
  path = check_official(official_path)
  config = like_for_like(config)
  versus.need_torch("versus-taming")
  vq = config.model.codebook.mode == "vq"
  job = versus.new_job(config, path, batch_size, steps, same_views=False)
  runs, floor = versus.race(__name__, "versus-taming", job, rounds, same_start=vq)
  rate, per_round = versus.rates(runs, batch_size, steps)
  ours, theirs = runs["ours"][0], runs["official"][0]
  model, simd = versus.cpu_description(versus.read_cpuinfo())
  header = ["CPU", "SIMD", "threads", "batch", "px", "ours images/s", "taming images/s",
            "ours/taming", "ours per round", "taming per round", "params M (ours, taming)",
            "final loss (ours, taming)", "loss, max rel. diff", "taming vs itself (1 ulp)"]
  row = [model, simd, versus.available_cores(), batch_size, config.data.image_size,
         rate["ours"], rate["official"], rate["ours"] / rate["official"], per_round["ours"],
         per_round["official"],
         f"{ours['parameters'] / 1e6:.2f}, {theirs['parameters'] / 1e6:.2f}",
         f"{ours['losses'][-1]:.3f}, {theirs['losses'][-1]:.3f}",
         *versus.agreement(runs, floor)]
  m = config.model
  about = (f"VQGAN train step, ours ({m.codebook.mode} quantizer; {ours['version']}, "
           f"compiled in {ours['compile_seconds']:.1f} s) vs taming-transformers' modules "
           f"(VectorQuantizer2, legacy=False; {theirs['version']}): ch {m.ch}, ch_mult "
           f"{tuple(m.ch_mult)}, {m.num_res_blocks} res block(s), attention at "
           f"{tuple(m.attn_resolutions)}, z {m.z_channels}, K {m.codebook.num_codes}, float32, "
           f"L1 + codebook terms, Adam at a constant rate; "
           + ("the same start (taming's weights imported), " if vq else "")
           + f"{rounds} rounds, each side in its own process: {versus.WARMUP_STEPS} warm-up "
           f"steps, then {steps} timed; the losses compared over all "
           f"{versus.WARMUP_STEPS + steps} steps; malloc: {hugepages.describe()}.")
  losses = [r["losses"][-1] for v in runs.values() for r in v]
  if not all(map(math.isfinite, losses)):
    about += " NOTE: a loss is not finite."
  return about, header, [row]


if __name__ == "__main__":
  versus.side_main(SIDES, sys.argv)
