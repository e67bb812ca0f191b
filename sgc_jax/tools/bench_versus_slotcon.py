"""Our SlotCon train step against the official PyTorch one, on this CPU.

    python -m sgc_jax.tools.bench versus-slotcon --official=PATH [--batch_size=16]
        [--steps=5] [--config=configs/slotcon_scenes.py[:size=32]]

PATH is a checkout of github.com/CVMI-Lab/SlotCon; its `models/slotcon.py`,
`models/resnet.py`, `utils/lars.py` and `utils/lr_scheduler.py` are imported
from there as they are (nothing of it is copied here). Both sides build the same
network from one config (`configs/slotcon_scenes.py` unless --config): ResNet of
`model.depth`, heads of `model.dim_hidden` / `model.dim_out`, `model.num_prototypes`
prototypes, in float32 on a synthetic two-view batch whose views coincide (so
the group loss aligns the whole maps), and step with LARS of the config's
hyper-parameters under the official warm-up + cosine schedule.

The race is `sgc_jax.tools.versus`'s: both sides start from the same weights
(the official model seeded, our student, teacher and centre imported from its
state dict by `sgc_jax.convert.slotcon`), each runs alone in its own process,
alternating, after a warm-up, and the table prints the largest relative
difference of their per-step losses beside the official side's own float32
noise.

What the official code needs to run here, and what this module does about it:
- `torch.distributed` (the centre's all-reduce, the slot contrast's all-gather,
  its rank): a one-process gloo group on 127.0.0.1.
- SyncBatchNorm (`convert_sync_batchnorm` in `SlotCon.__init__`) refuses CPU
  tensors once a process group exists: its layers are put back to plain batch
  norm (the same parameters and buffers), which is what SyncBN computes in a
  group of one anyway.
- DistributedDataParallel is left out: in a group of one it would only add an
  all-reduce of the gradients with itself.
- `torchvision.ops.roi_align` (in `SlotCon.invaug`): torchvision when it
  imports; the PyPI torchvision wheels are CUDA builds that do not load with
  the CPU torch wheel, so otherwise a stand-in in PyTorch ops with
  torchvision's definition (the one `sgc_jax.models.roi_align` documents).
- No autocast or GradScaler (the official --fp16 is CUDA mixed precision).
The table says which of these applied.

Architecture: the official ResNet-18/34 has no dilation, so our
`model.dilation` is set to (False, False, False) here; `model.contrast_capacity`
to 0 (the official contrast is over every slot). The parameter counts of both
students are printed as a check that the networks match.

Threads: PyTorch is given one intra-op thread per core available to the
process; XLA's CPU client sizes its pool the same way by default.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import socket
import sys
import types
import warnings

import numpy as np

from sgc_jax.runtime import hugepages
from sgc_jax.tools import versus
from sgc_jax.tools.versus import BenchError

# What the official SlotCon.__init__ (and its momentum schedule) reads from `args`.
OFFICIAL_MODEL_FIELDS = (
    "arch", "dim_hidden", "dim_out", "num_prototypes", "teacher_momentum", "teacher_temp",
    "student_temp", "center_momentum", "group_loss_weight", "num_instances", "world_size",
    "batch_size", "epochs", "start_epoch")
# The official files this module imports, relative to the checkout.
OFFICIAL_FILES = ("models/slotcon.py", "models/resnet.py", "utils/lars.py",
                  "utils/lr_scheduler.py")


def check_official(path: str | None) -> str:
  return versus.check_checkout(path, OFFICIAL_FILES, "versus-slotcon", "CVMI-Lab/SlotCon")


def like_for_like(config):
  """A copy of a SlotCon config with what the official network can also build:
  no dilation, the slot contrast over every slot, float32."""
  config = config.copy_and_resolve_references()
  if config.get("method") != "slotcon":
    raise BenchError(f"versus-slotcon needs a SlotCon config, got method "
                      f"{config.get('method')!r}")
  with config.unlocked():
    config.model.dilation = (False, False, False)
    config.model.contrast_capacity = 0
    config.model.dtype = "float32"
  return config


def official_args(config, batch_size: int) -> argparse.Namespace:
  """The `args` of the official model, optimizer and scheduler for `config`.

  Its schedules count epochs; here an epoch is one step (num_instances =
  batch_size, epochs = total_steps), so the teacher's momentum runs over
  K = total_steps and the warm-up over optimizer.warmup_steps, as ours."""
  m, opt = config.model, config.optimizer
  if opt.name != "lars":
    raise BenchError(f"versus-slotcon steps LARS as the official recipe; the config has "
                      f"optimizer.name={opt.name!r}")
  start = opt.get("warmup_start_fraction", 0.01)
  return argparse.Namespace(
      arch=f"resnet{m.depth}", dim_hidden=m.dim_hidden, dim_out=m.dim_out,
      num_prototypes=m.num_prototypes, teacher_momentum=m.teacher_momentum,
      teacher_temp=m.teacher_temp, student_temp=m.student_temp,
      center_momentum=m.center_momentum, group_loss_weight=m.group_loss_weight,
      num_instances=batch_size, world_size=1, batch_size=batch_size,
      epochs=config.total_steps, start_epoch=1,
      # main_pretrain.py's lr is batch_size * world_size / 256 * base_lr: ours.
      base_lr=opt.learning_rate * 256 / batch_size, weight_decay=opt.weight_decay,
      momentum=opt.momentum, eta=opt.trust_coefficient, optimizer="lars",
      warmup_epoch=opt.warmup_steps if start < 1 else 0,
      # GradualWarmupScheduler starts at lr / multiplier (which must be > 1); a
      # warm-up from 0 is approached by a large one.
      warmup_multiplier=max(2, round(1 / start)) if start > 0 else 10**6)


# ------------------------------------------------------------------ the official side


def roi_align_torch(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1,
                    aligned=False):
  """torchvision.ops.roi_align (boxes [R, 5]: batch index, x1, y1, x2, y2) in
  PyTorch ops, for when torchvision does not load: bilinear sampling and the bin
  average are separable, so each box is two interpolation matrices."""
  import torch
  out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
  boxes = boxes.detach()  # as torchvision: no gradient to the boxes
  index = boxes[:, 0].long()
  offset = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (boxes[:, k] * spatial_scale - offset for k in range(1, 5))

  def matrices(start, length, size, bins):
    if not aligned:
      length = length.clamp(min=1.0)
    bin_size = length / bins
    if sampling_ratio > 0:
      grid = torch.full_like(length, float(sampling_ratio))
    else:
      grid = torch.ceil(length / bins)
    most = max(int(grid.max().item()), 1) if grid.numel() else 1
    p = torch.arange(bins, dtype=input.dtype)[None, :, None]
    i = torch.arange(most, dtype=input.dtype)[None, None, :]
    g = grid[:, None, None]
    coord = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * (
        bin_size[:, None, None] / g.clamp(min=1.0))
    used = (i < g) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0.0)
    low = torch.floor(coord).long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low.to(coord.dtype), coord)
    frac = coord - low
    weights = torch.zeros(coord.shape + (size,), dtype=input.dtype)
    mask = used.to(input.dtype)
    weights.scatter_add_(-1, low[..., None], ((1 - frac) * mask)[..., None])
    weights.scatter_add_(-1, high[..., None], (frac * mask)[..., None])
    # [R, bins, size]: the samples' average per bin.
    return weights.sum(2) / g.clamp(min=1.0)

  height, width = input.shape[-2:]
  along_y = matrices(y1, y2 - y1, height, out_h)
  along_x = matrices(x1, x2 - x1, width, out_w)
  return torch.einsum("rpy,rcyx,rqx->rcpq", along_y, input[index], along_x)


@contextlib.contextmanager
def _torchvision_or_stand_in(notes: list[str]):
  """`import torchvision` inside the block gives torchvision, or where it does
  not load, a module with `ops.roi_align` = roi_align_torch (removed after)."""
  try:
    import torchvision  # noqa: F401
    reason = None
  except Exception as e:  # ImportError, or a CUDA build's RuntimeError on CPU torch
    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]  # a half-imported torchvision
  if reason is None:
    notes.append("torchvision roi_align")
    yield
    return
  stand_in = types.ModuleType("torchvision")
  stand_in.ops = types.SimpleNamespace(roi_align=roi_align_torch)
  sys.modules["torchvision"] = stand_in
  notes.append(f"roi_align: a PyTorch stand-in (torchvision did not load: {reason})")
  try:
    yield
  finally:
    if sys.modules.get("torchvision") is stand_in:
      del sys.modules["torchvision"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def plain_batch_norm(module, notes: list[str] | None = None):
  """`module` with every SyncBatchNorm replaced in place by a batch norm of any
  rank holding the same parameters and buffers (SyncBN needs CUDA)."""
  import torch

  class BatchNormNd(torch.nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, input):
      if input.dim() < 2:
        raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

  count = 0

  def convert(parent):
    nonlocal count
    for name, child in list(parent.named_children()):
      if isinstance(child, torch.nn.SyncBatchNorm):
        plain = BatchNormNd(child.num_features, child.eps, child.momentum, child.affine,
                            child.track_running_stats)
        # The same Parameter objects: their requires_grad (False on the
        # teacher) and the zip order of the momentum update are kept.
        if child.affine:
          plain.weight, plain.bias = child.weight, child.bias
        if child.track_running_stats:
          plain.running_mean, plain.running_var = child.running_mean, child.running_var
          plain.num_batches_tracked = child.num_batches_tracked
        plain.train(child.training)
        setattr(parent, name, plain)
        count += 1
      else:
        convert(child)

  convert(module)
  if notes is not None and count:
    notes.append(f"SyncBatchNorm -> BatchNorm ({count} layers)")
  return module


class Official:
  """The official model, LARS and scheduler in a one-process gloo group."""

  def __init__(self, path: str, config, images, threads: int, state_dict=None):
    """images: [B, 2, H, W, 3] float32, the two views (ours' layout);
    state_dict: the model's start (None: its seeded initialisation)."""
    import torch
    import torch.distributed as dist
    self.torch = torch
    torch.set_num_threads(threads)
    self.notes: list[str] = []
    if not dist.is_initialized():
      dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}",
                              rank=0, world_size=1)
      self.notes.append("one-process gloo group")
    with _torchvision_or_stand_in(self.notes):
      slotcon = versus.load_official(path, "models/slotcon.py",
                                     "slotcon_official_models_slotcon")
    resnet = versus.load_official(path, "models/resnet.py", "slotcon_official_models_resnet")
    lars = versus.load_official(path, "utils/lars.py", "slotcon_official_utils_lars")
    schedulers = versus.load_official(path, "utils/lr_scheduler.py",
                                      "slotcon_official_utils_lr_scheduler")
    batch_size = images.shape[0]
    self.args = args = official_args(config, batch_size)
    torch.manual_seed(config.seed)
    self.model = plain_batch_norm(slotcon.SlotCon(resnet.__dict__[args.arch], args), self.notes)
    if state_dict is not None:
      self.model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    self.model.train()
    lr = args.batch_size * args.world_size / 256 * args.base_lr  # main_pretrain.build_model
    self.optimizer = lars.LARS(self.model.parameters(), lr=lr, weight_decay=args.weight_decay,
                               momentum=args.momentum, eta=args.eta)
    with warnings.catch_warnings():  # the schedulers' own notes on their first step
      warnings.simplefilter("ignore")
      self.scheduler = schedulers.get_scheduler(self.optimizer, 1, args)
    crops = [torch.from_numpy(images[:, v].transpose(0, 3, 1, 2).copy()) for v in range(2)]
    # Ours' boxes: the views are the whole image (their overlap: the whole
    # crop), nothing flipped.
    coords = [torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(batch_size, 1) for _ in range(2)]
    flags = [torch.zeros(batch_size, dtype=torch.bool) for _ in range(2)]
    self.batch = (crops, coords, flags)

  def state_dict(self) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}

  def student_parameters(self) -> int:
    return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

  def step(self) -> float:
    """main_pretrain.train's body without autocast/GradScaler (fp32); its loss."""
    loss = self.model(self.batch)
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self.scheduler.step()
    return loss.item()

  def close(self) -> None:
    import torch.distributed as dist
    if dist.is_initialized():
      dist.destroy_process_group()



