"""Codebook use off the rendered set: on real photographs (a labelled mosaic
folder data set, tests/real_textures.py), a short run uses every code."""

import pytest

from sgc_jax.data import folder
from sgc_jax.modes import train
from test_train import tiny_config
import real_textures


@pytest.fixture(scope="module")
def textures(data_dir, tmp_path_factory):
  root = real_textures.write_folder(str(tmp_path_factory.mktemp("textures")), 384, 64, size=32)
  return "folder:" + folder.prepare(root, data_dir)


# The ema baseline's run is `slow` (2.5 min of CI): the method's own, sgc, stays in CI.
@pytest.mark.parametrize("quantizer", [pytest.param("ema", marks=pytest.mark.slow), "sgc"])
def test_every_code_is_used_on_real_photographs(data_dir, textures, tmp_path, quantizer):
  config = tiny_config(data_dir, quantizer, total_steps=80)
  config.data.name = textures
  config.checkpoint.every = 1000
  metrics = train.train_and_evaluate(config, str(tmp_path / quantizer))
  print(f"\n{quantizer}: validation codebook usage {metrics['val/codebook_usage']:.3f}, "
        f"perplexity {metrics['val/perplexity']:.1f} of 64 codes")
  assert metrics["val/codebook_usage"] >= 0.95
