"""Orbax checkpoints of the train state, the data position and the config."""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, save_every: int, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, save_interval_steps=save_every,
          enable_async_checkpointing=True, create=True))


def save(mgr: ocp.CheckpointManager, step: int, state, data_state: bytes, config,
         force: bool = False) -> bool:
  return mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave({"process_0": data_state.decode()}),
      config=ocp.args.JsonSave(json.loads(config.to_json()))), force=force)


def restore(mgr: ocp.CheckpointManager, step: int, abstract_state):
  """The state (placed as `abstract_state`'s shardings) and the data position."""
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]["process_0"].encode()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)
