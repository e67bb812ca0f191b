"""Evaluation: the evaluator protocol, the registry of evaluator types, and the
one pass over the evaluation split that all due evaluators share.

    config.evals.NAME = dict(type=TYPE, every=N, **options)

Every evaluator due at a step (every N steps, and at the last one; all of them
in `--mode=eval`) is fed by one pass over the evaluation split, in which the
method's predict function runs once per batch. Types (`sgc_jax/evaluators/`):
reconstruction, codebook, segmentation, pictures, pyramid, open_vocab; another
registers with `register`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from sgc_jax.config_lib import ConfigError, resolve
from sgc_jax.core.method import Method, Prediction, Units
from sgc_jax.data import pipeline
from sgc_jax.runtime import compiler, sharding


@dataclasses.dataclass
class Context:
  """What an evaluation step knows: the method, its variables and units, and
  the data set. Evaluators do not pass anything to each other: each computes
  what it reports, so their order does not matter."""
  method: Method
  variables: Any
  units: Units | None
  dataset: Any
  config: Any
  step: int
  final: bool  # --mode=eval: every metric (probe, perceptual) and every picture
  write_image: Callable[[str, np.ndarray], Any]


class Evaluator:
  """One kind of evaluation. `options` are its config entry's fields.

  An evaluator that reads the evaluation split defines `batch_sums` (device
  sums, summed over batches) and optionally `examples` (per-example arrays,
  gathered to the host batch by batch, `add_examples`); then `finish` turns
  the totals into metrics. `rows` label the metrics `finish` reports, for
  the tables of eval.md and of several runs side by side."""
  # (metric key, label, format) in table order.
  rows: tuple[tuple[str, str, str], ...] = ()
  # Per-class results, reported as "NAME/CLASS": (NAME, label, format) in
  # the column order of the per-class table.
  class_columns: tuple[tuple[str, str, str], ...] = ()

  @classmethod
  def class_columns_of(cls, results: dict) -> tuple[tuple[str, str, str], ...]:
    """The per-class columns `results` may hold: `class_columns`, unless the
    evaluator names them after what it found (as `table_rows` does)."""
    return cls.class_columns

  def __init__(self, name: str, options: dict):
    self.name, self.options = name, options
    self.every = options["every"]

  def due(self, step: int, total_steps: int) -> bool:
    return step % self.every == 0 or step == total_steps

  def reads_split(self, context: Context) -> bool:
    """Whether this evaluation needs the pass over the evaluation split."""
    del context
    return True

  def start(self, context: Context):
    """Host state for this evaluation; its `constants` are passed to the
    jitted pass as arguments (weights of perceptual networks ...)."""
    del context
    return None

  def constants(self, state):
    del state
    return None

  def batch_sums(self, predictions: Prediction, batch: dict, constants, static) -> dict:
    raise NotImplementedError

  def examples(self, predictions: Prediction, batch: dict, constants, static):
    del predictions, batch, constants, static
    return None

  def add_examples(self, state, arrays) -> None:
    raise NotImplementedError

  def static(self, context: Context):
    """Hashable facts the jitted sums depend on (number of units ...)."""
    del context
    return None

  def finish(self, totals: dict | None, state, context: Context) -> dict[str, float | None]:
    raise NotImplementedError

  @classmethod
  def table_rows(cls, results: dict) -> list[tuple[str, str, str]]:
    """The rows of `rows` whose metric `results` holds."""
    return [row for row in cls.rows if row[0] in results]


def predicted_shapes(context: Context) -> Prediction:
  """The shapes of the method's predictions on one evaluation image."""
  height, width = pipeline.eval_shape(context.config)
  return _predicted_shapes(context.method, context.variables, height, width)


def _predicted_shapes(method: Method, variables, height: int, width: int) -> Prediction:
  return jax.eval_shape(method.predict, variables,
                        jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32))


# (method, frame) pairs `check_eval_frame` has passed: shapes do not change
# between a run's evaluations, so each is traced once.
_frames_checked: set = set()


def check_eval_frame(method: Method, variables, config) -> None:
  """A ConfigError unless `data.eval_frame` splits into the method's token grid.
  `variables` may hold jax.ShapeDtypeStructs (`Method.fitted_shapes`)."""
  frame = pipeline.eval_frame(config)
  if frame is None or (method, frame) in _frames_checked:
    return
  try:
    grid = _predicted_shapes(method, variables, *frame).indices.shape[1:3]
  except Exception as error:
    raise ConfigError(f"config.data.eval_frame={frame}: method {method.name!r} cannot "
                      f"take {frame[0]}x{frame[1]} images ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else ''})") from None
  if frame[0] % grid[0] or frame[1] % grid[1]:
    size = config.data.image_size
    token = size // _predicted_shapes(method, variables, size, size).indices.shape[1]
    raise ConfigError(f"config.data.eval_frame={frame}: its {grid[0]}x{grid[1]} tokens do "
                      f"not tile {frame[0]}x{frame[1]} pixels; use multiples of "
                      f"{token} pixels (the method's token at image_size {size})")
  _frames_checked.add((method, frame))


