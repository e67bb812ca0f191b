"""Where a train step's time goes, by XLA op: `python -m sgc_jax.tools.bench profile`.

    python -m sgc_jax.tools.bench profile --config=configs/X.py[:args] [--batch_size=8]
        [--steps=3] [--top=15]

Compiles the config's train step (as `bench train`), runs 2 steps, traces
--steps more with `jax.profiler`, and prints the compiled HLO ops that took
the most time per step (summed over the threads that ran them), each with its
shape and the model code it comes from, and the time by kind of op (the
instruction name without its number: `ynn_fusion` holds the convolutions and
matrix products on XLA:CPU). XLA's own (Eigen) convolutions, which
`sgc_jax/runtime/compiler.py` selects on CPU, run asynchronously on the thread pool:
the trace holds only their launch, so their time is in the step's wall time
(printed too) but not in any op's. Reading the trace needs the XSpace protocol
buffer, which the `test` extra's TensorFlow carries.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time

import jax

from sgc_jax.runtime import sharding
from sgc_jax.tools import synthetic
from sgc_jax.tools.versus import BenchError

_DEFINITION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ")


def hlo_definitions(hlo_text: str) -> dict[str, str]:
  """{instruction name: its line} of an HLO module's text."""
  definitions = {}
  for line in hlo_text.splitlines():
    match = _DEFINITION.match(line)
    if match:
      definitions[match.group(1)] = line
  return definitions


def op_times(xspace, definitions: dict[str, str]) -> collections.Counter:
  """Picoseconds per HLO instruction over every event of the trace that names one."""
  times = collections.Counter()
  for plane in xspace.planes:
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if name in definitions:
          times[name] += event.duration_ps
  return times


def describe(line: str) -> tuple[str, str]:
  """(result shape, the op_name metadata without the jit prefix) of an HLO line."""
  shape = line.split("=", 1)[1].split()[0]
  meta = re.search(r'op_name="([^"]*)"', line)
  return shape, (meta.group(1).split("/", 1)[-1] if meta else "")


def tables(times: collections.Counter, definitions: dict[str, str], steps: int, top: int):
  """(top ops rows, by-kind rows) in ms per step and share of the total."""
  total = max(sum(times.values()), 1)
  ms = lambda ps: f"{ps / 1e9 / steps:.1f}"
  share = lambda ps: f"{100 * ps / total:.1f}"
  rows = []
  for name, ps in times.most_common(top):
    shape, where = describe(definitions[name])
    rows.append([ms(ps), share(ps), name, shape, where[-80:]])
  kinds = collections.Counter()
  for name, ps in times.items():
    kinds[re.sub(r"\.\d+$", "", name)] += ps
  by_kind = [[ms(ps), share(ps), kind] for kind, ps in kinds.most_common(top)]
  return rows, by_kind, total / 1e9 / steps


def profile(config, batch_size: int, steps: int, top: int):
  try:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
  except ImportError:
    raise BenchError("bench profile reads the trace with TensorFlow's XSpace protocol "
                      "buffer: pip install -e '.[test]'") from None
  trainer = synthetic.make_trainer(config)
  state = trainer.create_train_state(config.seed)
  host = synthetic.synthetic_batch(config, batch_size, 10)
  batch = jax.tree.map(lambda x: jax.device_put(x, sharding.batch_sharding(trainer.mesh)), host)
  step = trainer.jit_train_step(trainer.phase(0), batch).lower(state, batch).compile()
  for _ in range(2):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    jax.profiler.stop_trace()
    path, = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
    xspace = xplane_pb2.XSpace()
    with open(path, "rb") as f:
      xspace.ParseFromString(f.read())
  definitions = hlo_definitions(step.as_text())
  return (*tables(op_times(xspace, definitions), definitions, steps, top), wall_ms)
