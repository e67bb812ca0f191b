"""The codebook: `vq` (learned by gradient), `ema` (online k-means), `sgc` (Semantic
Online Clustering).

Tokens arrive as [S, M, D]: S groups (the batch shards; 1 on one device) of M
tokens. Everything that touches all K codes runs as a `lax.scan` over chunks of
`chunk_size` tokens per group, so memory is O(S·chunk·K), never O(tokens·K).
Statistics are accumulated per group in the scan's carry and summed over S once
at the end: under `jax.jit` on a batch sharded over S, that sum is the one
cross-device reduction of the step.

The state of `ema` and `sgc` lives outside the gradient (the `codebook` Flax
collection): centres E [K,D], EMA counts n [K], EMA sums S [K,D], each code's
class c [K], an EMA class histogram H [K,C], and the tokens each code missed
since it last won one [K] (dead-code detection).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgc_jax.ops.grids import UNLABELED

MODES = ("vq", "ema", "sgc")
SEMANTIC_MAPS = ("nearest_code", "posterior")
# How the semantic loss weighs a labelled token by its class (`class_balance`).
CLASS_BALANCES = ("none", "median_frequency")


@dataclasses.dataclass(frozen=True)
class CodebookConfig:
  mode: str = "sgc"
  num_codes: int = 1024
  dim_sem: int = 32  # z = [z_sem ; z_det]
  dim_det: int = 32
  num_classes: int = 1  # semantic classes (sgc); 1 for vq / ema
  w_sem: float = 1.0  # multi-level distance weights
  w_det: float = 1.0
  distance: str = "l2"  # or "cosine": each part l2-normalised first
  beta: float = 0.25  # commitment
  decay: float = 0.99  # EMA
  epsilon: float = 1e-5  # Laplace smoothing of counts
  chunk_size: int = 1024  # tokens per group per scan step
  # A code is dead (and restarted) once it has missed `dead_after_tokens`
  # tokens, i.e. its class brought that many tokens per code (its fair share)
  # since it last won one; or when its EMA count is under `dead_fraction` of
  # its fair share (a code that wins only now and then).
  dead_after_tokens: float = 64.0
  dead_fraction: float = 0.03
  restart_noise: float = 0.01
  semantic_weight: float = 0.1
  semantic_temperature: float = 1.0
  consistency_weight: float = 0.1
  consistency_temperature: float = 1.0
  consistency_sharpen: float = 0.5  # target temperature = this × the student's
  # The semantic map at inference (sgc): the class of the nearest code over the
  # whole distance, or argmax_c p(c|z), the posterior the semantic loss trains.
  semantic_map: str = "nearest_code"
  # The semantic loss's weight of a token of class c (`class_weights`);
  # (): every labelled token weighs 1.
  class_weights: tuple[float, ...] = ()

  @classmethod
  def from_dict(cls, fields: dict) -> "CodebookConfig":
    """From its dict form (a config's, or JSON's, whose tuples read as lists)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

  @property
  def dim(self) -> int:
    return self.dim_sem + self.dim_det

  def validate(self) -> None:
    if self.mode not in MODES:
      raise ValueError(f"codebook.mode={self.mode!r}: must be one of {MODES}")
    if self.distance not in ("l2", "cosine"):
      raise ValueError(f"codebook.distance={self.distance!r}: must be l2 or cosine")
    if self.mode == "sgc" and self.num_codes < self.num_classes:
      raise ValueError(f"codebook.num_codes={self.num_codes} < {self.num_classes} "
                       "classes: sgc needs at least one code per class")
    if self.dim_sem <= 0 or self.dim_det < 0:
      raise ValueError("codebook: need dim_sem > 0 and dim_det >= 0")
    for name in ("num_codes", "chunk_size", "epsilon", "semantic_temperature",
                 "dead_after_tokens",
                 "consistency_temperature", "consistency_sharpen", "w_sem"):
      if not getattr(self, name) > 0:
        raise ValueError(f"codebook.{name}={getattr(self, name)!r}: must be positive")
    for name in ("w_det", "beta", "dead_fraction", "restart_noise", "semantic_weight",
                 "consistency_weight"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"codebook.{name}={getattr(self, name)!r}: must be >= 0")
    if not 0 <= self.decay < 1:
      raise ValueError(f"codebook.decay={self.decay!r}: must be in [0, 1)")
    if self.semantic_map not in SEMANTIC_MAPS:
      raise ValueError(f"codebook.semantic_map={self.semantic_map!r}: must be one of "
                       f"{SEMANTIC_MAPS}")


