"""Joining the JAX processes of a multi-host run.

On a Cloud TPU pod slice (and under SLURM or Open MPI) `jax.distributed`
finds the coordinator by itself; elsewhere the coordinator address, the
process count and this process's id are given explicitly.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import threading

import jax
from absl import logging

def _give_up(where: str, timeout: int) -> None:
  print(f"error: {where} did not all join within {timeout} s (--init_timeout); "
        "check the address and that every process was started", file=sys.stderr, flush=True)
  os._exit(1)  # JAX's client is blocked in C++: nothing else can stop it


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


# HOST:PORT, the host a name or IPv4 address, or an IPv6 address in brackets.
_ADDRESS = re.compile(r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]{1,5})")


def check_coordinator_address(address: str) -> None:
  """Raises ValueError unless `address` is HOST:PORT with a port in 1..65535:
  JAX's client takes anything, and crashes on some (a segfault on a port that
  is not a number, an IndexError without a colon)."""
  match = _ADDRESS.fullmatch(address)
  valid = match is not None and 1 <= int(match["port"]) <= 65535
  if valid and match["ipv6"] is not None:
    try:
      ipaddress.IPv6Address(match["ipv6"])
    except ValueError:
      valid = False
  if not valid:
    raise ValueError(f"--coordinator_address={address}: expected HOST:PORT with a port in "
                     "1..65535 (an IPv6 host in brackets, [::1]:1234)")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout: int = 300) -> bool:
  """Joins the run's processes; returns whether this is a multi-process run.

  A peer that never comes would end in an abort inside JAX's C++ client after
  its timeout; a watchdog ends the process first, with one line, `timeout`
  seconds after the wait began."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
    check_coordinator_address(coordinator_address)
    where = f"{num_processes} processes at {coordinator_address}"
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  elif detected_cluster():
    where, kwargs = f"the processes of the {detected_cluster()} cluster", {}
  else:
    return False
  if timeout <= 0:
    raise ValueError(f"--init_timeout={timeout}: must be positive")
  print(f"waiting for {where} (up to {timeout} s)", file=sys.stderr, flush=True)
  watchdog = threading.Timer(timeout, _give_up, (where, timeout))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(initialization_timeout=timeout + 60, **kwargs)
  finally:
    watchdog.cancel()
  logging.info("process %d of %d, %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
