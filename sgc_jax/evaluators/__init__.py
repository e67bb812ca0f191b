"""Evaluators, by the `type` of their config entry:

    config.evals.NAME = dict(type=TYPE, every=N, **options)

Every evaluator due at a step (every N steps, and at the last one; all of them
in `--mode=eval`) is fed by one pass over the evaluation split, in which the
method's predict function runs once per batch. Types: reconstruction,
codebook, segmentation, pictures, pyramid (PAT's levels), open_vocab; another registers with `register`.
"""

from __future__ import annotations

from sgc_jax.config_lib import ConfigError, resolve
from sgc_jax.evaluators.base import Context, Evaluator, split_pass

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


def create(config) -> list[Evaluator]:
  """The config's evaluators, in the order of its entries."""
  return [_class(entry["type"])(name, dict(entry)) for name, entry in
          config.get("evals", {}).items()]


def run(evaluators: list[Evaluator], context: Context) -> dict[str, float | None]:
  """`evaluators` on `context`: one pass over the evaluation split for all
  that read it, then each one's `finish`; their metrics merged."""
  states = {e.name: e.start(context) for e in evaluators}
  readers = [(e, states[e.name], e.static(context)) for e in evaluators if e.reads_split]
  totals = {}
  if readers:
    totals = split_pass(context.method, context.variables,
                        context.dataset.split(context.config.data.eval_split), context.config,
                        readers)
  results = {}
  # Those that read the split first: the others (pictures) use what they leave.
  for evaluator in sorted(evaluators, key=lambda e: not e.reads_split):
    results.update(evaluator.finish(totals.get(evaluator.name), states[evaluator.name],
                                    context))
  return results
