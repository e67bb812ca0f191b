"""The input pipeline: grain over a TFDS data source, batches as global jax.Arrays.

The split is cut into `num_shards` data shards (by default one per JAX process);
each process reads its own shards, every shard through its own grain
`DataLoader`, and the per-process batch is the concatenation of its shards'
batches. A run with 1 process and 2 shards therefore sees exactly the global
batches of a run with 2 processes, and its position (one grain state per shard)
restores in either.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Iterator

import grain
import jax
from absl import flags
import numpy as np

from sgc_jax.config_lib import ConfigError
from sgc_jax.data import sources, views
from sgc_jax.data import photometric as photometric_lib
from sgc_jax.runtime import sharding

Batch = dict[str, np.ndarray]


# How uint8 pixels become a model's input, per backbone: "symmetric", [-1, 1]
# (the VQGAN family); else (x / 255 - mean) / std with the statistics a
# pretrained backbone was trained on.
NORMALIZATIONS = {
    "symmetric": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ResNet, DINO
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def normalize(pixels: np.ndarray, normalization: str) -> np.ndarray:
  """uint8 pixels [..., 3] -> float32 model input."""
  if NORMALIZATIONS[normalization] is None:
    return pixels.astype(np.float32) / 127.5 - 1.0
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[normalization])
  return (pixels.astype(np.float32) / 255.0 - mean) / std


def to_symmetric(images: np.ndarray, normalization: str) -> np.ndarray:
  """Model input back to [-1, 1] (what pictures show)."""
  if NORMALIZATIONS[normalization] is None:
    return images
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[normalization])
  return (images * std + mean) * 2.0 - 1.0


def from_symmetric(images, normalization: str):
  """[-1, 1] images (NumPy or jax) -> the input of a backbone trained on
  `normalization` (PAT reconstructs in [-1, 1] and feeds its backbone this)."""
  if NORMALIZATIONS[normalization] is None:
    return images
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[normalization])
  return ((images + 1.0) * 0.5 - mean) / std


# Photometric augmentations of training views by name (`data.photometric`).
PHOTOMETRIC = {"slotcon": photometric_lib.SLOTCON_VIEWS}


class MakeViews(grain.transforms.RandomMap):
  """Record -> `num_views` augmented views with their crop geometry.

  Still images: independent random resized crops (the later views overlap the
  first by `crop.min_overlap`) and flips. Clips: the views are distinct frames
  seen through one crop and flip (a static camera), so token i of one view and
  token i of the other look at the same place. With `crop=None` (evaluation) a
  single centred view, no flip: the largest centred box of the `frame`'s
  aspect resized to the frame (height, width), e.g. a whole 480x360 photo at
  128x96; without a frame, the largest centred square at image_size².
  """

  def __init__(self, image_size: int, num_views: int,
               crop: views.CropSpec | None, normalization: str = "symmetric",
               photometric: str | None = None, frame: tuple[int, int] | None = None):
    self.image_size = image_size
    self.frame = tuple(frame) if frame else None
    self.num_views = num_views
    self.crop = crop
    self.normalization = normalization
    # Per view (the last spec repeats): SlotCon's asymmetric BYOL-style views.
    self.photometric = PHOTOMETRIC[photometric] if photometric else None

  def _geometry(self, rng: np.random.Generator, shape):
    clip = len(shape) == 4
    height, width = shape[-3:-1]
    if self.crop is None:
      aspect = self.frame[1] / self.frame[0] if self.frame else 1.0
      box = views.centred_box(height, width, aspect)
      return [box] * self.num_views, [False] * self.num_views, [0] * self.num_views
    if clip:
      num_frames = shape[0]
      if self.num_views > num_frames:
        raise ValueError(f"{self.num_views} views asked of clips of "
                         f"{num_frames} frames")
      box = views.sample_box(rng, self.crop, height, width)
      flip = bool(self.crop.flip and rng.uniform() < 0.5)
      frames = sorted(rng.choice(num_frames, size=self.num_views, replace=False))
      return [box] * self.num_views, [flip] * self.num_views, list(frames)
    boxes = [views.sample_box(rng, self.crop, height, width)]
    for _ in range(self.num_views - 1):
      boxes.append(views.sample_overlapping_box(rng, self.crop, boxes[0],
                                                height, width))
    flips = [bool(self.crop.flip and rng.uniform() < 0.5) for _ in boxes]
    return boxes, flips, [0] * self.num_views

  def random_map(self, record: sources.Record, rng: np.random.Generator) -> Batch:
    image = record["image"]
    boxes, flips, frames = self._geometry(rng, image.shape)
    clip = image.ndim == 4
    out = {"image": [], "segmentation": [], "instances": []}
    for box, flip, frame in zip(boxes, flips, frames):
      def view(array, nearest):
        size = self.frame if self.crop is None and self.frame else self.image_size
        return views.crop_resize(array[frame] if clip else array, box, size, flip, nearest)
      pixels = view(image, nearest=False)
      if self.photometric is not None:
        spec = self.photometric[min(len(out["image"]), len(self.photometric) - 1)]
        pixels = photometric_lib.apply(pixels, spec, rng)
      out["image"].append(pixels)
      out["segmentation"].append(view(record["segmentation"], nearest=True))
      out["instances"].append(view(record["instances"], nearest=True))
    return {
        "image": normalize(np.stack(out["image"]), self.normalization),
        "segmentation": np.stack(out["segmentation"]).astype(np.uint8),
        "instances": np.stack(out["instances"]).astype(np.int32),
        "box": np.stack(boxes).astype(np.float32),
        "flip": np.asarray(flips, bool),
        "frame": np.asarray(frames, np.int32),
        "mask": np.ones((), bool),
    }


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
  split: str
  global_batch_size: int
  image_size: int
  train: bool  # shuffle, augment, repeat; else one ordered pass, no augmentation
  num_views: int = 1
  crop: views.CropSpec = views.CropSpec()
  seed: int = 0
  worker_count: int = 0  # grain worker processes per data shard
  num_shards: int | None = None  # data shards; default: one per JAX process
  normalization: str = "symmetric"  # a key of NORMALIZATIONS
  photometric: str | None = None  # a key of PHOTOMETRIC (training views only)
  frame: tuple[int, int] | None = None  # (height, width) of evaluation views


class InputPipeline:
  """An iterator of global batches (jax.Arrays sharded over the batch axes).

  Training iterates forever; evaluation makes exactly one pass in which every
  process yields the same number of batches: the last ones are padded, and the
  `mask` entry is False on padding. Nothing of the split is dropped.
  """

  def __init__(self, source: sources.CheckedSource, spec: PipelineSpec,
               mesh: jax.sharding.Mesh, *, process_index: int | None = None,
               process_count: int | None = None):
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    num_shards = spec.num_shards or process_count
    if num_shards % process_count:
      raise ConfigError(f"data.num_shards={num_shards} must be a multiple of the "
                       f"{process_count} processes")
    batch_split = math.lcm(num_shards, sharding.batch_shards(mesh))
    if spec.global_batch_size % batch_split:
      raise ConfigError(
          f"batch size {spec.global_batch_size} must be divisible by {batch_split}: "
          f"{num_shards} data shards and {sharding.batch_shards(mesh)} devices on "
          f"the batch axes {sharding.BATCH_AXES}")
    if len(source) < num_shards:
      raise ValueError(f"{source.description}: {len(source)} records cannot fill "
                       f"{num_shards} data shards")
    self.spec = spec
    self.source = source
    self._mesh = mesh
    self._shard_batch = spec.global_batch_size // num_shards
    shards_per_process = num_shards // process_count
    self._shards = range(process_index * shards_per_process,
                         (process_index + 1) * shards_per_process)
    self._loaders = [self._loader(shard, num_shards) for shard in self._shards]
    self._iterators = [iter(loader) for loader in self._loaders]
    # Evaluation: every shard yields this many batches (shards differ by <= 1 record).
    self.num_batches = (None if spec.train else
                        math.ceil(len(shard_view(source, 0, num_shards)) / self._shard_batch))
    self._batches_done = 0

  def _loader(self, shard: int, num_shards: int) -> grain.DataLoader:
    spec = self.spec
    records = shard_view(self.source, shard, num_shards)
    if spec.worker_count and not flags.FLAGS.is_parsed():
      # grain's workers read absl flags; outside absl.app (tests, notebooks)
      # nobody parsed them, so take their defaults.
      flags.FLAGS.mark_as_parsed()
    # Sharding is ours (shard_view), not grain's: grain 0.2.18's ShardOptions
    # with drop_remainder=False loses the record at a shard boundary.
    sampler = grain.samplers.IndexSampler(
        num_records=len(records), shard_options=grain.sharding.NoSharding(),
        shuffle=spec.train, num_epochs=None if spec.train else 1,
        seed=int(np.random.SeedSequence([spec.seed, shard]).generate_state(1)[0]))
    make_views = MakeViews(spec.image_size, spec.num_views if spec.train else 1,
                           spec.crop if spec.train else None, spec.normalization,
                           spec.photometric if spec.train else None, spec.frame)
    return grain.DataLoader(
        data_source=records, sampler=sampler,
        operations=[make_views,
                    grain.transforms.Batch(self._shard_batch, drop_remainder=spec.train)],
        worker_count=spec.worker_count)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def _next_shard_batch(self, iterator) -> Batch | None:
    try:
      return next(iterator)
    except StopIteration:
      if self.spec.train:
        raise
      return None

  def next_local(self) -> Batch:
    """The next batch of this process's shards, as host arrays."""
    if self.num_batches is not None and self._batches_done >= self.num_batches:
      raise StopIteration
    parts = [self._next_shard_batch(iterator) for iterator in self._iterators]
    template = next((p for p in parts if p is not None), None)
    if template is None:  # this process is done, others may not be: pad fully
      template = self._empty_batch()
    parts = [_pad(p if p is not None else _zeros_like(template), self._shard_batch)
             for p in parts]
    self._batches_done += 1
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

  def __next__(self) -> dict[str, jax.Array]:
    local = self.next_local()
    batch_sharding = sharding.batch_sharding(self._mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding, x), local)

  def _empty_batch(self) -> Batch:
    example, = centred_examples(self.source, 1, self.spec.image_size,
                                frame=self.spec.frame)
    return {k: np.zeros((1,) + v.shape, v.dtype) for k, v in example.items()}

  def get_state(self) -> bytes:
    """The position in the data of this process's shards, as JSON: restoring it
    (`set_state`, in any process that reads these shards) replays the same batches."""
    return json.dumps({
        "batches_done": self._batches_done,
        "shards": {str(shard): _text(iterator.get_state())
                   for shard, iterator in zip(self._shards, self._iterators)},
    }).encode()

  def set_state(self, state: bytes) -> None:
    """Restores from a state holding (at least) this process's shards, e.g. the
    `merge_states` of every process's states."""
    decoded = json.loads(state)
    missing = [shard for shard in self._shards if str(shard) not in decoded["shards"]]
    if missing:
      raise ValueError(f"data state of shards {sorted(decoded['shards'], key=int)} lacks "
                       f"this process's shards {missing}: was data.num_shards changed?")
    for shard, iterator in zip(self._shards, self._iterators):
      iterator.set_state(decoded["shards"][str(shard)].encode())
    self._batches_done = decoded["batches_done"]


