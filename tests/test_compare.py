"""The quality-table tool: columns named by --names, clashes refused."""

import json
import os

import pytest

from sgc_jax import compare


def _run(tmp_path, name, quantizer, miou):
  os.makedirs(tmp_path / name / "eval")
  (tmp_path / name / "eval" / "eval.json").write_text(json.dumps(
      {"step": 300, "images": 2000, "quantizer": quantizer, "hungarian_miou": miou}))
  return str(tmp_path / name)


def test_names_label_columns_and_clashing_names_are_refused(tmp_path, capsys):
  guided, free = _run(tmp_path, "sgc", "sgc", 0.3), _run(tmp_path, "sgc_pseudo", "sgc", 0.25)
  with pytest.raises(SystemExit, match="two columns named 'sgc': give --names"):
    compare.main([guided, free])
  readme = tmp_path / "README.md"
  readme.write_text("a\n<!-- quality-table-x -->\nold\n<!-- /quality-table-x -->\nb\n")
  compare.main([guided, free, "--names", "true labels,pseudo-labels", "--readme", str(readme),
                "--table", "x"])
  text = readme.read_text()
  assert "| metric | true labels | pseudo-labels |" in text and "old" not in text
  assert "| Hungarian mIoU | 0.300 | 0.250 |" in text
  with pytest.raises(SystemExit, match="1 names for 2 workdirs"):
    compare.main([guided, free, "--names", "one"])
