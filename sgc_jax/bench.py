"""Benchmarks that print tables.

    python -m sgc_jax.bench data [--data_dir=DIR] [--workers=2] [--batch_size=32]

`data`: images/s of the training input pipeline (decode, two augmented views,
batching, placement on the mesh) at 64 and 128 px, on the `smoke` configs of
sgc_scenes (built if missing).
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from sgc_jax import sharding
from sgc_jax.data import pipeline, sources

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's).")
_WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch size.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed (after 5 of warm-up).")


def bench_data() -> list[tuple]:
  mesh = sharding.create_mesh()
  rows = []
  for size in (64, 128):
    dataset = sources.open_dataset(f"sgc_scenes/smoke{size}", _DATA_DIR.value)
    spec = pipeline.PipelineSpec(split="train", global_batch_size=_BATCH.value,
                                 image_size=size, train=True, num_views=2,
                                 worker_count=_WORKERS.value)
    batches = pipeline.InputPipeline(dataset.split("train"), spec, mesh)
    for _ in range(5):
      jax.block_until_ready(next(batches))
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      jax.block_until_ready(next(batches))
    seconds = time.perf_counter() - start
    images = _BATCHES.value * _BATCH.value
    rows.append((size, _WORKERS.value, _BATCH.value, images / seconds,
                 2 * images / seconds))
  return rows


def main(argv):
  if argv[1:] != ["data"]:
    raise app.UsageError("usage: python -m sgc_jax.bench data [flags]")
  rows = bench_data()
  print(f"\ninput pipeline on {jax.devices()[0].platform}, "
        f"{jax.device_count()} device(s)")
  print("| size | workers | batch | images/s | views/s |")
  print("|---:|---:|---:|---:|---:|")
  for size, workers, batch, images, views in rows:
    print(f"| {size} | {workers} | {batch} | {images:.0f} | {views:.0f} |")


if __name__ == "__main__":
  app.run(main)
