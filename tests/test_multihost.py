"""Multi-host for real: 2 JAX processes x 4 CPU devices on localhost against
1 process x 8 devices (training, evaluation, checkpoints in both directions)."""

import json
import os
import shutil
import socket
import subprocess
import sys

import chex
import pytest

from sgc_jax.core import checkpoint, loop
from sgc_jax.modes import train
from test_train import tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))


def multihost_config(data_dir, steps):
  config = tiny_config(data_dir, total_steps=steps)
  config.data.num_shards = 2  # one per process of the 2-process run
  config.checkpoint.update(dict(every=1000, keep=5))
  config.optimizer.eps = 1e-3  # as in the 1 vs 8 devices test: no 0/0-sized updates
  return config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(data_dir, out, *jobs):
  port = _free_port()
  processes = [subprocess.Popen(
      [sys.executable, os.path.join(HERE, "multiprocess_worker.py"), str(i), "2", str(port),
       data_dir, out, *jobs], cwd=os.path.dirname(HERE), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for p, output in zip(processes, outputs):
    assert p.returncode == 0, output[-4000:]
  with open(out) as f:
    return json.load(f)


def _state(config, dataset, workdir, step):
  method = train.build_method(config, dataset)
  mgr = checkpoint.manager(workdir, 1000, 5)
  state, data = loop.restore_state(method, mgr, step)
  mgr.close()
  return state, json.loads(data)


def _assert_close(a, b):
  chex.assert_trees_all_close((a.params, a.codebook), (b.params, b.codebook),
                              rtol=2e-4, atol=2e-5)


def test_two_processes_train_evaluate_and_checkpoint_like_one(data_dir, scenes64, tmp_path):
  steps = 2
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  config = multihost_config(data_dir, steps)
  one_metrics = train.train_and_evaluate(config, one)
  one_to_two = str(tmp_path / "one_to_two")
  shutil.copytree(one, one_to_two)
  # The 2-process run trains its own run, then resumes the 1-process checkpoint.
  results = _two_processes(data_dir, str(tmp_path / "out.json"), f"{two}:{steps}",
                           f"{one_to_two}:{steps + 1}")
  two_metrics = results[two]
  for key in ("val/psnr", "val/l1", "val/ssim", "val/codebook_usage", "val/token_purity",
              "val/hungarian_miou", "val/images"):
    assert two_metrics[key] == pytest.approx(one_metrics[key], rel=1e-4, abs=1e-6), key

  state_one, data_one = _state(config, scenes64, one, steps)
  state_two, data_two = _state(config, scenes64, two, steps)
  _assert_close(state_one, state_two)
  assert data_one == data_two  # both shards' positions, whoever read them

  # The 1-process run resumes the 2-process checkpoint: one more step each way
  # from equal states gives equal states.
  two_to_one = str(tmp_path / "two_to_one")
  shutil.copytree(two, two_to_one)
  train.train_and_evaluate(multihost_config(data_dir, steps + 1), two_to_one)
  resumed_here, _ = _state(config, scenes64, two_to_one, steps + 1)
  resumed_there, _ = _state(config, scenes64, one_to_two, steps + 1)
  assert int(resumed_here.step) == int(resumed_there.step) == steps + 1
  _assert_close(resumed_here, resumed_there)