# ----------------------------------------------------------------- allocation


def check_allocation(alpha, min_codes, label_threshold, codebook: dict,
                      num_classes: int) -> None:
  """The codebook fields that only the trainer reads (allocation, token labels)."""
  if not (isinstance(min_codes, int) and min_codes >= 1):
    raise ValueError(f"codebook.min_codes={min_codes!r}: must be an integer >= 1 "
                     "(a class with no code gets an infinite semantic loss)")
  if not alpha >= 0:
    raise ValueError(f"codebook.alpha={alpha!r}: must be >= 0")
  if not 0 < label_threshold <= 1:
    raise ValueError(f"codebook.label_threshold={label_threshold!r}: must be in (0, 1]")
  if codebook["mode"] == "sgc" and codebook["num_codes"] < min_codes * num_classes:
    raise ValueError(f"codebook.num_codes={codebook['num_codes']} cannot give each of the "
                     f"{num_classes} classes min_codes={min_codes} codes")

def class_weights(class_frequency: np.ndarray | None, balance: str,
                  num_classes: int) -> tuple[float, ...]:
  """The semantic loss's per-class weights for `balance`: "none", (); or
  "median_frequency" (Eigen & Fergus 2015, as SegNet trains on CamVid),
  median(f) / f_c over the pixel frequencies f of the classes present, so that
  a class as frequent as the median weighs 1 and rare ones more (a class
  absent from the data weighs 0: it has no token to weigh). No frequencies
  (None): the `num_classes` classes are taken as equally frequent."""
  if balance not in CLASS_BALANCES:
    raise ValueError(f"codebook.class_balance={balance!r}: must be one of {CLASS_BALANCES}")
  if balance == "none":
    return ()
  frequency = np.asarray(np.ones(num_classes) if class_frequency is None else class_frequency,
                         np.float64)
  present = frequency > 0
  median = np.median(frequency[present]) if present.any() else 1.0
  return tuple(float(w) for w in np.where(present, median / np.where(present, frequency, 1),
                                          0.0))


def allocate_codes(class_frequency: np.ndarray, num_codes: int, alpha: float = 0.5,
                   min_codes: int = 1) -> np.ndarray:
  """Code -> class, contiguous blocks with sizes ∝ freq^alpha, at least `min_codes`.

  Largest-remainder rounding of the proportional shares, after every class gets
  its minimum. Returns int32 [num_codes].
  """
  frequency = np.asarray(class_frequency, np.float64)
  num_classes = len(frequency)
  if num_codes < min_codes * num_classes:
    raise ValueError(f"{num_codes} codes cannot give {num_classes} classes "
                     f"{min_codes} each")
  weight = np.power(np.maximum(frequency, 0.0), alpha)
  if weight.sum() <= 0:
    weight = np.ones(num_classes)
  share = weight / weight.sum()
  # Water-filling: classes whose proportional share is under the minimum keep the
  # minimum; the others split the rest in proportion.
  counts = np.full(num_classes, float(min_codes))
  active = np.ones(num_classes, bool)
  for _ in range(num_classes):
    budget = num_codes - counts[~active].sum()
    ideal = budget * share / share[active].sum()
    newly_pinned = active & (ideal < min_codes)
    if not newly_pinned.any():
      counts[active] = ideal[active]
      break
    active &= ~newly_pinned
  floor = np.floor(counts).astype(int)
  remainder = num_codes - floor.sum()
  order = np.argsort(-(counts - floor), kind="stable")
  floor[order[:remainder]] += 1
  return np.repeat(np.arange(num_classes), floor).astype(np.int32)