def split_pass(method: Method, variables, source, config,
               evaluators: list[tuple[Evaluator, Any, Any]]) -> dict[str, dict]:
  """Sums of every (evaluator, host state, static) over every record of
  `source`, with one predict per batch: {evaluator name: totals (NumPy)}."""
  jitted = _pass_fn(method, tuple((e, static) for e, _, static in evaluators))
  constants = {e.name: e.constants(state) for e, state, _ in evaluators}
  totals = None
  batches = pipeline.evaluation_pipeline(source, config, method.mesh)
  for batch in tqdm.tqdm(batches, total=batches.num_batches, unit="batch", leave=False,
                         desc=f"evaluate {len(source)} images",
                         disable=jax.process_index() != 0, mininterval=2.0):
    sums, examples = jitted(variables, constants, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    for evaluator, state, _ in evaluators:
      if examples.get(evaluator.name) is not None:  # batch-sharded: all processes get all
        evaluator.add_examples(state, sharding.gather_examples(batch["mask"],
                                                               examples[evaluator.name]))
  return jax.tree.map(np.asarray, jax.device_get(totals))


@functools.cache
def _pass_fn(method: Method, evaluators: tuple):
  """The jitted per-batch sums of `evaluators`, compiled once per method and set."""

  @compiler.jit
  def batch_pass(variables, constants, batch):
    predictions = method.predict(variables, batch["image"][:, 0])
    sums, examples = {}, {}
    for evaluator, static in evaluators:
      sums[evaluator.name] = evaluator.batch_sums(predictions, batch,
                                                  constants[evaluator.name], static)
      examples[evaluator.name] = evaluator.examples(predictions, batch,
                                                    constants[evaluator.name], static)
    return sums, examples

  return batch_pass

_REGISTRY = {
    "reconstruction": "sgc_jax.evaluators.reconstruction:Reconstruction",
    "codebook": "sgc_jax.evaluators.codebook:Codebook",
    "segmentation": "sgc_jax.evaluators.segmentation:Segmentation",
    "pictures": "sgc_jax.evaluators.pictures:Pictures",
    "pyramid": "sgc_jax.evaluators.pyramid:Pyramid",
    "open_vocab": "sgc_jax.evaluators.open_vocab:OpenVocab",
}


def register(type_name: str, target) -> None:
  """Adds an evaluator type: its class or "module:class"."""
  _REGISTRY[type_name] = target


def _class(type_name: str):
  return resolve(_REGISTRY[type_name])


def validate(config) -> None:
  for name, entry in config.get("evals", {}).items():
    if "type" not in entry or entry["type"] not in _REGISTRY:
      raise ConfigError(f"config.evals.{name}.type={entry.get('type')!r}: must be one of "
                        + ", ".join(sorted(_REGISTRY)))
    every = entry.get("every")
    if not (isinstance(every, int) and every >= 1):
      raise ConfigError(f"config.evals.{name}.every={every!r}: must be an integer >= 1")
  create(config)  # each evaluator checks its own options


def create(config) -> list[Evaluator]:
  """The config's evaluators, in the order of its entries."""
  return [_class(entry["type"])(name, dict(entry)) for name, entry in
          config.get("evals", {}).items()]


def run(evaluators: list[Evaluator], context: Context) -> dict[str, float | None]:
  """`evaluators` on `context`: one pass over the evaluation split for all
  that read it, then each one's `finish`; their metrics merged."""
  check_eval_frame(context.method, context.variables, context.config)
  states = {e.name: e.start(context) for e in evaluators}
  readers = [(e, states[e.name], e.static(context)) for e in evaluators
             if e.reads_split(context)]
  totals = {}
  if readers:
    totals = split_pass(context.method, context.variables,
                        context.dataset.split(context.config.data.eval_split), context.config,
                        readers)
  results = {}
  for evaluator in evaluators:
    results.update(evaluator.finish(totals.get(evaluator.name), states[evaluator.name],
                                    context))
  return results


def class_columns(results: dict, class_names) -> list[tuple[str, str, str]]:
  """(name, label, format) of every per-class result ("NAME/CLASS") that
  `results` holds, in the registry's order."""
  columns = []
  for type_name in _REGISTRY:
    columns += [column for column in _class(type_name).class_columns_of(results)
                if any(f"{column[0]}/{name}" in results for name in class_names)
                and column not in columns]
  return columns


def table_rows(results: dict) -> list[tuple[str, str, str]]:
  """(key, label, format) of every metric of `results` that an evaluator type
  labels, in the registry's order."""
  rows, seen = [], set()
  for type_name in _REGISTRY:
    for row in _class(type_name).table_rows(results):
      if row[0] not in seen:
        rows.append(row)
        seen.add(row[0])
  return rows
