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

# Rows of the markdown table: key, label, format.
TABLE = (("psnr", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".3f"), ("l1", "L1", ".4f"),
         ("lpips", "LPIPS", ".4f"), ("rfid", "rFID", ".2f"),
         ("codebook_usage", "codebook usage", ".3f"), ("perplexity", "perplexity", ".1f"),
         ("normalized_entropy", "usage entropy / log K", ".3f"),
         ("top10_share", "tokens on top-10 % codes", ".3f"),
         ("token_purity", "token purity (allocated class)", ".3f"),
         ("code_purity", "token purity (code's majority class)", ".3f"),
         ("zero_shot_miou", "zero-shot mIoU (nearest code's class)", ".3f"),
         ("posterior_miou", "zero-shot mIoU (argmax p(c|z))", ".3f"),
         ("class_matched_miou", "mIoU, units' classes matched to the labels", ".3f"),
         ("class_matched_token_purity", "token purity, classes matched to the labels", ".3f"),
         ("hungarian_miou", "Hungarian mIoU", ".3f"),
         ("hungarian_pixel_accuracy", "Hungarian pixel accuracy", ".3f"),
         ("majority_miou", "many-to-one mIoU (unit's majority class)", ".3f"),
         ("majority_pixel_accuracy", "many-to-one pixel accuracy", ".3f"),
         ("probe_miou", "linear-probe mIoU", ".3f"),
         ("feature_hungarian_miou", "features: k-means Hungarian mIoU", ".3f"),
         ("feature_hungarian_pixel_accuracy", "features: k-means Hungarian pixel accuracy",
          ".3f"),
         ("feature_probe_miou", "features: linear-probe mIoU", ".3f"),
         ("feature_probe_pixel_accuracy", "features: linear-probe pixel accuracy", ".3f"),
         # A pyramid tokenizer's levels (PAT), finest first.
         *((f"{key}_{level}", f"level {level}: {label}", spec) for level in range(4)
           for key, label, spec in (("psnr", "PSNR of its picture (dB)", ".2f"),
                                    ("l1", "L1 of its picture", ".4f"),
                                    ("codebook_usage", "codebook usage", ".3f"),
                                    ("perplexity", "perplexity", ".1f"))),
         # Open-vocabulary segmentation (PAT): the prediction, the semantic
         # branch alone, the baseline alone.
         *((f"{prefix}_{key}", f"{name}: {label}", ".3f")
           for prefix, name in (("pat", "PAT"), ("branch", "semantic branch alone"),
                                ("baseline", "baseline alone"))
           for key, label in (("miou", "mIoU"), ("miou_seen", "mIoU, seen classes"),
                              ("miou_unseen", "mIoU, held-out classes"),
                              ("pixel_accuracy", "pixel accuracy"))))


def format_value(value, spec: str) -> str:
  return "absent" if value is None else format(value, spec)


def markdown(results: dict) -> str:
  """The table of the metrics the results hold (in TABLE's order, then the rest)."""
  known = [row for row in TABLE if row[0] in results]
  others = [(key, key, ".4g") for key, value in results.items()
            if key not in {row[0] for row in TABLE} | {"images", "step"}
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
