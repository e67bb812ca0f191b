"""One process of the multi-host test (tests/test_multihost.py).

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR OUT JOB...

Each JOB is WORKDIR:STEPS: train the tiny config in WORKDIR (resuming from its
checkpoints) up to STEPS. Process 0 writes the final metrics of every job to
OUT as JSON.
"""

import json
import os
import re
import sys


def main():
  process_id, num_processes, port = map(int, sys.argv[1:4])
  data_dir, out = sys.argv[4:6]
  jobs = [job.rsplit(":", 1) for job in sys.argv[6:]]
  # This process's share of the 8 devices of the one-process reference.
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count="
                             f"{8 // num_processes}").strip()
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:0] = [here, os.path.dirname(here)]  # the tests and the configs
  from jax._src import distributed as jax_distributed  # the coordination client
  from sgc_jax.modes import train
  from sgc_jax.runtime import distributed
  from test_multihost import multihost_config

  distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id)
  client = jax_distributed.global_state.client
  results = {}
  for index, (workdir, steps) in enumerate(jobs):
    # Start each job together: gloo gives a peer 30 s to reach the first
    # collective, which a loaded 2-core machine can exceed at start-up.
    client.wait_at_barrier(f"job_{index}", 600_000)
    metrics = train.train_and_evaluate(multihost_config(data_dir, int(steps)), workdir)
    results[workdir] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
  if process_id == 0:
    with open(out, "w") as f:
      json.dump(results, f)


if __name__ == "__main__":
  main()
