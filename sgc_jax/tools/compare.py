"""A quality table: eval.json of several runs side by side, into a Markdown file.

    python -m sgc_jax.tools.compare workdir/compare/{vq,ema,sgc} --readme README.md [--table gan]
        [--names vq,ema,sgc] [--seeds]

replaces the text between the file's `<!-- quality-table -->` markers (with
`--table NAME`, between `<!-- quality-table-NAME -->` markers). With `--seeds`,
runs of one name are seeds of one column: each cell is the mean ± the
standard deviation over them (ddof 1) and the header says how many. Where the
runs hold per-class results, a per-class table of zero-shot and linear-probe
IoU (PAT: its map's IoU) and of the units per class follows.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from sgc_jax.core import evaluation
from sgc_jax.modes.eval_checkpoint import format_value
from sgc_jax.utils.run_output import markdown_table


# The per-class results in the per-class table (labelled by their evaluator).
CLASS_KEYS = ("zero_shot_iou", "probe_iou", "pat_map_iou", "units")


def cell(seeds: list[dict], key: str, spec: str) -> str:
  """One run's value, or the mean ± standard deviation of several seeds' ("absent"
  where a seed lacks it)."""
  values = [results.get(key) for results in seeds]
  if len(values) == 1 or None in values:
    return format_value(values[0] if len(values) == 1 else None, spec)
  return (f"{format(float(np.mean(values)), spec)} ± "
          f"{format(float(np.std(values, ddof=1)), spec)}")


def _header(runs: dict[str, list[dict]]) -> list[str]:
  return [name if len(seeds) == 1 else f"{name} ({len(seeds)} seeds)"
          for name, seeds in runs.items()]


def table(runs: dict[str, list[dict]]) -> str:
  """The evaluators' rows that some run measured (a metric a run could not
  measure, e.g. LPIPS without weights, is in its results as None: "absent")."""
  measured = {key: None for seeds in runs.values() for results in seeds for key in results}
  return markdown_table(["metric", *_header(runs)],
                        [[label, *(cell(seeds, key, spec) for seeds in runs.values())]
                         for key, label, spec in evaluation.table_rows(measured)])


def class_table(runs: dict[str, list[dict]]) -> str | None:
  """Per class: each run's zero-shot, probe and PAT map IoU and units, where measured."""
  class_names = next((r["class_names"] for seeds in runs.values() for r in seeds
                      if r.get("class_names")), None)
  if not class_names:
    return None
  columns = [(name, seeds, key, label, spec) for name, seeds in runs.items()
             for key, label, spec in evaluation.class_columns(
                 {k: v for results in seeds for k, v in results.items()}, class_names)
             if key in CLASS_KEYS]
  if not columns:
    return None
  header = ["class"] + [f"{name}: {label}" for name, _, _, label, _ in columns]
  return markdown_table(header, [[c] + [cell(seeds, f"{key}/{c}", spec)
                                        for _, seeds, key, _, spec in columns]
                                 for c in class_names])


def read_runs(workdirs: list[str], names: list[str] | None = None,
              seeds: bool = False) -> dict[str, list[dict]]:
  """{column name: the eval.json of each of its runs}; a column is named by
  `names`, else by the workdir's base name; with `seeds`, runs of one name
  are one column's seeds, else a name may name one run."""
  if names is not None and len(names) != len(workdirs):
    raise SystemExit(f"error: {len(names)} names for {len(workdirs)} workdirs")
  runs: dict[str, list[dict]] = {}
  for index, workdir in enumerate(workdirs):
    path = os.path.join(workdir, "eval", "eval.json")
    if not os.path.isfile(path):
      raise SystemExit(f"error: {path} missing: run --mode=eval on {workdir} first")
    with open(path) as f:
      results = json.load(f)
    name = names[index] if names else os.path.basename(os.path.normpath(workdir))
    if name in runs and not seeds:
      raise SystemExit(f"error: two columns named {name!r}: give --names (or --seeds)")
    runs.setdefault(name, []).append(results)
  return runs


def replace_between_markers(text: str, body: str, table: str | None = None) -> str:
  name = f"quality-table-{table}" if table else "quality-table"
  begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
  if begin not in text or end not in text:
    raise SystemExit(f"error: the file has no {begin} ... {end} markers")
  head, rest = text.split(begin, 1)
  _, tail = rest.split(end, 1)
  return f"{head}{begin}\n{body}{end}{tail}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--readme", help="write the table into this file's markers")
  parser.add_argument("--table", help="which table's markers (default: the first)")
  parser.add_argument("--names", help="column names, comma-separated, one per workdir")
  parser.add_argument("--seeds", action="store_true",
                      help="runs of one name are seeds of one column: mean ± sd")
  args = parser.parse_args(argv)
  runs = read_runs(args.workdirs, args.names.split(",") if args.names else None, args.seeds)
  every = [r for seeds in runs.values() for r in seeds]
  steps = sorted({r["step"] for r in every})
  images = sorted({int(r["images"]) for r in every if "images" in r})
  body = (f"Step {'/'.join(map(str, steps))}, {'/'.join(map(str, images))} validation "
          "images each.\n\n" + table(runs))
  per_class = class_table(runs)
  if per_class:
    body += "\nPer class:\n\n" + per_class
  print(body)
  if args.readme:
    with open(args.readme) as f:
      text = f.read()
    with open(args.readme, "w") as f:
      f.write(replace_between_markers(text, body, args.table))
    print(f"wrote the table into {args.readme}")


if __name__ == "__main__":
  main()
