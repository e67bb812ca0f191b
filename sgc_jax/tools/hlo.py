"""What a compiled program communicates, read from its optimised HLO text.

`collectives(text)` lists every collective with its payload (the bytes of its
result) and group size; `bytes_per_device` turns payloads into the bytes each
device sends with ring algorithms, which is what the interconnect carries:
  all-reduce       2 (n-1)/n x size
  all-gather       (n-1)/n x result size
  reduce-scatter   (n-1) x result size (= (n-1)/n x input size)
  all-to-all       (n-1)/n x size
  collective-permute  size
"""

from __future__ import annotations

import dataclasses
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16}
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<kind>" + "|".join(KINDS) +
    r")(?:-start)?\((?P<rest>.*)$")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  payload_bytes: int
  group_size: int
  computation: str

  @property
  def bytes_per_device(self) -> float:
    n = self.group_size
    if n <= 1:
      return 0.0
    factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n,
              "reduce-scatter": n - 1, "all-to-all": (n - 1) / n,
              "collective-permute": 1.0}[self.kind]
    return factor * self.payload_bytes


def _shape_bytes(shape: str) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype not in _DTYPE_BYTES:
      continue
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    total += count * _DTYPE_BYTES[dtype]
  return total


def _group_size(rest: str, num_devices: int) -> int:
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", rest)
  if iota:
    return int(iota.group(2))
  explicit = re.search(r"replica_groups=\{\{([\d,]*)\}", rest)
  if explicit and explicit.group(1):
    return len(explicit.group(1).split(","))
  if "source_target_pairs" in rest:
    return 2
  return num_devices  # replica_groups={}: every device


def computations(text: str) -> dict[str, list[str]]:
  """The lines of every computation of an HLO module, by name."""
  blocks, name = {}, None
  for line in text.splitlines():
    header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if header and not line.startswith(" "):
      name = header.group(1)
      blocks[name] = []
    elif line.startswith("}"):
      name = None
    elif name is not None:
      blocks[name].append(line)
  return blocks


def collectives(text: str, num_devices: int) -> list[Collective]:
  found = []
  for name, lines in computations(text).items():
    for line in lines:
      match = _INSTRUCTION.match(line)
      if match:
        found.append(Collective(match.group("kind"), _shape_bytes(match.group("shape")),
                                _group_size(match.group("rest"), num_devices), name))
  return found


def loop_bodies(text: str) -> set[str]:
  """Names of the computations that are bodies of while loops (and what they call)."""
  blocks = computations(text)
  bodies = set(re.findall(r"body=%?([\w.\-]+)", text))
  frontier = list(bodies)
  while frontier:  # computations called from a body run per iteration too
    for callee in re.findall(r"(?:to_apply|calls|body|condition)=%?([\w.\-]+)",
                             "\n".join(blocks.get(frontier.pop(), []))):
      if callee not in bodies:
        bodies.add(callee)
        frontier.append(callee)
  return bodies


def summary(found: list[Collective]) -> dict[str, tuple[int, float]]:
  """kind -> (count, bytes sent per device)."""
  table: dict[str, tuple[int, float]] = {}
  for c in found:
    count, sent = table.get(c.kind, (0, 0.0))
    table[c.kind] = (count + 1, sent + c.bytes_per_device)
  return table
