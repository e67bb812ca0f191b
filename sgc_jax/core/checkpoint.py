"""Orbax checkpoints of the train state, the data position and the config."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sgc_jax.data import pipeline


@functools.cache  # once per process
def _save_replicas_whole_on_cpu() -> None:
  """On a CPU backend, arrays are written whole by their first replica.

  Orbax's replica-parallel save splits a replicated array into one slice per
  replica, so that devices (and hosts) share the copies to the host. On CPU
  the devices are the host's own memory: the slices are only eager slice ops,
  one per array and device: 27 of the 97 s of a 4-step test run on 8
  simulated devices (orbax turns it off on GPUs itself)."""
  if jax.default_backend() != "cpu":
    return
  absl_logger = logging.getLogger("absl")  # orbax warns of the override it was asked for
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  finally:
    absl_logger.setLevel(level)


def manager(workdir: str, save_every: int, keep: int) -> ocp.CheckpointManager:
  _save_replicas_whole_on_cpu()
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, save_interval_steps=save_every,
          enable_async_checkpointing=True, create=True),
      # Named handlers, so that a checkpoint's tree can be read before restoring.
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": ocp.JsonCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler()})


def gather_strings(text: str) -> list[str]:
  """Every process's `text`, in process order (a collective: all must call it)."""
  if jax.process_count() == 1:
    return [text]
  data = np.frombuffer(text.encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([len(data)], np.int32))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:len(data)] = data
  everyone = multihost_utils.process_allgather(padded)
  return [bytes(row[:n]).decode() for row, n in zip(everyone, lengths.ravel())]


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir can be restored."""


def one_line(error: BaseException, limit: int = 300) -> str:
  """An orbax error (often many lines) as 'Type: text' on one line."""
  return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


def state_size(state) -> int:
  """Bytes of a state's arrays: about what its checkpoint takes on disk."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def _free_bytes(mgr: ocp.CheckpointManager) -> int | None:
  """Free bytes where the checkpoints go (None on a remote file system)."""
  where = str(mgr.directory)
  if "://" in where:
    return None
  return shutil.disk_usage(where if os.path.isdir(where) else os.path.dirname(where)).free


def check_space(mgr: ocp.CheckpointManager, step: int, state_bytes: int) -> None:
  """Stops before a save that cannot fit: a full disk fails inside orbax's
  writer threads, which leave a partial step and spill their tracebacks."""
  free = _free_bytes(mgr)
  if free is not None and free < state_bytes + 2**20:
    raise CheckpointError(
        f"{mgr.directory}: {free / 2**20:.0f} MiB free, saving step {step} needs about "
        f"{state_bytes / 2**20:.0f} MiB; free some space and run the same command to resume "
        f"from {_newest(mgr)}")


def _newest(mgr: ocp.CheckpointManager) -> str:
  try:
    mgr.reload()
    latest = mgr.latest_step()
  except Exception:  # what failed may fail again: the sentence does without it
    latest = None
  return "no checkpoint (none is complete)" if latest is None else f"step {latest}"


def save_failed(mgr: ocp.CheckpointManager, error: BaseException, state_bytes: int):
  """A save that failed (a full disk, a file size limit ...), as one line: the
  error, the space free where checkpoints go against what one takes, and the
  newest checkpoint that is complete."""
  free = _free_bytes(mgr)
  space = "" if free is None else (f"; {free / 2**20:.0f} MiB free there, a checkpoint of "
                                   f"this state takes about {state_bytes / 2**20:.0f} MiB")
  return CheckpointError(f"saving a checkpoint in {mgr.directory} failed ({one_line(error)})"
                         f"{space}; the same command resumes from {_newest(mgr)}")


def finish(mgr: ocp.CheckpointManager, state_bytes: int) -> CheckpointError | None:
  """Waits for the asynchronous saves and closes the manager; a save that
  failed in the background comes back as the error to raise (None if all
  went well). Closing in any case stops orbax's threads before the process
  ends, which would otherwise spill tracebacks of closed event loops."""
  failure = None
  try:
    mgr.wait_until_finished()
  except Exception as error:  # orbax re-raises a background write's error here
    failure = save_failed(mgr, error, state_bytes)
  try:
    mgr.close()
  except Exception as error:
    failure = failure or save_failed(mgr, error, state_bytes)
  return failure


SET_ASIDE = "checkpoints_set_aside"