def merge_states(states: list[bytes]) -> bytes:
  """One state of every shard from the states of several processes."""
  decoded = [json.loads(s) for s in states]
  if len({d["batches_done"] for d in decoded}) != 1:
    raise ValueError("processes disagree on the number of batches read")
  shards = {k: v for d in decoded for k, v in d["shards"].items()}
  return json.dumps({"batches_done": decoded[0]["batches_done"], "shards": shards}).encode()


def _text(state) -> str:
  return state.decode() if isinstance(state, bytes) else state


class RecordRange:
  """Records [start, start + length) of a source, as a source."""

  def __init__(self, source, start: int, length: int, name: str):
    self._source, self._start, self._length, self._name = source, start, length, name

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int):
    if not 0 <= index < self._length:
      raise IndexError(index)
    return self._source[self._start + index]

  def __repr__(self) -> str:  # grain checks it when a state is restored
    return self._name


def eval_frame(config) -> tuple[int, int] | None:
  """`config.data.eval_frame`, (height, width) of whole-frame evaluation, or None."""
  frame = config.data.get("eval_frame")
  return tuple(frame) if frame else None


def eval_shape(config) -> tuple[int, int]:
  """(height, width) of the images evaluators see."""
  return eval_frame(config) or (config.data.image_size, config.data.image_size)


