"""Joining the JAX processes of a multi-host run.

On a Cloud TPU pod slice (and under SLURM or Open MPI) `jax.distributed`
finds the coordinator by itself; elsewhere the coordinator address, the
process count and this process's id are given explicitly.
"""

from __future__ import annotations

import os

import jax
from absl import logging

# Environment variables by which a multi-process cluster can be recognised.
_CLUSTER_HINTS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                  "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")


def detected_cluster() -> str | None:
  """The first cluster hint that says there is more than one process."""
  for name in _CLUSTER_HINTS:
    value = os.environ.get(name, "")
    if name == "TPU_WORKER_HOSTNAMES" and "," not in value:
      continue  # a single-host TPU VM
    if name in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE") and value in ("", "1"):
      continue
    if value:
      return name
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the run's processes; returns whether this is a multi-process run."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif detected_cluster():
    jax.distributed.initialize()
  else:
    return False
  logging.info("process %d of %d, %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
