"""A quality table: eval.json of several runs side by side, into a Markdown file.

    python -m sgc_jax.tools.compare workdir/compare/{vq,ema,sgc} --readme README.md [--table gan]
        [--names vq,ema,sgc]

replaces the text between the file's `<!-- quality-table -->` markers (with
`--table NAME`, between `<!-- quality-table-NAME -->` markers).
"""

from __future__ import annotations

import argparse
import json
import os

from sgc_jax.core import evaluation
from sgc_jax.modes.eval_checkpoint import format_value
from sgc_jax.utils.run_output import markdown_table


def table(runs: dict[str, dict]) -> str:
  """The evaluators' rows that some run measured (a metric a run could not
  measure, e.g. LPIPS without weights, is in its results as None: "absent")."""
  names = list(runs)
  measured = {key: None for results in runs.values() for key in results}
  return markdown_table(["metric", *names],
                        [[label, *(format_value(runs[n].get(key), spec) for n in names)]
                         for key, label, spec in evaluation.table_rows(measured)])


def read_runs(workdirs: list[str], names: list[str] | None = None) -> dict[str, dict]:
  """{column name: eval.json} of each workdir; a column is named by `names`,
  else by the workdir's base name."""
  if names is not None and len(names) != len(workdirs):
    raise SystemExit(f"error: {len(names)} names for {len(workdirs)} workdirs")
  runs = {}
  for index, workdir in enumerate(workdirs):
    path = os.path.join(workdir, "eval", "eval.json")
    if not os.path.isfile(path):
      raise SystemExit(f"error: {path} missing: run --mode=eval on {workdir} first")
    with open(path) as f:
      results = json.load(f)
    name = names[index] if names else os.path.basename(os.path.normpath(workdir))
    if name in runs:
      raise SystemExit(f"error: two columns named {name!r}: give --names")
    runs[name] = results
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
  args = parser.parse_args(argv)
  runs = read_runs(args.workdirs, args.names.split(",") if args.names else None)
  steps = sorted({r["step"] for r in runs.values()})
  images = sorted({int(r["images"]) for r in runs.values() if "images" in r})
  body = (f"Step {'/'.join(map(str, steps))}, {'/'.join(map(str, images))} validation "
          "images each.\n\n" + table(runs))
  print(body)
  if args.readme:
    with open(args.readme) as f:
      text = f.read()
    with open(args.readme, "w") as f:
      f.write(replace_between_markers(text, body, args.table))
    print(f"wrote the table into {args.readme}")


if __name__ == "__main__":
  main()
