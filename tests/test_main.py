"""The entry point: config errors on one line before any work, data and preview modes."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "sgc_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flag, message", [
    ("--config.data.nme=x", "--config.data.nme: no such config field. Did you mean \"name\""),
    ("--config.data.batch_size=abc", "--config.data.batch_size=abc: invalid literal for int()"),
    ("--config.data.batch_size=-4", "config.data.batch_size=-4: must be positive"),
    ("--config.mesh.fsdp=0", "config.mesh.fsdp=0: must be >= 1 or -1"),
    ("--config.data.crop.min_area=2.0", "config.data.crop: need 0 < min_area"),
    ("--config.model.codebook.mode=kmeans", "config.model.codebook.mode='kmeans': must be one of"),
    ("--config.checkpoint.every=0", "config.checkpoint.every=0: must be positive"),
    ("--config.checkpoint.keep=0", "config.checkpoint.keep=0: must be positive"),
    ("--config.log_every=0", "config.log_every=0: must be positive"),
    ("--config.total_steps=-1", "config.total_steps=-1: must be positive"),
    ("--config.optimizer.learning_rate=nan", "config.optimizer.learning_rate=nan: must be"),
    ("--config.data.num_views=3", "config.data.num_views=3: must be 1 or 2"),
    ("--config.evals.codebook.train_images=-1",
     "config.evals.codebook.train_images=-1: must be an integer >= 0"),
    ("--config.data.image_size=7", "config.model.resolution=64 differs from "
                                   "config.data.image_size=7"),
])
def test_bad_config_fields_are_one_line_errors(flag, message):
  result = _main("--config=configs/sgc_scenes.py", flag, "--mode=data", timeout=60)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [f"config error: {result.stderr.strip()[14:]}"]
  assert message in result.stderr


@pytest.mark.parametrize("flag, message", [
    ("--config.model.codebook.min_codes=0", "codebook.min_codes=0: must be an integer >= 1"),
    ("--config.model.codebook.min_codes=30", "codebook.num_codes=256 cannot give each of the "
                                             "10 classes min_codes=30 codes"),
    ("--config.model.codebook.decay=1.0", "codebook.decay=1.0: must be in [0, 1)"),
    ("--config.model.codebook.label_threshold=0.0", "codebook.label_threshold=0.0: must be in"),
    ("--config.model.codebook.semantic_map=argmax", "codebook.semantic_map='argmax': must be"),
])
def test_bad_codebook_fields_stop_training_before_any_work(data_dir, scenes64, tmp_path, flag,
                                                           message):
  result = _main("--config=configs/sgc_scenes.py", "--config.data.name=sgc_scenes/smoke64",
                 f"--config.data.data_dir={data_dir}", f"--workdir={tmp_path}", "--mode=train",
                 flag, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [f"config error: {result.stderr.strip()[14:]}"]
  assert message in result.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_bad_config_argument_is_a_one_line_error():
  result = _main("--config=configs/sgc_scenes.py:size=big", "--mode=data", timeout=60)
  assert result.returncode != 0
  assert result.stderr.strip() == ("config error: config argument size='big': "
                                   "expected type int")


def test_data_and_preview_modes(tmp_path):
  common = ["--config=configs/sgc_scenes.py", f"--workdir={tmp_path / 'work'}",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
            "--config.data.name=sgc_scenes/smoke64",
            "--config.data.num_shards=1",  # a field that defaults to None
            "--config.preview.num_examples=4"]
  result = _main(*common, "--mode=data")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "sgc_scenes/smoke64: images, 64px, 10 classes" in result.stdout
  assert "train: 512, validation: 128" in result.stdout
  result = _main(*common, "--mode=preview")
  assert result.returncode == 0, result.stderr[-2000:]
  for name in ("data.png", "views.png"):
    image = np.asarray(PIL.Image.open(tmp_path / "work" / "preview" / name))
    assert image.ndim == 3 and image.shape[0] > 4 * 64 and image.std() > 20


def test_reading_and_augmenting_never_imports_tensorflow(data_dir, scenes64):
  script = f"""
import sys
from sgc_jax.data import pipeline, sources
from sgc_jax.runtime import sharding
dataset = sources.open_dataset("sgc_scenes/smoke64", {data_dir!r})
spec = pipeline.PipelineSpec(split="train", global_batch_size=8, image_size=32,
                             train=True, num_views=2)
next(pipeline.InputPipeline(dataset.split("train"), spec, sharding.create_mesh()))
assert "tensorflow" not in sys.modules, "tensorflow was imported"
print("ok")
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_a_missing_peer_ends_in_one_line_after_the_init_timeout(data_dir, scenes64):
  with socket.socket() as probe:  # a free port for the coordinator
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  started = time.time()
  result = _main("--config=configs/sgc_scenes.py", "--config.data.name=sgc_scenes/smoke64",
                 f"--config.data.data_dir={data_dir}", "--mode=data",
                 f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 "--process_id=0", "--init_timeout=3", timeout=60)
  assert result.returncode == 1
  assert time.time() - started < 30
  assert result.stderr.strip().splitlines() == [
      f"waiting for 2 processes at 127.0.0.1:{port} (up to 3 s)",
      f"error: 2 processes at 127.0.0.1:{port} did not all join within 3 s (--init_timeout); "
      "check the address and that every process was started"]


def test_orbax_error_logs_stay_out_of_a_commands_output():
  # Orbax logs (with tracebacks) errors it also raises; the command says them in one line.
  import logging as std_logging
  from sgc_jax.utils import logs
  logs.quiet_libraries()
  absl_logger = std_logging.getLogger("absl")

  def shown(pathname, level):
    record = std_logging.LogRecord("absl", level, pathname, 1, "message", None, None)
    return all(f.filter(record) for f in absl_logger.filters)
  orbax_file = os.path.join("site-packages", "orbax", "checkpoint", "future.py")
  assert not shown(orbax_file, std_logging.ERROR)
  assert shown(orbax_file, std_logging.WARNING)
  assert shown(os.path.join("site-packages", "grain", "x.py"), std_logging.ERROR)
