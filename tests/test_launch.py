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


# (launcher, its environment): every quality table a launcher writes.
TABLE_WRITERS = [
    ("compare.sh", {}), ("compare.sh", {"GAN_START": "150"}), ("compare_camvid.sh", {}),
    ("label_free.sh", {}), ("label_free.sh", {"DATA": "camvid"}),
    ("slotcon_table.sh", {}), ("slotcon_table.sh", {"DATA": "camvid"})]


@pytest.mark.parametrize("script, env", TABLE_WRITERS)
def test_the_tables_launchers_write_have_their_markers(script, env, tmp_path):
  """Each launcher, run with a python that only logs its arguments, ends with
  `sgc_jax.tools.compare --readme FILE [--table NAME]`: FILE holds NAME's markers."""
  log = tmp_path / "calls"
  python = tmp_path / "venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> {log}\n')
  python.chmod(0o755)
  result = subprocess.run(["bash", f"launch/{script}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, **env, "VENV": str(tmp_path / "venv"),
                               "WORKDIR": str(tmp_path / "work"),
                               "COMPARE_DIR": str(tmp_path / "compare"),
                               "SGC_WORKDIR": str(tmp_path / "sgc")})
  assert result.returncode == 0, result.stderr[-2000:]
  compare = [line.split() for line in log.read_text().splitlines()
             if line.startswith("-m sgc_jax.tools.compare ")]
  assert len(compare) == 1, log.read_text()
  words = compare[0]
  readme = words[words.index("--readme") + 1]
  table = words[words.index("--table") + 1] if "--table" in words else None
  marker = f"<!-- quality-table-{table} -->" if table else "<!-- quality-table -->"
  with open(os.path.join(ROOT, readme)) as f:
    text = f.read()
  assert marker in text and marker.replace("<!-- ", "<!-- /") in text, (script, env, marker)


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
