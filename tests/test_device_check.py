"""launch/device_check.sh: its dry run (the code path a GPU machine runs, on
this CPU with tiny shapes), the bundle's parts, the one-line failure without a
GPU, and the GPU launch settings."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sgc_jax.tools import device_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
  # The test session's XLA flags (8 simulated devices) are not the script's.
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
  return {**env, "PYTHON": sys.executable, **extra}


def test_the_dry_run_runs_every_stage_and_brings_back_a_bundle_that_loads(tmp_path):
  out = tmp_path / "out"
  done = subprocess.run(["bash", "launch/device_check.sh", "--dry-run"], cwd=ROOT,
                        env=_env(OUT=str(out)), capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stdout + done.stderr + (out / "device_check.log").read_text()
  report = json.loads((out / "device_report.json").read_text())
  stages = report["stages"]
  assert list(stages) == ["environment", "bench", "numerics", "export", "data", "slotcon"]
  assert stages["environment"]["backend"] == "cpu"
  assert [row["method"] for row in stages["bench"]] == [s.name for s in device_check.METHODS]
  for row in stages["bench"]:
    assert row["images/s"] > 0 and row["GFLOP/image"] > 0, row
    assert row["real scale lowered in s"] > 0, row  # the real-scale step was traced
  for row in stages["numerics"]:
    # Both sides are this CPU here: the same program on the same state and batch.
    assert row["finite"] and row["loss rel. error"] == 0 and row["update rel. error"] == 0, row
  assert stages["export"]["same indices"] == 1.0
  assert stages["export"]["same semantic map"] == 1.0
  slotcon = stages["slotcon"]
  assert slotcon["train exit status"] == 0 and slotcon["steps"] == 20, slotcon
  assert sorted(os.listdir(out)) == sorted(
      ["device_report.md", "device_report.json", "device_check.log",
       "join_slotcon_bundle.sh", *slotcon["parts"]])
  assert len(os.listdir(out)) <= 8  # what a device session brings back
  subprocess.run(["sh", str(out / "join_slotcon_bundle.sh"), str(tmp_path / "home")],
                 check=True, capture_output=True)
  from sgc_jax.bundle import inference
  bundle = inference.load(str(tmp_path / "home" / "slotcon_bundle"))
  features = bundle.call("features", np.zeros((1, 64, 64, 3), np.float32))
  assert np.isfinite(features).all()
  markdown = (out / "device_report.md").read_text()
  assert "# Device check (dry run, CPU)" in markdown
  assert "| sgc_vqgan |" in markdown and "## SlotCon trained at accelerator speed" in markdown


def test_parts_join_to_the_same_files(tmp_path, monkeypatch):
  source = tmp_path / "bundle"
  source.mkdir()
  data = np.random.default_rng(0).bytes(2500)
  (source / "variables.npz").write_bytes(data)
  (source / "model.json").write_text("{}")
  monkeypatch.setattr(device_check, "PART_BYTES", 1000)
  out = tmp_path / "out"
  out.mkdir()
  parts = device_check.write_parts(str(source), str(out), "b")
  assert len(parts) == 11  # a tar of 10240 bytes (one record of 20 blocks), in 1000-byte parts
  assert all(os.path.getsize(out / p) <= 1000 for p in parts)
  subprocess.run(["sh", str(out / "join_b.sh"), str(tmp_path / "joined")], check=True,
                 capture_output=True)
  assert (tmp_path / "joined" / "b" / "variables.npz").read_bytes() == data


def test_without_a_gpu_the_check_stops_in_one_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "sgc_jax.tools.device_check", f"--out={tmp_path}",
                         "--budget=120"], cwd=ROOT, env=_env(JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
      "error: JAX sees no GPU (backend 'cpu', devices ['cpu:cpu']): is its CUDA plugin "
      "installed for this jaxlib?"]
  report = json.loads((tmp_path / "device_report.json").read_text())
  assert list(report["stages"]) == ["environment"]


def test_an_out_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / "file"
  path.write_text("")
  done = subprocess.run([sys.executable, "-m", "sgc_jax.tools.device_check", f"--out={path}"],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert (done.returncode, done.stderr.strip()) == (
      1, f"error: --out={path} is a file, not a folder")


@pytest.mark.parametrize("kind, peaks", [("NVIDIA H100 80GB HBM3", (989.0, 798.0)),
                                         ("NVIDIA H200", (989.0, 790.0)), ("cpu", None)])
def test_the_mfu_peak_is_the_chips(kind, peaks):
  assert device_check._peak_tflops(kind) == peaks


def test_the_report_in_markdown():
  report = {"dry_run": False, "budget s": 540.0, "elapsed s": 12.4, "stages": {
      "environment": {"jax": "0.11.2"},
      "bench": [{"method": "slotcon", "images/s": 1234.5678, "MFU (datasheet)": 0.41234},
                {"method": "pat", "error": "stopped after 150 s (its deadline)"}]}}
  assert device_check.markdown(report).splitlines() == [
      "# Device check", "", "12 s of a 540 s budget.", "", "## Machine", "", "- jax: 0.11.2",
      "", "## Train steps at real scale (bf16, synthetic batches)", "",
      "| method | images/s | MFU (datasheet) | error |", "|---|---:|---:|---:|",
      "| slotcon | 1.23e+03 | 0.412 |  |",
      "| pat |  |  | stopped after 150 s (its deadline) |"]


def test_the_gpu_settings_are_flags_this_jaxlib_knows():
  # XLA stops at start on an unknown flag: a renamed one would cost a GPU session.
  done = subprocess.run(
      ["bash", "-c", f"source launch/gpu_env.sh && {sys.executable} -c "
       "'import jax; print(jax.numpy.ones(2).sum())'"],
      cwd=ROOT, env=_env(JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == "2.0"
