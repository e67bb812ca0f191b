"""What a run shows: JSON lines, TensorBoard events, a progress bar, PNG grids.

Only process 0 writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time

import jax
import numpy as np
import tqdm

from sgc_jax.utils import viz


class WorkdirBusy(RuntimeError):
  """Another trainer holds the workdir."""


class OutputError(OSError):
  """A workdir or output folder that cannot be written: the message names the
  path and the problem, for a one-line error (an OSError, so that code that
  catches those catches it)."""


def check_workdir(path: str) -> str:
  """Raises OutputError if a file is where the folder `path`, or a folder
  above it, should be; returns the nearest part of `path` that exists."""
  path = os.path.normpath(path)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing) or "."
  if not os.path.isdir(existing):
    raise OutputError(f"{path}: exists and is a file, not a folder" if existing == path else
                      f"{path}: cannot be made, {existing} is a file, not a folder")
  return existing


def check_folder(path: str) -> None:
  """Raises OutputError unless `path` is a folder this process may write, or
  can be made one (nothing is created: a mode checks its outputs before its
  work, and one that fails leaves nothing behind)."""
  existing = check_workdir(path)
  try:
    # A file made and removed: permissions, a read-only mount, ACLs and root all
    # answer as a real write would (os.access is wrong for some of them).
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as error:
    where = "" if existing == os.path.normpath(path) else f" in {existing}"
    raise OutputError(f"{os.path.normpath(path)}: not writable "
                      f"({error.strerror or error}{where})") from None


def check_output_folder(directory: str) -> None:
  """Raises OutputError unless `replacing_folder(directory)` can write: a
  folder or nothing at `directory`, and a writable folder (or one that can be
  made) above it, where the new folder is written before it takes the place."""
  name = os.path.basename(os.path.normpath(directory))
  if name in ("", ".", ".."):
    raise OutputError(f"{directory}: names no folder to write (an output folder is "
                      "written beside and renamed into place)")
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise OutputError(f"{directory}: exists and is a file, not a folder")
  check_folder(os.path.dirname(os.path.normpath(directory)) or ".")


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.remove(path)


def _reason(error: OSError) -> str:
  reason = error.strerror or str(error) or type(error).__name__
  return f"{reason}: {error.filename}" if error.filename else reason


@contextlib.contextmanager
def replacing_folder(directory: str):
  """Yields a new folder, DIRECTORY.partial, to write what `directory` will
  hold; when the block ends without an error, it takes `directory`'s place.

  A reader (or a failed or killed writer) finds the old folder whole or the
  new one whole, never a mix: the old one is renamed to DIRECTORY.old, the new
  one into place (renames within one folder, atomic), and only then is the old
  one deleted. A crash between the two renames leaves DIRECTORY.old, which the
  next call puts back. On an error the new folder is deleted and the old one
  left as it was; an OSError (disk full, a file size limit, permissions)
  becomes an OutputError naming `directory`."""
  directory = os.path.normpath(directory)
  check_output_folder(directory)
  partial, aside = directory + ".partial", directory + ".old"
  try:
    if os.path.lexists(aside):
      if os.path.lexists(directory):
        _remove(aside)  # the previous call was stopped after its new folder took the place
      else:
        os.rename(aside, directory)  # ... or between its renames: the old one comes back
    _remove(partial)  # a stopped call's half
  except OSError as error:
    raise OutputError(f"{directory}: cannot clear the last write's {error.filename or aside} "
                      f"({error.strerror or error})") from error
  had = os.path.isdir(directory)
  kept = "the previous one is unchanged" if had else "nothing was left there"
  try:
    os.makedirs(partial)
    yield partial
  except BaseException as error:
    _remove(partial)
    if isinstance(error, OSError) and not isinstance(error, OutputError):
      raise OutputError(f"{directory}: could not be written ({_reason(error)}); {kept}") \
          from error
    raise
  try:
    if had:
      os.rename(directory, aside)
    os.rename(partial, directory)
  except OSError as error:
    if had and not os.path.lexists(directory) and os.path.lexists(aside):
      os.rename(aside, directory)
    _remove(partial)
    raise OutputError(f"{directory}: could not be put in place ({_reason(error)}); "
                      f"{kept}") from error
  _remove(aside)


class WorkdirLock:
  """An exclusive lock on a workdir while a trainer writes it (process 0).

  `flock` on WORKDIR/.lock: the kernel releases it when the holder exits, even
  by kill -9, so a crashed run never leaves the workdir locked. The file names
  the holder for the message a second trainer gets."""

  def __init__(self, workdir: str):
    self._file = None
    if jax.process_index() != 0:
      return
    # The first use of the workdir: a file in its place or a read-only mount
    # stops here in one line, before the data set or the model is built.
    check_folder(workdir)
    path = os.path.join(workdir, ".lock")
    try:
      os.makedirs(workdir, exist_ok=True)
      handle = open(path, "a+")
    except OSError as error:
      raise OutputError(f"{workdir}: not writable ({_reason(error)})") from None
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


def markdown_table(header, rows, align: str | None = None) -> str:
  """A Markdown table; `align`: one of "l"/"r" per column (default: the first
  left, the rest right). Floats print with 4 significant digits."""
  align = align or "l" + "r" * (len(header) - 1)
  cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
  lines = ["| " + " | ".join(map(str, header)) + " |",
           "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
  lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
  return "\n".join(lines) + "\n"
