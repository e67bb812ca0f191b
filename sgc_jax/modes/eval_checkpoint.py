"""`--mode=eval`: every evaluator of the config on WORKDIR's latest checkpoint,
with every metric (linear probe, LPIPS and rFID with their weights) and every
picture, written as WORKDIR/eval/eval.json, eval.md and PNGs (the folder whole
or not at all: a failed write leaves the previous one)."""

from __future__ import annotations

import json
import os

import jax

from sgc_jax.core import evaluation, loop
from sgc_jax.data import pipeline, sources
from sgc_jax.modes import train
from sgc_jax.utils import run_output, viz


def format_value(value, spec: str) -> str:
  return "absent" if value is None else format(value, spec)


def markdown(results: dict) -> str:
  """The table of the metrics the results hold (those the evaluators label, in
  their order, then the rest), then the table of per-class results ("NAME/CLASS")."""
  known = evaluation.table_rows(results)
  others = [(key, key, ".4g") for key, value in results.items()
            if key not in {row[0] for row in known} | {"images", "step"}
            and isinstance(value, float) and "/" not in key]
  text = run_output.markdown_table(
      ("metric", "value"), [(label, format_value(results[key], spec))
                            for key, label, spec in known + others], align="lr")
  class_names = results.get("class_names", ())
  columns = evaluation.class_columns(results, class_names)
  if columns:
    text += "\nPer class:\n\n" + run_output.markdown_table(
        ("class",) + tuple(label for _, label, _ in columns),
        [(name,) + tuple(format_value(results.get(f"{key}/{name}"), spec)
                         for key, _, spec in columns) for name in class_names],
        align="l" + "r" * len(columns))
  return text


def _frame_text(config) -> str:
  frame = pipeline.eval_frame(config)
  if frame:
    return f" (whole frames at {frame[1]}x{frame[0]})"
  return f" (centred squares at {config.data.image_size}x{config.data.image_size})"


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
  results = {"step": step, "method": method.name, **method.summary(),
             "class_names": list(method.class_names), **metrics}
  if jax.process_index() == 0:
    # Whole or not at all: the table never describes pictures of another step.
    with run_output.replacing_folder(directory) as partial:
      with open(os.path.join(partial, "eval.json"), "w") as f:
        json.dump(results, f, indent=1)
      with open(os.path.join(partial, "eval.md"), "w") as f:
        described = ", ".join(f"{k} {v}" for k, v in method.summary().items())
        f.write(f"Step {step}, {method.name}{', ' + described if described else ''}, "
                f"{int(results.get('images', 0))} images of {config.data.name}:"
                f"{config.data.eval_split}{_frame_text(config)}\n\n"
                + markdown(results))
      for name, image in pictures.items():
        viz.save_png(image, os.path.join(partial, f"{name}.png"))
  return results