# ------------------------------------------------------------------ distances


def prepare_tokens(z: jax.Array, config: CodebookConfig) -> jax.Array:
  """Cosine mode normalises each part (z_sem and z_det separately); the
  multi-level weights are applied by `squared_distances`."""
  sem, det = z[..., :config.dim_sem], z[..., config.dim_sem:]
  if config.distance == "cosine":
    # rsqrt(sum + 1e-12), not ops.vectors' clamped max(sum, eps²): its own rounding.
    sem = sem * jax.lax.rsqrt(jnp.sum(sem * sem, -1, keepdims=True) + 1e-12)
    if config.dim_det:
      det = det * jax.lax.rsqrt(jnp.sum(det * det, -1, keepdims=True) + 1e-12)
  return jnp.concatenate([sem, det], -1)


def _weights(config: CodebookConfig) -> jax.Array:
  return jnp.concatenate([jnp.full((config.dim_sem,), config.w_sem, jnp.float32),
                          jnp.full((config.dim_det,), config.w_det, jnp.float32)])


def squared_distances(z: jax.Array, codes: jax.Array, weights: jax.Array) -> jax.Array:
  """Σ_d w_d (z_d − e_d)²  for z [..., D] and codes [K, D] -> [..., K]."""
  zw = z * weights
  return (jnp.sum(zw * z, -1, keepdims=True) - 2.0 * zw @ codes.T +
          jnp.sum(codes * codes * weights, -1))


def semantic_distances(z: jax.Array, codes: jax.Array, config: CodebookConfig):
  sem = slice(0, config.dim_sem)
  return squared_distances(z[..., sem], codes[:, sem],
                           jnp.ones((config.dim_sem,), jnp.float32))


# -------------------------------------------------------- chunked token scans


