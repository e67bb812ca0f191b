"""Launch scripts (dry run) and process discovery."""

import os
import subprocess

import pytest

from sgc_jax.runtime import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD = ["bash", "launch/tpu_pod.sh"]
REQUIRED = ["--name", "sgc-test", "--zone", "us-west4-a", "--accelerator", "v5litepod-64",
            "--version", "v2-alpha-tpuv5-lite", "--bucket", "gs://my-bucket/"]


def _run(*args):
  return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
  result = _run(*POD, "--dry-run", *REQUIRED, "--spot", "--project", "proj", "--run", "r1",
                "--", "--config.total_steps=1000", "--config.data.batch_size=512")
  assert result.returncode == 0, result.stderr
  commands = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
  tpu = "gcloud compute tpus tpu-vm"
  where = "--zone=us-west4-a --project=proj"
  assert commands[0] == (f"{tpu} create sgc-test {where} --accelerator-type=v5litepod-64 "
                         "--version=v2-alpha-tpuv5-lite --spot")
  assert commands[1].startswith("git archive --format=tar.gz")
  assert commands[2].startswith(f"{tpu} scp /tmp/sgc_jax_sgc-test.tar.gz sgc-test:sgc_jax.tar.gz "
                                f"{where} --worker=all")
  assert commands[3].startswith(f"{tpu} ssh sgc-test {where} --worker=all --command=")
  install = commands[3].replace("\\", "")
  assert "uv venv -q --python 3.12 .venv" in install
  assert "uv pip install -q --python .venv/bin/python -e '.[tpu]'" in install
  train = commands[4].replace("\\", "")
  assert train.startswith(f"{tpu} ssh sgc-test {where} --worker=all --command=")
  assert ("python -m sgc_jax.main --config=configs/sgc_coco.py:quantizer=sgc "
          "--workdir=gs://my-bucket/runs/r1 --config.data.data_dir=gs://my-bucket/tfds "
          "--mode=train --config.total_steps=1000 --config.data.batch_size=512") in train
  assert len(commands) == 5


@pytest.mark.parametrize("args, message", [
    (REQUIRED[2:], "error: --name is required"),
    (REQUIRED[:-2] + ["--bucket", "/local/dir"], "error: --bucket must be gs://..."),
    (REQUIRED + ["--zones", "x"], "error: unknown option --zones"),
])
def test_tpu_pod_bad_arguments(args, message):
  result = _run(*POD, "--dry-run", *args)
  assert result.returncode == 2
  assert message in result.stderr


def test_launch_scripts_parse():
  for script in sorted(os.listdir(os.path.join(ROOT, "launch"))):
    assert _run("bash", "-n", f"launch/{script}").returncode == 0, script


def test_process_discovery(monkeypatch):
  for name in ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_STEP_NUM_TASKS",
               "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.detected_cluster() is None
  assert distributed.initialize() is False  # a single process: nothing to join
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2")  # one host
  assert distributed.detected_cluster() is None
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
  assert distributed.detected_cluster() == "TPU_WORKER_HOSTNAMES"
  with pytest.raises(ValueError, match="go together"):
    distributed.initialize(coordinator_address="127.0.0.1:1234")
  with pytest.raises(ValueError, match=r"--process_id=2 must be in \[0, 2\)"):
    distributed.initialize("127.0.0.1:1234", 2, 2)