def evaluation_pipeline(source, config, mesh: jax.sharding.Mesh) -> InputPipeline:
  """One ordered pass over `source` in centred views of the config's size (or
  whole frames, `data.eval_frame`) and normalisation, in the config's global
  batches (the last ones padded)."""
  spec = PipelineSpec(split=repr(source), global_batch_size=config.data.batch_size,
                      image_size=config.data.image_size, train=False,
                      num_shards=config.data.num_shards,
                      normalization=config.data.get("normalization", "symmetric"),
                      frame=eval_frame(config))
  return InputPipeline(source, spec, mesh)


def shard_view(source, shard: int, num_shards: int) -> RecordRange:
  """Shard `shard` of `num_shards` contiguous, near-equal ranges of a source:
  they differ in length by at most one record and together hold every record
  exactly once."""
  base, extra = divmod(len(source), num_shards)
  return RecordRange(source, shard * base + min(shard, extra), base + (shard < extra),
                     f"ShardView({source!r}, shard {shard} of {num_shards})")


def head(source, count: int) -> RecordRange:
  """The first `count` records of a source."""
  count = min(count, len(source))
  return RecordRange(source, 0, count, f"Head({source!r}, {count})")


def centred_examples(source, count: int, image_size: int,
                     normalization: str = "symmetric",
                     frame: tuple[int, int] | None = None, spaced: bool = False) -> list[Batch]:
  """The first `count` records (with `spaced`, `count` records evenly spaced
  over the source: frames of a video differ) as one centred view each
  (previews and pictures)."""
  make = MakeViews(image_size, 1, None, normalization, frame=frame)
  count = min(count, len(source))
  indices = (np.linspace(0, len(source) - 1, count).round().astype(int) if spaced
             else range(count))
  return [make.random_map(source[int(i)], np.random.default_rng(0)) for i in indices]


def _zeros_like(batch: Batch) -> Batch:
  return {k: np.zeros_like(v) for k, v in batch.items()}


def _pad(batch: Batch, size: int) -> Batch:
  missing = size - len(batch["mask"])
  if missing <= 0:
    return batch
  return {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}