def set_aside(mgr: ocp.CheckpointManager, step: int) -> str:
  """Moves checkpoint `step` out of the manager's folder into the workdir's
  `checkpoints_set_aside/` (a damaged one: the run saves that step anew, and
  orbax refuses to write over it), never deleting it; returns where it went.
  Process 0 moves it, every process waits for that and re-reads the steps."""
  source = mgr.directory / str(step)  # an etils.epath.Path: local or gs://
  target_dir = mgr.directory.parent / SET_ASIDE
  target = target_dir / str(step)
  if jax.process_index() == 0:
    target_dir.mkdir(parents=True, exist_ok=True)
    index = 1
    while target.exists():  # an earlier run set aside the same step
      index += 1
      target = target_dir / f"{step}.{index}"
    source.rename(target)
  multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
  mgr.reload()
  return str(target)


def saved_config(mgr: ocp.CheckpointManager, step: int) -> dict | None:
  """The config a checkpoint was saved with; None where it cannot be read."""
  try:
    return mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  except Exception:  # a damaged checkpoint: its state restore reports it
    return None


class NonFiniteState(RuntimeError):
  """The state to save holds NaN or inf: it is not saved."""


@jax.jit
def _finite_leaves(tree) -> list[jax.Array]:
  return [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.inexact)]


def check_finite(state, step: int) -> None:
  """Raises NonFiniteState naming the first leaf of `state` with NaN or inf."""
  finite = jax.device_get(_finite_leaves(state))
  if all(finite):
    return
  paths = [jax.tree_util.keystr(path) for path, x in
           jax.tree_util.tree_flatten_with_path(state)[0]
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  bad = [path for path, ok in zip(paths, finite) if not ok]
  raise NonFiniteState(f"step {step}: the state is not finite ({len(bad)} leaves, first "
                       f"{bad[0]}); it is not saved, the last checkpoint is the last "
                       "finite one")


def save(mgr: ocp.CheckpointManager, step: int, state, data_state: bytes, config,
         force: bool = False) -> bool:
  """Saves if the manager's policy (or `force`) says so; every process calls it.

  A state with NaN or inf is never saved (NonFiniteState): a run restarted from
  its workdir must not resume into the same failure. The data position of every
  process's shards is gathered, so that a run with another number of processes
  (same data.num_shards) can restore it.
  """
  if not (force or mgr.should_save(step)):
    return False
  check_finite(state, step)
  check_space(mgr, step, state_size(state))
  merged = pipeline.merge_states([s.encode() for s in gather_strings(data_state.decode())])
  return mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(json.loads(merged)),
      config=ocp.args.JsonSave(json.loads(config.to_json()))), force=force)


def restore(mgr: ocp.CheckpointManager, step: int, abstract_state, with_data: bool = True):
  """The state (placed as `abstract_state`'s shardings, whatever the mesh it
  was saved from) and the data position of every shard (None without data).

  State that a checkpoint of an earlier release lacks (SGC-VQGAN's codebook
  `missed` counts: the dead-code detector's) starts at zero, as in a fresh run."""
  saved = mgr.item_metadata(step)["state"]
  kept, added = _split_added(_fields(abstract_state), saved)
  args = {"state": ocp.args.StandardRestore(abstract_state.replace(**kept))}
  if with_data:
    args["data"] = ocp.args.JsonRestore()
  restored = mgr.restore(step, args=ocp.args.Composite(**args))
  state = restored["state"]
  if added:
    zeros = jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), a.sharding), added)
    state = state.replace(**_merge(_fields(state), zeros))
  data = json.dumps(_current_data_format(restored["data"])).encode() if with_data else None
  return state, data


def _fields(state) -> dict:
  """A state dataclass's fields by name."""
  return {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}


def _split_added(abstract: dict, saved) -> tuple[dict, dict]:
  """(the part of the nested dict `abstract` that `saved` holds, the rest)."""
  kept, added = {}, {}
  for key, value in abstract.items():
    if key not in saved and value is not None:
      added[key] = value
    elif isinstance(value, dict):
      kept[key], rest = _split_added(value, saved[key])
      if rest:
        added[key] = rest
    else:
      kept[key] = value
  return kept, added


def _merge(tree: dict, extra: dict) -> dict:
  merged = dict(tree)
  for key, value in extra.items():
    merged[key] = _merge(tree[key], value) if isinstance(tree.get(key), dict) else value
  return merged


def _current_data_format(data: dict) -> dict:
  """Checkpoints of the first release hold one process's state as
  {"process_0": json of {"shards": [...], "loaders": [...], "batches_done": n}}."""
  if "process_0" not in data:
    return data
  legacy = json.loads(data["process_0"])
  return {"batches_done": legacy["batches_done"],
          "shards": {str(s): state for s, state in zip(legacy["shards"], legacy["loaders"])}}


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)
