"""`--mode=eval`: every evaluator of the config on WORKDIR's latest checkpoint,
with every metric (linear probe, LPIPS and rFID with their weights) and every
picture, written as WORKDIR/eval/eval.json, eval.md and PNGs (the folder whole
or not at all: a failed write leaves the previous one)."""

from __future__ import annotations

import json
import os

import jax

from sgc_jax.core import evaluation, loop
from sgc_jax.data import sources
from sgc_jax.modes import train
from sgc_jax.utils import run_output, viz


def format_value(value, spec: str) -> str:
  return "absent" if value is None else format(value, spec)


def markdown(results: dict) -> str:
  """The table of the metrics the results hold (those the evaluators label, in
  their order, then the rest)."""
  known = evaluation.table_rows(results)
  others = [(key, key, ".4g") for key, value in results.items()
            if key not in {row[0] for row in known} | {"images", "step"}
            and isinstance(value, float)]
  return run_output.markdown_table(
      ("metric", "value"), [(label, format_value(results[key], spec))
                            for key, label, spec in known + others], align="lr")


def evaluate(config, dataset, method, state, step: int, write_image) -> dict:
  """Every evaluator of the config, in their --mode=eval form."""
  variables = loop.prediction_variables(method, state, dataset, config)
  return evaluation.run(evaluation.create(config), evaluation.Context(
      method, variables, method.units(variables), dataset, config, step, final=True,
      write_image=write_image))


def evaluate_checkpoint(config, workdir: str, initial: bool = False) -> dict:
  """Restores WORKDIR's latest checkpoint, evaluates it, writes the results.
  `initial`: the method's initial state instead (random init, or `init_from`'s
  weights): the untrained baseline of the same protocol."""
  directory = os.path.join(workdir, "eval")
  if jax.process_index() == 0:
    # Before the restore and the evaluation: a workdir that is a file, or one
    # that cannot be written, is one line, not a traceback after all the work.
    run_output.check_output_folder(directory)
  if initial:
    dataset = sources.open_dataset(config.data.name, config.data.data_dir)
    method = train.build_method(config, dataset)
    state, step = method.initial_state(method.create_train_state(config.seed)), 0
  else:
    dataset, method, state, step = train.restore_latest(config, workdir)
  pictures = {}
  metrics = evaluate(config, dataset, method, state, step, pictures.__setitem__)
  results = {"step": step, "method": method.name, **method.summary(), **metrics}
  if jax.process_index() == 0:
    # Whole or not at all: the table never describes pictures of another step.
    with run_output.replacing_folder(directory) as partial:
      with open(os.path.join(partial, "eval.json"), "w") as f:
        json.dump(results, f, indent=1)
      with open(os.path.join(partial, "eval.md"), "w") as f:
        described = ", ".join(f"{k} {v}" for k, v in method.summary().items())
        f.write(f"Step {step}, {method.name}{', ' + described if described else ''}, "
                f"{int(results.get('images', 0))} images of {config.data.name}:"
                f"{config.data.eval_split}\n\n" + markdown(results))
      for name, image in pictures.items():
        viz.save_png(image, os.path.join(partial, f"{name}.png"))
  return results
