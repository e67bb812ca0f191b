"""What a run shows: JSON lines, TensorBoard events, a progress bar, PNG grids.

Only process 0 writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

import jax
import numpy as np
import tqdm

from sgc_jax import viz


class WorkdirBusy(RuntimeError):
  """Another trainer holds the workdir."""


class WorkdirLock:
  """An exclusive lock on a workdir while a trainer writes it (process 0).

  `flock` on WORKDIR/.lock: the kernel releases it when the holder exits, even
  by kill -9, so a crashed run never leaves the workdir locked. The file names
  the holder for the message a second trainer gets."""

  def __init__(self, workdir: str):
    self._file = None
    if jax.process_index() != 0:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, ".lock")
    handle = open(path, "a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      handle.close()
      raise WorkdirBusy(f"{workdir} is in use by {holder}; wait for it to finish or use "
                        "another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    self._file = handle

  def release(self) -> None:
    if self._file is not None:
      self._file.close()  # closing the file releases the lock
      self._file = None


def _trim_jsonl(path: str, last_step: int) -> None:
  """Drops the lines of steps after `last_step`: a resumed run replays them."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [line for line in lines if json.loads(line)["step"] <= last_step]
  if len(kept) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)


class Writer:
  def __init__(self, workdir: str, total_steps: int, initial_step: int):
    self.enabled = jax.process_index() == 0
    self._jsonl = self._tensorboard = self._bar = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _trim_jsonl(os.path.join(workdir, "metrics.jsonl"), initial_step)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter
      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # optional: JSON lines always work
      self._tensorboard = None
    self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step",
                          dynamic_ncols=True, mininterval=2.0)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    if self._tensorboard is not None:
      for name, value in values.items():
        self._tensorboard.add_scalar(name, value, step)

  def progress(self, steps: int, postfix: dict[str, float]) -> None:
    if self.enabled:
      self._bar.update(steps)
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

  def image(self, step: int, name: str, image: np.ndarray, workdir: str) -> str | None:
    if not self.enabled:
      return None
    directory = os.path.join(workdir, "images")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}_{step:07d}.png")
    viz.save_png(image, path)
    if self._tensorboard is not None:
      self._tensorboard.add_image(name, image, step, dataformats="HWC")
    return path

  def close(self) -> None:
    if self.enabled:
      self._bar.close()
      self._jsonl.close()
      if self._tensorboard is not None:
        self._tensorboard.close()


def reconstruction_grid(images, reconstructions, segmentation, token_classes,
                        num_classes: int, class_names) -> np.ndarray:
  """Rows of input | reconstruction | ground-truth classes | token classes
  (no reconstruction column where `reconstructions` is None)."""
  size = images.shape[1]
  rows = []
  for i, (x, seg, tokens) in enumerate(zip(images, segmentation, token_classes)):
    factor = size // tokens.shape[0]
    token_map = viz.enlarge(tokens, factor)
    rows.append([viz.to_uint8(x)]
                + ([] if reconstructions is None else [viz.to_uint8(reconstructions[i])])
                + [viz.colour_classes(seg, num_classes),
                   viz.colour_classes(token_map, num_classes)])
  tiles = viz.grid(rows)
  return np.concatenate([tiles, viz.legend(class_names, tiles.shape[1])], 0)


def markdown_table(header, rows, align: str | None = None) -> str:
  """A Markdown table; `align`: one of "l"/"r" per column (default: the first
  left, the rest right). Floats print with 4 significant digits."""
  align = align or "l" + "r" * (len(header) - 1)
  cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
  lines = ["| " + " | ".join(map(str, header)) + " |",
           "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
  lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
  return "\n".join(lines) + "\n"
