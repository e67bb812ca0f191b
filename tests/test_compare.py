"""The quality-table tool: columns named by --names, clashes refused."""

import json
import os

import pytest

from sgc_jax.tools import compare


def _run(tmp_path, name, quantizer, miou, **more):
  os.makedirs(tmp_path / name / "eval")
  (tmp_path / name / "eval" / "eval.json").write_text(json.dumps(
      {"step": 300, "images": 2000, "quantizer": quantizer, "hungarian_miou": miou, **more}))
  return str(tmp_path / name)


def test_names_label_columns_and_clashing_names_are_refused(tmp_path, capsys):
  guided, free = _run(tmp_path, "guided/sgc", "sgc", 0.3), _run(tmp_path, "free/sgc", "sgc", 0.25)
  with pytest.raises(SystemExit, match="two columns named 'sgc': give --names"):
    compare.main([guided, free])
  readme = tmp_path / "README.md"
  readme.write_text("a\n<!-- quality-table-x -->\nold\n<!-- /quality-table-x -->\nb\n")
  compare.main([guided, free, "--names", "true labels,pseudo-labels", "--readme", str(readme),
                "--table", "x"])
  text = readme.read_text()
  assert "| metric | true labels | pseudo-labels |" in text and "old" not in text
  assert "| Hungarian mIoU | 0.300 | 0.250 |" in text
  # Rows no run measured are left out; a metric one run could not measure is "absent".
  assert "PSNR" not in text and "level 0" not in text
  with pytest.raises(SystemExit, match="1 names for 2 workdirs"):
    compare.main([guided, free, "--names", "one"])


def test_pyramid_and_open_vocabulary_rows(tmp_path, capsys):
  run = _run(tmp_path, "pat", "ema", 0.1, psnr_1=25.0, pat_miou=0.5, pat_miou_unseen=None,
             baseline_miou=0.25, baseline_miou_seen=0.3)
  compare.main([run])
  out = capsys.readouterr().out
  assert "| level 1: PSNR of its picture (dB) | 25.00 |" in out
  assert "| pat map: mIoU | 0.500 |" in out
  assert "| pat map: mIoU, held-out classes | absent |" in out
  assert "| baseline map: mIoU | 0.250 |" in out and "level 0" not in out


def test_seeds_of_one_name_are_one_column_of_mean_and_spread(tmp_path, capsys):
  classes = {"class_names": ["road", "pole"]}
  runs = [_run(tmp_path, f"sgc{seed}", "sgc", miou, **classes,
               **{"zero_shot_iou/road": iou, "zero_shot_iou/pole": None, "units/road": 3.0})
          for seed, (miou, iou) in enumerate([(0.2, 0.5), (0.3, 0.7), (0.4, 0.9)])]
  ema = _run(tmp_path, "ema", "ema", 0.1, **classes, **{"units/road": 5.0})
  compare.main(runs + [ema, "--names", "sgc,sgc,sgc,ema", "--seeds"])
  out = capsys.readouterr().out
  assert "| metric | sgc (3 seeds) | ema |" in out
  assert "| Hungarian mIoU | 0.300 ± 0.100 | 0.100 |" in out
  assert "| class | sgc: zero-shot IoU | sgc: units | ema: units |" in out
  assert "| road | 0.700 ± 0.200 | 3 ± 0 | 5 |" in out
  assert "| pole | absent | absent | absent |" in out