# ------------------------------------------------------------------ the sides


def _images(config, batch_size: int) -> np.ndarray:
  """The batch both sides step on: two identical views (their boxes are the
  whole image). As overlapping crops, the student's and the teacher's slots
  then mostly agree, so the slot contrast has its usual rows; independent noise
  views leave it almost none (and the official predictor's batch norm can then
  see a single row, which it refuses)."""
  return versus.synthetic_images(config, batch_size, same_views=True)


def _make_start(job: dict, work: str) -> None:
  """The official model's seeded initial state, and ours imported from it."""
  from sgc_jax.convert import slotcon as slotcon_import
  config = job["config"]
  theirs = Official(job["official"], config, _images(config, job["batch_size"]), threads=1)
  state_dict = theirs.state_dict()
  theirs.close()
  versus.save_start(work, state_dict)
  versus.write_ours_start(slotcon_import.convert(state_dict, config.model, "the official start"),
                          work)


def _run_official(job: dict, work: str, perturbed: bool = False) -> dict:
  import torch
  config = job["config"]
  theirs = Official(job["official"], config, _images(config, job["batch_size"]),
                    versus.available_cores(), versus.read_start(work, perturbed))
  try:
    losses, seconds = versus.warm_then_timed(theirs.step, job["warmup"], job["steps"])
  except ValueError as e:
    if "more than 1 value per channel" not in str(e):
      raise
    side = -(-config.data.image_size // 32)  # the stride of an undilated ResNet
    raise BenchError(
        f"the official step failed: its slot predictor's BatchNorm1d got a single slot "
        f"pair ({str(e).splitlines()[0]}); at {config.data.image_size} px its encoder "
        f"map is {side} x {side}, where one valid pair per batch is likely: use a "
        f"larger image size or batch") from None
  finally:
    theirs.close()
  return {"losses": losses, "seconds": seconds, "parameters": theirs.student_parameters(),
          "version": f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads",
          "notes": theirs.notes}


SIDES = versus.sides(_make_start, _run_official)


# ------------------------------------------------------------------ the race


def table(official_path: str | None, config, batch_size: int, steps: int,
          rounds: int = versus.ROUNDS) -> tuple[str, list, list]:
  """(a line about the run, table header, table rows)."""
  path = check_official(official_path)
  config = like_for_like(config)
  versus.need_torch("versus-slotcon")
  job = versus.new_job(config, path, batch_size, steps, same_views=True)
  runs, floor = versus.race(__name__, "versus-slotcon", job, rounds, same_start=True)
  images = batch_size * config.data.num_views  # views count, as `bench train`
  rate, per_round = versus.rates(runs, images, steps)
  ours, theirs = runs["ours"][0], runs["official"][0]
  model, simd = versus.cpu_description(versus.read_cpuinfo())
  params = (ours["parameters"], theirs["parameters"])
  header = ["CPU", "SIMD", "threads", "batch x views", "px", "ours images/s",
            "official images/s", "ours/official", "ours per round", "official per round",
            "params M (ours, official)", "final loss (ours, official)", "loss, max rel. diff",
            "official vs itself (1 ulp)"]
  row = [model, simd, versus.available_cores(), f"{batch_size} x {config.data.num_views}",
         config.data.image_size, rate["ours"], rate["official"],
         rate["ours"] / rate["official"], per_round["ours"], per_round["official"],
         f"{params[0] / 1e6:.3f}, {params[1] / 1e6:.3f}",
         f"{ours['losses'][-1]:.3f}, {theirs['losses'][-1]:.3f}",
         *versus.agreement(runs, floor)]
  m = config.model
  about = (f"SlotCon train step, ours ({ours['version']}, compiled in "
           f"{ours['compile_seconds']:.1f} s) vs official ({theirs['version']}): "
           f"ResNet-{m.depth} without dilation, dim_hidden {m.dim_hidden}, dim_out "
           f"{m.dim_out}, {m.num_prototypes} prototypes, float32, LARS; the same start (the "
           f"official weights imported); {rounds} rounds, each side in its own process: "
           f"{versus.WARMUP_STEPS} warm-up steps, then {steps} timed; the losses compared "
           f"over all {versus.WARMUP_STEPS + steps} steps. Official code adapted for CPU: "
           f"{'; '.join(theirs['notes'])}; no DDP, no autocast; malloc: "
           f"{hugepages.describe()}.")
  if params[0] != params[1]:
    about += f" NOTE: the students' parameter counts differ ({params[0]} vs {params[1]})."
  losses = [r["losses"][-1] for v in runs.values() for r in v]
  if not all(map(math.isfinite, losses)):
    about += " NOTE: a loss is not finite."
  return about, header, [row]


if __name__ == "__main__":
  versus.side_main(SIDES, sys.argv)
