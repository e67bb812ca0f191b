"""SlotCon heads, semantic grouping and losses (Wen et al., arXiv 2205.15288).

Pure Flax modules and pure functions that follow the official PyTorch code
(CVMI-Lab/SlotCon: `models/slotcon.py`, `main_pretrain.py`, `scripts/`). The
backbone, RoIAlign / un-flipping, the teacher EMA and the train loop live
elsewhere.

Official hyper-parameters (argparse defaults of `main_pretrain.py`; the released
scripts use the same values except `num_prototypes` 2048 on ImageNet):
  dim_hidden         4096   hidden width of the projector and the slot predictor
  dim_out             256   projector output = prototype = slot dimension
  num_prototypes      256   (COCO / COCO+; 2048 in the ImageNet scripts)
  teacher_momentum   0.99   EMA base, raised to 1 by a cosine (core.ema.cosine_momentum)
  teacher_temp       0.07   grouping softmax (student AND teacher grouping) and
                            the teacher side of the group loss
  student_temp        0.1   student side of the group loss
  center_momentum     0.9   EMA of the teacher centre
  group_loss_weight   0.5   loss = w·group + (1 - w)·contrast
Fixed in the official code (keyword arguments here):
  DINOHead / DINOHead2d: nlayers 3, use_bn True, GELU (exact erf form),
    BatchNorm eps 1e-5, momentum 0.1 (torch) = 0.9 (flax), every Linear / 1x1
    Conv with a bias; weights trunc_normal(std 0.02, cut at ±2 absolute), biases
    0; no weight-norm and no l2-normalisation inside the heads.
  SemanticGrouping: prototypes N(0, 1) (nn.Embedding), eps 1e-6 added to the
    soft assignment, temp 0.07 (the module default, and teacher_temp as SlotCon
    passes it).
  Slot contrast: tau 0.2, loss scaled by 2·tau.
  F.normalize eps 1e-12.

Layouts: feature maps NHWC [B, H, W, C]; `dots` [B, H, W, K] (the official
[B, K, H, W] with K moved last); slots [B, K, D]. Under `jax.jit` with the batch
sharded over a mesh every mean / BatchNorm statistic is over the global batch,
which is the official SyncBN / all_reduce / all_gather.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sgc_jax.models import conv as conv_lib
from sgc_jax.models.resnet import ResNet
from sgc_jax.ops.vectors import l2_normalize  # torch's F.normalize (also parts.l2_normalize)

# A finite stand-in for -inf: exp() of it is exactly 0, and gradients stay finite
# even on rows where every column is masked.
_MASKED_LOGIT = -1e30


def _trunc_normal(std: float = 0.02, bound: float = 2.0):
  # torch's trunc_normal_(std=.02) cuts at ±2 in absolute units (±100 std);
  # jax's bounds are in units of std.
  return nn.initializers.truncated_normal(stddev=std, lower=-bound / std, upper=bound / std)


class _Head(nn.Module):
  """(layer → BN → GELU) × (nlayers - 1), then layer → bottleneck. The heads
  below differ in the layer only: each defines `_layer(width, index)`."""
  use_bn: bool = True
  nlayers: int = 3
  hidden_dim: int = 4096
  bottleneck_dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask: jax.Array | None = None):
    nlayers = max(self.nlayers, 1)
    widths = [self.hidden_dim] * (nlayers - 1) + [self.bottleneck_dim]
    if mask is not None:
      mask = jnp.asarray(mask, bool)[..., None]
    for i, width in enumerate(widths):
      x = self._layer(width, i)(x)
      if i < nlayers - 1:
        if self.use_bn:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           use_fast_variance=False, dtype=self.dtype, name=f"bn_{i}")(x, mask=mask)
        x = nn.gelu(x, approximate=False)
    return x


class DINOHead(_Head):
  """The official MLP head over vectors [..., in_dim] -> [..., bottleneck_dim].

  `mask` [...] (optional) picks the rows the BatchNorm statistics are taken over
  in train mode: the official predictor runs on the selected slots only.
  """

  def _layer(self, width, index):
    return nn.Dense(width, dtype=self.dtype, kernel_init=_trunc_normal(),
                    bias_init=nn.initializers.zeros, name=f"linear_{index}")


class DINOHead2d(_Head):
  """The official head with 1x1 convolutions: [B, H, W, in_dim] -> [B, H, W, bottleneck_dim].

  BatchNorm statistics are over (B, H, W), as BatchNorm2d; `mask` [B, H, W] as in
  `DINOHead`.
  """

  def _layer(self, width, index):
    return nn.Conv(width, (1, 1), padding=0, dtype=self.dtype, kernel_init=_trunc_normal(),
                   bias_init=nn.initializers.zeros, name=f"conv_{index}",
                   conv_general_dilated=conv_lib.conv_general_dilated)


class SemanticGrouping(nn.Module):
  """Prototypes [K, D] soft-assign pixels; slots = assignment-weighted pooling.

  x [B, H, W, D] -> (slots [B, K, D], dots [B, H, W, K]); `dots` are the cosine
  similarities of pixels and prototypes. Slots pool the unnormalised features;
  no projection is applied to them here (the official predictor runs in the
  contrastive loss, on the student's slots only).
  """
  num_prototypes: int = 256
  dim: int = 256
  temp: float = 0.07
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    if x.shape[-1] != self.dim:
      raise ValueError(f"SemanticGrouping: features have {x.shape[-1]} channels, dim={self.dim}")
    prototypes = self.param("slot_embed", nn.initializers.normal(1.0),
                            (self.num_prototypes, self.dim))
    x = x.astype(jnp.float32)
    dots = jnp.einsum("kd,bhwd->bhwk", l2_normalize(prototypes), l2_normalize(x))
    attn = jax.nn.softmax(dots / self.temp, axis=-1) + self.eps
    attn = attn / jnp.sum(attn, axis=(1, 2), keepdims=True)
    slots = jnp.einsum("bhwd,bhwk->bkd", x, attn)
    return slots, dots


def group_loss(student_dots: jax.Array, teacher_dots: jax.Array, center: jax.Array, *,
               student_temp: float = 0.1, teacher_temp: float = 0.07) -> jax.Array:
  """Cross-view group loss (official `self_distill`), a scalar.

  student_dots, teacher_dots [..., K] (e.g. [B, H, W, K]), already aligned to the
  overlap and un-flipped by the caller: the student's dots of one view against
  the teacher's of the other. Mean over all leading positions of
  H(softmax((t - center) / teacher_temp), log_softmax(s / student_temp)).
  center [K] or [1, K]. The teacher side carries no gradient.
  """
  k = student_dots.shape[-1]
  log_p = jax.nn.log_softmax(student_dots.astype(jnp.float32) / student_temp, axis=-1)
  target = jax.nn.softmax(
      (teacher_dots.astype(jnp.float32) - center.reshape(k)) / teacher_temp, axis=-1)
  target = lax.stop_gradient(target)
  return jnp.mean(jnp.sum(-target * log_p, axis=-1))


def update_center(center: jax.Array, teacher_dots: jax.Array | Sequence[jax.Array],
                  momentum: float = 0.9) -> jax.Array:
  """EMA of the teacher centre (official `update_center`).

  teacher_dots: one array [..., K] or a sequence of them (the official passes both
  views' raw teacher dots, not the aligned ones); every pixel of every view
  weighs the same in the batch mean. Returns the new centre, shaped as `center`
  (official buffer: zeros [1, K]).
  """
  views = teacher_dots if isinstance(teacher_dots, (list, tuple)) else (teacher_dots,)
  k = center.shape[-1]
  total = sum(jnp.sum(v.reshape(-1, k).astype(jnp.float32), axis=0) for v in views)
  count = sum(v.size // k for v in views)
  batch_center = (total / count).reshape(center.shape)
  return lax.stop_gradient(center * momentum + batch_center * (1. - momentum))


def slot_validity(dots: jax.Array) -> jax.Array:
  """dots [B, H, W, K] -> [B, K] bool: prototype k wins (argmax) some pixel of image b."""
  k = dots.shape[-1]
  winners = jnp.argmax(dots, axis=-1)
  return lax.stop_gradient(jnp.any(winners[..., None] == jnp.arange(k), axis=(1, 2)))


def masked_info_nce(queries: jax.Array, keys: jax.Array, labels: jax.Array,
                    row_valid: jax.Array, col_valid: jax.Array, *, tau: float = 0.2,
                    row_group: jax.Array | None = None, num_groups: int = 1) -> jax.Array:
  """2·tau · mean over valid rows of CE(norm(queries) · norm(keys)ᵀ / tau, labels).

  queries [M, D], keys [N, D], labels [M] (column of each row's positive),
  row_valid [M], col_valid [N]. Invalid columns get exactly zero probability;
  invalid rows are left out of the mean; neither changes the loss or its
  gradient. With `num_groups` > 1 the mean is taken within each group of rows
  (`row_group` [M] in [0, num_groups)) and the group means are averaged, as the
  official per-GPU loss averaged by DDP; an empty group counts as 0 (official:
  NaN). Keys carry no gradient (teacher).
  """
  q = l2_normalize(queries.astype(jnp.float32))
  k = lax.stop_gradient(l2_normalize(keys.astype(jnp.float32)))
  logits = jnp.einsum("nc,mc->nm", q, k) / tau
  logits = jnp.where(col_valid[None, :], logits, _MASKED_LOGIT)
  positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  ce = jnp.where(row_valid, jax.nn.logsumexp(logits, axis=1) - positive, 0.)
  weight = row_valid.astype(jnp.float32)
  if num_groups == 1:
    loss = jnp.sum(ce) / jnp.maximum(jnp.sum(weight), 1.)
  else:
    groups = jax.nn.one_hot(row_group, num_groups, dtype=jnp.float32)
    loss = jnp.mean((ce @ groups) / jnp.maximum(weight @ groups, 1.))
  return loss * (2. * tau)


def slot_contrast_loss(pred_q: jax.Array, slots_k: jax.Array, valid_q: jax.Array,
                       valid_k: jax.Array, *, tau: float = 0.2,
                       num_groups: int = 1) -> jax.Array:
  """Slot-level InfoNCE (official `ctr_loss_filtered`), masked over all B·K slots.

  pred_q [B, K, D]: the student's slots of view a through the predictor, which
    must have run with `mask=valid_q & valid_k` (the official predictor sees the
    selected slots only, so its BatchNorm statistics are over those).
  slots_k [B, K, D]: the teacher's slots of view b.
  valid_q, valid_k [B, K]: `slot_validity` of the student's dots of view a and of
    the teacher's dots of view b.
  Rows: slots valid in both; columns (keys, the whole global batch): slots valid
  in view b; the positive of slot (b, k) is the key (b, k). num_groups: 1 = mean
  over the global batch; the official world size = the official per-GPU means
  averaged (groups of B / num_groups consecutive images).
  Memory and compute are O((B·K)²); see `select_slots` for a fixed-capacity path.
  """
  b, k, d = pred_q.shape
  if b % num_groups:
    raise ValueError(f"slot_contrast_loss: batch {b} not divisible by num_groups={num_groups}")
  n = b * k
  rows = jnp.arange(n)
  return masked_info_nce(
      pred_q.reshape(n, d), slots_k.reshape(n, d), rows,
      (valid_q & valid_k).reshape(n), valid_k.reshape(n), tau=tau,
      row_group=rows // (n // num_groups), num_groups=num_groups)


class SlotSelection(NamedTuple):
  """Fixed-capacity stand-in for the official nonzero + gather (`select_slots`)."""
  row_index: jax.Array  # [Cq] flat slot index (b·K + k) of each query row
  row_valid: jax.Array  # [Cq] bool
  col_index: jax.Array  # [Ck] flat slot index of each key column
  col_valid: jax.Array  # [Ck] bool
  labels: jax.Array  # [Cq] column of each row's positive


def select_slots(valid_q: jax.Array, valid_k: jax.Array, capacity_q: int,
                 capacity_k: int) -> SlotSelection:
  """The first `capacity_q` rows (valid_q & valid_k) and `capacity_k` keys (valid_k).

  Same order and labels as the official code; equal to `slot_contrast_loss` when
  the capacities hold every valid slot. Rows and keys past a capacity are
  dropped (a row whose positive was dropped too). Use:
    q = predictor(slots_q.reshape(-1, D)[sel.row_index], train, mask=sel.row_valid)
    masked_info_nce(q, slots_k.reshape(-1, D)[sel.col_index], sel.labels,
                    sel.row_valid, sel.col_valid, row_group=sel.row_index // (B/G·K), ...)
  """
  rows = (valid_q & valid_k).reshape(-1)
  cols = valid_k.reshape(-1)
  row_index = jnp.nonzero(rows, size=capacity_q, fill_value=0)[0]
  col_index = jnp.nonzero(cols, size=capacity_k, fill_value=0)[0]
  row_valid = jnp.arange(capacity_q) < jnp.sum(rows)
  col_valid = jnp.arange(capacity_k) < jnp.sum(cols)
  labels = jnp.cumsum(cols.astype(jnp.int32))[row_index] - 1
  row_valid = row_valid & (labels < capacity_k)
  labels = jnp.clip(labels, 0, capacity_k - 1)
  return SlotSelection(row_index, row_valid, col_index, col_valid, labels)


def total_loss(group_ab: jax.Array, group_ba: jax.Array, contrast_ab: jax.Array,
               contrast_ba: jax.Array, *, group_loss_weight: float = 0.5) -> jax.Array:
  """w·(group losses of both directions) + (1 - w)·(contrast losses of both)."""
  return (group_loss_weight * (group_ab + group_ba) +
          (1. - group_loss_weight) * (contrast_ab + contrast_ba))


class SlotConNet(nn.Module):
  """Encoder -> projector -> grouping: (slots [B,K,D], dots [B,h,w,K])."""
  depth: int
  dilation: tuple[bool, bool, bool]
  dim_hidden: int
  dim_out: int
  num_prototypes: int
  teacher_temp: float
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = ResNet(depth=self.depth, replace_stride_with_dilation=self.dilation,
                          dtype=self.dtype)
    self.projector = DINOHead2d(hidden_dim=self.dim_hidden, bottleneck_dim=self.dim_out,
                                      dtype=self.dtype)
    self.grouping = SemanticGrouping(self.num_prototypes, self.dim_out, self.teacher_temp)

  def __call__(self, x, train: bool = False):
    return self.grouping(self.projector(self.encoder(x, train=train), train=train))

  def features(self, x):
    """The backbone's features [B, h, w, C] (what transfer uses)."""
    return self.encoder(x, train=False)

  def features_and_assignments(self, x):
    """Inference: the backbone's features and the prototype assignments."""
    features = self.encoder(x, train=False)
    _, dots = self.grouping(self.projector(features, train=False))
    return features, dots