def _chunked(x: jax.Array, chunk: int, fill=0) -> jax.Array:
  """[S, M, ...] -> [M/chunk, S, chunk, ...] (padded), scan axis first."""
  groups, tokens = x.shape[:2]
  padded = -(-tokens // chunk) * chunk
  if padded != tokens:
    pad = [(0, 0), (0, padded - tokens)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad, constant_values=fill)
  x = x.reshape((groups, padded // chunk, chunk) + x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _unchunked(x: jax.Array, tokens: int) -> jax.Array:
  """Inverse of `_chunked` for per-token outputs: [M/chunk, S, chunk] -> [S, M]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :tokens]


@dataclasses.dataclass
class Statistics:
  """What one pass over the tokens gathers (summed over groups and chunks)."""
  assignments: jax.Array  # [S, M] int32
  counts: jax.Array  # [K]
  sums: jax.Array  # [K, D]
  class_hist: jax.Array  # [K, C]


def assign_and_gather(z: jax.Array, labels: jax.Array, weight: jax.Array,
                      codes: jax.Array, code_class: jax.Array | None,
                      config: CodebookConfig) -> Statistics:
  """Assignment of every token and the cluster statistics, in one chunked scan.

  Args:
    z: [S, M, D] prepared tokens.
    labels: [S, M] token classes, UNLABELED where unknown.
    weight: [S, M] 1 for real tokens, 0 for padding.
    codes: [K, D] centres.
    code_class: [K] class of each code; with it, a labeled token may only take a
      code of its own class (guided assignment). None: nearest code overall.
  """
  num_codes, num_classes = codes.shape[0], config.num_classes
  weights = _weights(config)
  groups, tokens = z.shape[:2]

  def step(carry, xs):
    counts, sums, hist = carry
    z_c, labels_c, weight_c = xs  # [S, chunk, ...]
    distances = squared_distances(z_c, codes, weights)
    if code_class is not None:
      other_class = (labels_c[..., None] != code_class) & (labels_c[..., None] >= 0)
      distances = jnp.where(other_class, jnp.inf, distances)
    assignment = jnp.argmin(distances, -1).astype(jnp.int32)
    one_hot = jax.nn.one_hot(assignment, num_codes, dtype=z.dtype) * weight_c[..., None]
    counts = counts + one_hot.sum(1)
    sums = sums + jnp.einsum("sck,scd->skd", one_hot, z_c)
    label_one_hot = jax.nn.one_hot(labels_c, num_classes, dtype=z.dtype)  # -1 -> 0s
    hist = hist + jnp.einsum("sck,scn->skn", one_hot, label_one_hot)
    return (counts, sums, hist), assignment

  init = (jnp.zeros((groups, num_codes), z.dtype),
          jnp.zeros((groups, num_codes, z.shape[-1]), z.dtype),
          jnp.zeros((groups, num_codes, num_classes), z.dtype))
  chunk = min(config.chunk_size, tokens)
  xs = (_chunked(z, chunk), _chunked(labels, chunk, UNLABELED), _chunked(weight, chunk))
  (counts, sums, hist), assignments = jax.lax.scan(step, init, xs)
  # The one reduction over groups (devices) of the step.
  return Statistics(assignments=_unchunked(assignments, tokens), counts=counts.sum(0),
                    sums=sums.sum(0), class_hist=hist.sum(0))


def chunked_token_loss(loss_fn, xs: tuple, weight: jax.Array, chunk_size: int):
  """Σ over tokens of loss_fn(chunk of xs) [S, chunk] · weight, with bounded memory.

  The chunk body is rematerialised in the backward pass, so the gradient, too,
  needs O(chunk·K), not O(tokens·K).
  """
  tokens = weight.shape[1]
  chunk = min(chunk_size, tokens)

  @jax.checkpoint
  def body(totals, chunk_xs):
    *inputs, w = chunk_xs
    return totals + jnp.sum(loss_fn(*inputs) * w, axis=1), None

  chunked = tuple(_chunked(x, chunk) for x in xs) + (_chunked(weight, chunk),)
  # Per-group partial sums in the carry: the groups (devices) are summed once,
  # after the loop, not once per chunk.
  totals, _ = jax.lax.scan(body, jnp.zeros(weight.shape[:1], jnp.float32), chunked)
  return totals.sum()


# ------------------------------------------------------------------- updates


def ema_update(state: dict, stats: Statistics, config: CodebookConfig) -> dict:
  """n ← γn + (1−γ)counts, S ← γS + (1−γ)sums, E = S / Laplace-smoothed n."""
  decay = config.decay
  counts = decay * state["counts"] + (1 - decay) * stats.counts
  sums = decay * state["sums"] + (1 - decay) * stats.sums
  total = counts.sum()
  smoothed = (counts + config.epsilon) / (total + counts.shape[0] * config.epsilon) * total
  centres = sums / jnp.maximum(smoothed, 1e-12)[:, None]
  # A code no token has reached yet keeps its centre (S / n would put it at 0).
  centres = jnp.where((counts > 0)[:, None], centres, state["centres"])
  hist = decay * state["class_hist"] + (1 - decay) * stats.class_hist
  return dict(state, counts=counts, sums=sums, centres=centres, class_hist=hist)


def _fair_share(counts: jax.Array, code_class: jax.Array, num_classes: int) -> jax.Array:
  """Each code's share of the tokens its class's codes hold: Σ_{c_j = c_k} counts_j / |c_k|."""
  codes_per_class = jnp.zeros(num_classes).at[code_class].add(1.0)
  class_tokens = jnp.zeros(num_classes).at[code_class].add(counts)
  return class_tokens[code_class] / codes_per_class[code_class]


def restart_dead_codes(state: dict, batch_counts: jax.Array, z: jax.Array,
                       labels: jax.Array, weight: jax.Array, key: jax.Array,
                       config: CodebookConfig, guided: bool) -> tuple[dict, jax.Array]:
  """Re-seeds every dead code from a random token of its class (any token if not
  `guided`), plus small noise. Deterministic given `key`.

  `missed` counts, per code, the tokens it would have won at its fair share of
  its class's tokens (this step's `batch_counts`) since it last won one. A code
  is dead when that reaches `dead_after_tokens` — a few steps for a code that
  fell out of use, whatever the EMA decay — or when its EMA count is under
  `dead_fraction` of its fair share. A class absent from a batch adds nothing,
  and its dead codes wait for a batch that has its tokens. A restarted code
  starts at its fair share of the EMA counts, as a live code of its class.
  Returns the new state and the number of codes restarted.
  """
  code_class = state["code_class"] if guided else jnp.zeros_like(state["code_class"])
  num_classes = config.num_classes if guided else 1
  flat_z = z.reshape(-1, z.shape[-1])
  flat_labels = labels.reshape(-1) if guided else jnp.zeros(labels.size, jnp.int32)
  usable = weight.reshape(-1) > 0
  flat_labels = jnp.where(usable, flat_labels, UNLABELED)

  fair_share = _fair_share(state["counts"], code_class, num_classes)
  missed = jnp.where(batch_counts > 0, 0.0,
                     state["missed"] + _fair_share(batch_counts, code_class, num_classes))
  dead = ((missed >= config.dead_after_tokens) |
          (state["counts"] < jnp.maximum(config.dead_fraction * fair_share, 1e-6)))

  # Tokens sorted by (class, random key): each class's tokens in random order.
  key_order, key_noise = jax.random.split(key)
  sort_class = jnp.where(flat_labels >= 0, flat_labels, num_classes)  # unlabeled last
  random_key = jax.random.uniform(key_order, flat_labels.shape)
  order = jnp.lexsort((random_key, sort_class))
  tokens_of_class = jnp.zeros(num_classes + 1, jnp.int32).at[sort_class].add(1)
  class_start = jnp.cumsum(tokens_of_class) - tokens_of_class
  # The r-th dead code of class c takes the (r mod n_c)-th token of class c.
  dead_rank = jnp.cumsum(jax.nn.one_hot(code_class, num_classes, dtype=jnp.int32)
                         * dead[:, None], 0)[jnp.arange(code_class.shape[0]), code_class] - 1
  available = tokens_of_class[code_class]
  pick = order[class_start[code_class] + dead_rank % jnp.maximum(available, 1)]
  restart = dead & (available > 0)
  scale = jnp.std(flat_z) + 1e-6
  noise = config.restart_noise * scale * jax.random.normal(key_noise, state["centres"].shape)
  new_centres = flat_z[pick] + noise
  centres = jnp.where(restart[:, None], new_centres, state["centres"])
  counts = jnp.where(restart, fair_share, state["counts"])
  sums = jnp.where(restart[:, None], new_centres * fair_share[:, None], state["sums"])
  hist = jnp.where(restart[:, None],
                   jax.nn.one_hot(code_class, state["class_hist"].shape[1]) * fair_share[:, None]
                   if guided else 0.0, state["class_hist"])
  new_state = dict(state, centres=centres, counts=counts, sums=sums, class_hist=hist,
                   missed=jnp.where(restart, 0.0, missed))
  return new_state, restart.sum()


# -------------------------------------------------------------------- losses


def semantic_loss(z: jax.Array, labels: jax.Array, weight: jax.Array,
                  codes: jax.Array, code_class: jax.Array,
                  config: CodebookConfig) -> jax.Array:
  """Mean over labeled tokens of −log p(label | z), where
  p(c | z) = Σ_{k: c_k = c} softmax_k(−d_sem(z, e_k) / τ)."""
  tau = config.semantic_temperature

  def per_token(z_c, labels_c):
    logits = -semantic_distances(z_c, codes, config) / tau
    own = jnp.where(labels_c[..., None] == code_class, logits, -jnp.inf)
    return jax.nn.logsumexp(logits, -1) - jax.nn.logsumexp(own, -1)

  labeled = weight * (labels >= 0)
  if config.class_weights:  # a weighted mean: tokens of rare classes count more
    labeled = labeled * jnp.asarray(config.class_weights, jnp.float32)[jnp.maximum(labels, 0)]
  total = chunked_token_loss(per_token, (z, jnp.maximum(labels, 0)), labeled,
                             config.chunk_size)
  return total / jnp.maximum(labeled.sum(), 1.0)


def consistency_loss(z_student: jax.Array, z_teacher: jax.Array, valid: jax.Array,
                     codes: jax.Array, config: CodebookConfig) -> jax.Array:
  """Consistent Semantic Learning: on corresponding tokens of two views, the
  student's soft assignment over codes follows the teacher's (stop-gradient,
  sharpened by a lower temperature). Mean cross-entropy over valid tokens."""
  weights = _weights(config)
  tau = config.consistency_temperature

  def per_token(student, teacher):
    target = jax.nn.softmax(-squared_distances(jax.lax.stop_gradient(teacher), codes,
                                               weights) / (tau * config.consistency_sharpen))
    log_p = jax.nn.log_softmax(-squared_distances(student, codes, weights) / tau)
    return -jnp.sum(target * log_p, -1)

  total = chunked_token_loss(per_token, (z_student, z_teacher), valid, config.chunk_size)
  return total / jnp.maximum(valid.sum(), 1.0)


# -------------------------------------------------------------------- module


class Codebook(nn.Module):
  """Quantizes tokens [S, M, D]; returns straight-through quantized tokens,
  indices and a dict of losses and statistics.

  Collections: params `embedding` (vq only); `codebook` state (all modes:
  usage counts; ema/sgc: the centres and their statistics). Training mutates
  `codebook` and needs the `restart` rng (ema/sgc).
  """
  config: CodebookConfig

  def setup(self):
    c = self.config
    init_scale = 1.0 / np.sqrt(c.dim)
    if c.mode == "vq":
      # taming-transformers' initialisation: U(-1/K, 1/K).
      self.embedding = self.param("embedding", _symmetric_uniform(1.0 / c.num_codes),
                                  (c.num_codes, c.dim))
    zeros = lambda *shape: (lambda: jnp.zeros(shape, jnp.float32))
    self.centres = self.variable("codebook", "centres", lambda: jax.random.normal(
        self.make_rng("params"), (c.num_codes, c.dim)) * init_scale)
    self.counts = self.variable("codebook", "counts", zeros(c.num_codes))
    self.sums = self.variable("codebook", "sums", zeros(c.num_codes, c.dim))
    self.class_hist = self.variable("codebook", "class_hist",
                                    zeros(c.num_codes, c.num_classes))
    self.missed = self.variable("codebook", "missed", zeros(c.num_codes))
    self.code_class = self.variable("codebook", "code_class", lambda: jnp.asarray(
        allocate_codes(np.ones(c.num_classes), c.num_codes), jnp.int32))

  def codes(self) -> jax.Array:
    if self.config.mode == "vq":
      return self.embedding
    return self.centres.value

  def state(self) -> dict:
    return {"centres": self.centres.value, "counts": self.counts.value,
            "sums": self.sums.value, "class_hist": self.class_hist.value,
            "code_class": self.code_class.value, "missed": self.missed.value}

  def lookup(self, indices: jax.Array) -> jax.Array:
    return jnp.take(self.codes(), indices, axis=0)

  def nearest(self, z: jax.Array) -> jax.Array:
    """Inference: the nearest code of every token z [..., D] over all K codes.

    No chunking: [..., K] distances (one image's at a time is small), and no
    shape arithmetic, so that it exports with a symbolic batch dimension.
    """
    c = self.config
    z = prepare_tokens(z.astype(jnp.float32), c)
    return jnp.argmin(squared_distances(z, self.codes(), _weights(c)), -1).astype(jnp.int32)

  def code_classes(self, indices: jax.Array) -> jax.Array:
    return jnp.take(self.code_class.value, indices, axis=0)

  def posterior_classes(self, z: jax.Array) -> jax.Array:
    """argmax_c p(c|z) of every token z [..., D]: the class posterior the
    semantic loss trains, p(c|z) = Σ_{k: c_k = c} softmax_k(−d_sem(z, e_k) / τ)."""
    c = self.config
    z = prepare_tokens(z.astype(jnp.float32), c)
    p_code = jax.nn.softmax(-semantic_distances(z, self.codes(), c) / c.semantic_temperature)
    p_class = p_code @ jax.nn.one_hot(self.code_class.value, c.num_classes, dtype=jnp.float32)
    return jnp.argmax(p_class, -1).astype(jnp.int32)

  def __call__(self, z: jax.Array, labels: jax.Array | None = None,
               weight: jax.Array | None = None, train: bool = False):
    c = self.config
    z = prepare_tokens(z.astype(jnp.float32), c)
    if labels is None or c.mode != "sgc":
      labels = jnp.full(z.shape[:2], UNLABELED, jnp.int32)
    if weight is None:
      weight = jnp.ones(z.shape[:2], jnp.float32)
    guided = c.mode == "sgc" and train
    codes = self.codes()
    stats = assign_and_gather(
        jax.lax.stop_gradient(z), labels, weight, jax.lax.stop_gradient(codes),
        self.code_class.value if guided else None, c)
    indices = stats.assignments
    quantized = jnp.take(codes, indices, axis=0)
    tokens = jnp.maximum(weight.sum() * c.dim, 1.0)
    commitment = jnp.sum(((z - jax.lax.stop_gradient(quantized)) ** 2) * weight[..., None]) / tokens
    losses = {"commitment": c.beta * commitment}
    if c.mode == "vq":
      losses["codebook"] = jnp.sum(((jax.lax.stop_gradient(z) - quantized) ** 2)
                                   * weight[..., None]) / tokens
    if c.mode == "sgc":
      losses["semantic"] = c.semantic_weight * semantic_loss(
          z, labels, weight, codes, self.code_class.value, c)
    metrics = {"codes_used": jnp.sum(stats.counts > 0),
               "perplexity": _perplexity(stats.counts)}
    if train and not self.is_initializing():
      state = self.state()
      if c.mode == "vq":
        decay = c.decay
        self.counts.value = decay * state["counts"] + (1 - decay) * stats.counts
      else:
        state = ema_update(state, stats, c)
        state, restarted = restart_dead_codes(
            state, stats.counts, jax.lax.stop_gradient(z), labels, weight,
            self.make_rng("restart"), c, guided=c.mode == "sgc")
        metrics["restarted"] = restarted
        for name in ("centres", "counts", "sums", "class_hist", "missed"):
          getattr(self, name).value = state[name]
    straight_through = z + jax.lax.stop_gradient(quantized - z)
    return straight_through, indices, losses, metrics

  def consistency(self, z_student: jax.Array, z_teacher: jax.Array,
                  valid: jax.Array) -> jax.Array:
    c = self.config
    return c.consistency_weight * consistency_loss(
        prepare_tokens(z_student.astype(jnp.float32), c),
        prepare_tokens(z_teacher.astype(jnp.float32), c), valid,
        jax.lax.stop_gradient(self.codes()), c)


def _symmetric_uniform(limit: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


def _perplexity(counts: jax.Array) -> jax.Array:
  p = counts / jnp.maximum(counts.sum(), 1e-12)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-12)), 0.0)))


def set_allocation(codebook_state: dict, class_frequency: np.ndarray,
                   alpha: float, min_codes: int) -> dict:
  """Codebook state with codes allocated to classes by `allocate_codes`."""
  num_codes = codebook_state["code_class"].shape[0]
  code_class = allocate_codes(class_frequency, num_codes, alpha, min_codes)
  return dict(codebook_state, code_class=jnp.asarray(code_class, jnp.int32))

