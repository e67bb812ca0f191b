"""A look at the data: a text summary and PNG grids of examples and training views."""

from __future__ import annotations

import os

import numpy as np

from sgc_jax.data import pipeline, sources, views
from sgc_jax.utils import run_output, viz


def describe(dataset: sources.Dataset) -> str:
  info = dataset.builder.info
  splits = ", ".join(f"{name}: {split.num_examples}" for name, split in info.splits.items())
  kind = f"clips of {dataset.num_frames} frames" if dataset.num_frames else "images"
  size = f"{dataset.image_size}px" if dataset.image_size else "any size"
  return (f"{dataset.name}: {kind}, {size}, {dataset.num_classes} classes "
          f"({', '.join(dataset.class_names[:12])}{' ...' if dataset.num_classes > 12 else ''})\n"
          f"  splits: {splits}\n  stored in: {dataset.builder.data_dir}")


def _with_legend(tiles: np.ndarray, class_names) -> np.ndarray:
  strip = viz.legend(class_names, tiles.shape[1])
  return np.concatenate([tiles, strip], 0)


def _instance_colours(instances: np.ndarray) -> np.ndarray:
  colours = viz.class_palette(64)[:64]
  return np.where(instances[..., None] > 0, colours[instances % 64], 0).astype(np.uint8)


def write_previews(config, dataset: sources.Dataset, workdir: str) -> list[str]:
  """data.png: image | classes | instances; views.png: the training views;
  examples/NNNN.png: the example images themselves (to try sgc-tokenize on),
  in WORKDIR/preview, written whole (run_output.replacing_folder)."""
  out_dir = os.path.join(workdir, "preview")
  # A workdir that is a file or cannot be written: one line (run_output.OutputError)
  # before any work; a failed write leaves the previous previews.
  with run_output.replacing_folder(out_dir) as partial:
    _write_previews(config, dataset, partial)
  return [os.path.join(out_dir, "data.png"), os.path.join(out_dir, "views.png"),
          os.path.join(out_dir, "examples")]


def _write_previews(config, dataset: sources.Dataset, out_dir: str) -> None:
  examples_dir = os.path.join(out_dir, "examples")
  os.makedirs(examples_dir, exist_ok=True)
  source = dataset.split(config.data.eval_split)
  count = min(config.preview.num_examples, len(source))
  size = config.data.image_size
  rows = []
  for index in range(count):
    record = source[index]
    # One record per frame (a still image: one frame).
    frames = [{k: v[t] for k, v in record.items()} for t in range(dataset.num_frames)] \
        if dataset.num_frames else [record]
    viz.save_png(frames[0]["image"], os.path.join(examples_dir, f"{index:04d}.png"))
    row = []
    for view in pipeline.centred_examples(frames, len(frames), size):
      row += [viz.to_uint8(view["image"][0]),
              viz.colour_classes(view["segmentation"][0], dataset.num_classes),
              _instance_colours(view["instances"][0])]
    rows.append(row)
  num_frames = max(dataset.num_frames, 1)
  captions = [f"{what}{f' {t}' if num_frames > 1 else ''}" for t in range(num_frames)
              for what in ("image", "classes", "instances")]
  viz.save_png(_with_legend(viz.grid(rows, captions=captions), dataset.class_names),
               os.path.join(out_dir, "data.png"))

  crop = views.CropSpec(**config.data.crop)
  train_views = pipeline.MakeViews(size, config.data.num_views, crop)
  rows = []
  for index in range(count):
    example = train_views.random_map(source[index], np.random.default_rng(index))
    rows.append([viz.to_uint8(v) for v in example["image"]] +
                [viz.colour_classes(s, dataset.num_classes) for s in example["segmentation"]])
  num_views = config.data.num_views
  captions = ([f"view {v}" for v in range(num_views)]
              + [f"view {v} classes" for v in range(num_views)])
  viz.save_png(_with_legend(viz.grid(rows, captions=captions), dataset.class_names),
               os.path.join(out_dir, "views.png"))
