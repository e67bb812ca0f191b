"""The trainer: 1 vs 8 devices, exact resume, SIGTERM, a short run that learns."""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import flax
import jax
import numpy as np
import PIL.Image
import orbax.checkpoint as ocp
import pytest

from sgc_jax import config_lib
from sgc_jax.configs import sgc_scenes
from sgc_jax.core import checkpoint, loop
from sgc_jax.data import pipeline, sources, views
from sgc_jax.methods import sgc_vqgan
from sgc_jax.modes import eval_checkpoint, export, train
from sgc_jax.runtime import sharding
from sgc_jax.utils import run_output

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, quantizer="sgc", **overrides):
  config = sgc_scenes.get_config(f"quantizer={quantizer},size=32")
  config.data.name = "sgc_scenes/smoke64"
  config.data.data_dir = data_dir
  config.data.batch_size = 8
  config.data.worker_count = 0
  config.model.update(dict(ch=32, ch_mult=(1, 2, 2), z_channels=32))
  config.model.codebook.update(dict(num_codes=64, dim_sem=8, dim_det=8, chunk_size=128))
  config.optimizer.warmup_steps = 2
  config.log_every = 1
  config.evals.pictures.update(dict(every=1000, num_examples=2))
  config.checkpoint.update(dict(every=2, keep=5))
  config.update(overrides)
  return config


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _run_steps(config, mesh, dataset, steps, with_gan):
  frequency = sources.class_frequency(dataset.split("train"), dataset.num_classes)
  trainer = sgc_vqgan.SGCVQGANMethod(config, mesh, dataset.class_names, frequency)
  state = trainer.create_train_state(config.seed)
  spec = pipeline.PipelineSpec(split="train", global_batch_size=config.data.batch_size,
                               image_size=config.data.image_size, train=True,
                               num_views=2, crop=views.CropSpec(), seed=0, num_shards=1)
  batches = pipeline.InputPipeline(dataset.split("train"), spec, mesh)
  step, metrics = None, None
  for _ in range(steps):
    batch = next(batches)
    step = step or trainer.jit_train_step(with_gan, batch)
    state, metrics = step(state, batch)
  return state, metrics


# Over several steps a rounding difference can flip the argmin of a near-tie token;
# with the GAN, the adaptive weight (a ratio of gradient norms) makes such flips
# likely, so the GAN path is compared over two steps, the codebook over three.
@pytest.mark.parametrize("quantizer, with_gan, steps", [("sgc", False, 3), ("ema", True, 2)])
def test_one_device_and_eight_devices_agree(data_dir, scenes64, quantizer, with_gan, steps):
  config = tiny_config(data_dir, quantizer)
  config.loss.disc_start = 0
  # Two channels per GroupNorm group at every level: with one, a convolution's
  # bias before the norm does not change the output, its gradient is float
  # noise, and Adam (production eps) turns that noise into full steps.
  config.model.ch_mult = (2, 2, 2)
  one = sharding.create_mesh(devices=jax.devices()[:1])
  eight = sharding.create_mesh()
  assert eight.devices.size == 8
  state_0, _ = _run_steps(config, one, scenes64, 0, with_gan)
  state_1, metrics_1 = _run_steps(config, one, scenes64, steps, with_gan)
  state_8, metrics_8 = _run_steps(config, eight, scenes64, steps, with_gan)
  # The steps move the parameters (the warm-up starts above zero): every
  # kernel of the generator and, with the GAN, of the discriminator.
  moved = lambda a, b: [float(np.abs(x - y).max()) for x, y in zip(_leaves(a), _leaves(b))]
  kernels = lambda tree: {k: v for k, v in flax.traverse_util.flatten_dict(tree).items()
                          if k[-1] == "kernel"}
  assert min(moved(kernels(state_0.params), kernels(state_1.params))) > 1e-5
  if with_gan:
    assert min(moved(kernels(state_0.disc_params), kernels(state_1.disc_params))) > 1e-5
  # Adam's first steps move every element by about the learning rate whatever
  # its gradient's size, so an element whose gradient cancels to nearly zero
  # keeps its summation-order noise (and that of a near-tie token taking
  # another code) in its update. The updates must agree as a whole: within 1 %
  # over all parameters and 5 % in every leaf (relative norms), where a missing
  # cross-device reduction is off by O(1).
  def assert_same_updates(start, a, b):
    updates_1 = [x1 - x0 for x0, x1 in zip(_leaves(start), _leaves(a))]
    updates_8 = [x8 - x0 for x0, x8 in zip(_leaves(start), _leaves(b))]
    relative = lambda u1, u8: np.linalg.norm(u8 - u1) / max(np.linalg.norm(u1), 1e-12)
    errors = [relative(u1, u8) for u1, u8 in zip(updates_1, updates_8)]
    total = relative(np.concatenate([u.ravel() for u in updates_1]),
                     np.concatenate([u.ravel() for u in updates_8]))
    assert total < 1e-2 and max(errors) < 5e-2, (total, max(errors))

  # The codebook's statistics, likewise: a near-tie token may take another code.
  for a, b in zip(_leaves(state_1.codebook), _leaves(state_8.codebook)):
    assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(a), (a.shape, a.dtype)
  np.testing.assert_allclose(metrics_1["loss/total"], metrics_8["loss/total"], rtol=1e-3)
  # The codebook is replicated: every device holds the same centres.
  centres = state_8.codebook["codebook"]["centres"]
  shards = [np.asarray(s.data) for s in centres.addressable_shards]
  chex.assert_trees_all_equal(*shards)


def _final(workdir):
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = mgr.latest_step()
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
  mgr.close()
  return step, restored["state"], restored["data"]


def _without_evals(config):
  """For tests of the state alone: no evaluation pass at the end of a run."""
  config.evals = {}
  return config


def test_resume_is_exact(data_dir, scenes64, tmp_path):
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(_without_evals(tiny_config(data_dir, total_steps=4)), straight)
  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(_without_evals(tiny_config(data_dir, total_steps=2)), resumed)
  metrics = train.train_and_evaluate(_without_evals(tiny_config(data_dir, total_steps=4)),
                                     resumed)
  assert metrics["step"] == 4
  step_a, state_a, data_a = _final(straight)
  step_b, state_b, data_b = _final(resumed)
  assert step_a == step_b == 4
  assert data_a == data_b
  chex.assert_trees_all_equal(state_a, state_b)


def test_checkpoints_without_the_dead_code_counts_still_resume(data_dir, scenes64, tmp_path):
  """Checkpoints of the previous release have no codebook `missed`: it starts at zero."""
  config = _without_evals(tiny_config(data_dir, "ema", total_steps=2))
  train.train_and_evaluate(config, str(tmp_path / "new"))
  step, state, data = _final(str(tmp_path / "new"))
  del state["codebook"]["codebook"]["missed"]
  old = ocp.CheckpointManager(str(tmp_path / "old" / "checkpoints"))
  old.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
      config=ocp.args.JsonSave(json.loads(config.to_json()))))
  old.wait_until_finished()
  old.close()
  _, _, restored, restored_step = train.restore_latest(config, str(tmp_path / "old"))
  assert restored_step == 2
  np.testing.assert_array_equal(restored.codebook["codebook"]["missed"], 0.0)
  np.testing.assert_array_equal(restored.codebook["codebook"]["centres"],
                                state["codebook"]["codebook"]["centres"])
  metrics = train.train_and_evaluate(_without_evals(tiny_config(data_dir, "ema", total_steps=3)),
                                     str(tmp_path / "old"))
  assert metrics["step"] == 3 and metrics["last_checkpoint"] == 3


def _train_command(data_dir, workdir, *extra):
  """`--mode=train` of a tiny SGC-VQGAN that saves every step."""
  return [sys.executable, "-m", "sgc_jax.main", "--mode=train",
          "--config=configs/sgc_scenes.py:size=32", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.data.name=sgc_scenes/smoke64",
          "--config.data.batch_size=8", "--config.data.worker_count=0",
          "--config.model.ch_mult=(1,2,2)", "--config.model.codebook.num_codes=64",
          "--config.checkpoint.every=1", *extra]


def test_sigterm_in_the_first_compile_and_kill_9_in_a_save_both_resume(data_dir, scenes64,
                                                                        tmp_path):
  """SIGTERM while the first step compiles: step 1 is saved, exit 0. kill -9
  while checkpoints are being written asynchronously: the next run resumes
  from the newest complete one and finishes."""
  workdir = tmp_path / "work"
  args = _train_command(data_dir, workdir, "--config.log_every=1")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  metrics_file = workdir / "metrics.jsonl"

  def start_and_wait_for(lines):
    process = subprocess.Popen(args + ["--config.total_steps=10000"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
      if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= lines:
        return process
      time.sleep(0.2)
    raise AssertionError(process.stdout.read()[-3000:])

  # The metrics file opens just after the SIGTERM handler is set, before the
  # loop starts: one second later the first step is compiling (it takes longer).
  process = start_and_wait_for(0)
  time.sleep(1.0)
  assert metrics_file.read_text() == ""
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=240)
  assert process.returncode == 0, output[-3000:]
  assert _final(str(workdir))[0] == 1

  process = start_and_wait_for(4)
  process.kill()
  process.wait()
  resumed = subprocess.run(args + ["--config.total_steps=8"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  step = int(re.search(r"resumed from step (\d+)", resumed.stderr).group(1))
  assert 1 <= step <= 8
  assert _final(str(workdir))[0] == 8
  steps = [json.loads(line)["step"] for line in metrics_file.read_text().splitlines()]
  assert steps == sorted(steps) and steps[-1] == 8  # replayed steps are not repeated

  # Ctrl-C: as SIGTERM (the step finishes and is saved), then one line and status 130.
  process = start_and_wait_for(10)
  process.send_signal(signal.SIGINT)
  output, _ = process.communicate(timeout=240)
  assert process.returncode == 130, output[-3000:]
  step = _final(str(workdir))[0]
  assert step > 8  # past the resumed run's last checkpoint
  assert output.splitlines()[-1] == (f"interrupted at step {step}: saved in {workdir}; the "
                                     "same command resumes")


def test_non_finite_loss_stops_with_the_term_named(data_dir, scenes64, tmp_path):
  config = tiny_config(data_dir, total_steps=3)
  config.optimizer.learning_rate = 1e30
  config.optimizer.grad_clip = 1e30
  config.checkpoint.max_update_ratio = float("inf")  # past the divergence check, to the NaN
  with pytest.raises(loop.NonFiniteLoss, match=r"step \d+: loss term '\w+' is (nan|inf)"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))


def test_a_diverging_run_stops_before_its_state_is_saved(data_dir, scenes64, tmp_path):
  # A learning rate of 1e30 once saved step 3 with weights near 1e30, finite,
  # and every restart resumed from it into NaN.
  config = _without_evals(tiny_config(data_dir, total_steps=3))
  config.optimizer.learning_rate = 1e30
  config.optimizer.grad_clip = 1e30
  config.checkpoint.every = 1
  workdir = tmp_path / "diverging"
  with pytest.raises(loop.Diverging, match=(
      r"^step 1: the update is (inf|[0-9.e+]+) times the parameters' norm \(config\.checkpoint\."
      r"max_update_ratio=1\): training diverges \(learning rate\?\); stopping, this state "
      r"is not saved\. No checkpoint was saved$")):
    train.train_and_evaluate(config, str(workdir))
  assert not list((workdir / "checkpoints").iterdir())


class _Steps:
  def __init__(self, steps):
    self.steps = steps

  def all_steps(self):
    return self.steps


def test_a_failed_run_names_the_checkpoints_to_resume_from():
  assert loop._resume_hint(_Steps([])) == "No checkpoint was saved"
  assert loop._resume_hint(_Steps([4])) == "The last checkpoint is step 4"
  assert loop._resume_hint(_Steps([4, 2, 3])) == (
      "The last checkpoint is step 4; if a restart from it fails the same way, choose an "
      "earlier one (steps 2, 3) with --config.checkpoint.restore_step=N")


def _files(folder):
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_training_over_a_damaged_newest_checkpoint_sets_it_aside_and_saves_it_anew(
    two_checkpoints, tmp_path):
  # It once resumed from step 1, then died at step 2's save on every restart
  # (orbax's StepAlreadyExistsError).
  config, workdir = _copy_of(two_checkpoints, tmp_path)
  damaged = tmp_path / "run" / "checkpoints" / "2"
  for path in (damaged / "state" / "d").iterdir():
    path.write_bytes(path.read_bytes()[:20])
  before = _files(damaged)
  metrics = train.train_and_evaluate(_without_evals(config), workdir)
  assert metrics["step"] == metrics["last_checkpoint"] == 2
  assert _final(workdir)[0] == 2
  assert _files(tmp_path / "run" / "checkpoints_set_aside" / "2") == before  # kept whole


def test_a_full_disk_stops_at_the_save_in_one_line(two_checkpoints, tmp_path, monkeypatch):
  # It once trained on, then ended in a 7,487-line traceback.
  config, workdir = _copy_of(two_checkpoints, tmp_path)
  config.total_steps = 3
  usage = shutil.disk_usage(workdir)
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**20))
  with pytest.raises(checkpoint.CheckpointError, match=(
      r"/run/checkpoints: 1 MiB free, saving step 3 needs about \d+ MiB; free some space and "
      r"run the same command to resume from step 2$")):
    train.train_and_evaluate(_without_evals(config), workdir)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["1", "2"]


def test_a_save_that_fails_stops_the_run_in_one_line(data_dir, scenes64, tmp_path):
  # A file size limit makes orbax's writer threads fail as a full disk does
  # that the free-space check cannot see (another process filling it).
  workdir = tmp_path / "work"
  args = _train_command(data_dir, workdir, "--config.total_steps=3", "--config.evals={}")
  # `ulimit -f` (2000 KiB) set by a shell: no preexec_fn in a process with JAX threads.
  done = subprocess.run(["bash", "-c", 'ulimit -f 2000 && exec "$@"', "bash", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 1, done.stderr[-3000:]
  # The run's one line; tensorstore's writer threads may still print around it
  # (tracebacks of a closed event loop, which they print themselves).
  errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, done.stderr[-3000:]
  last = errors[0]
  assert re.fullmatch(
      rf"error: saving a checkpoint in {workdir}/checkpoints failed \(\w+: .*\); \d+ MiB "
      r"free there, a checkpoint of this state takes about \d+ MiB; the same command "
      r"resumes from no checkpoint \(none is complete\)", last), last


def test_restore_step_resumes_from_an_earlier_checkpoint(two_checkpoints, tmp_path):
  config, workdir = _copy_of(two_checkpoints, tmp_path)
  newest = _files(tmp_path / "run" / "checkpoints" / "2")
  config.checkpoint.restore_step = 5
  with pytest.raises(checkpoint.CheckpointError, match=(
      r"config\.checkpoint\.restore_step=5: .*/run/checkpoints holds steps \[1, 2\]$")):
    train.train_and_evaluate(config, workdir)
  config.checkpoint.restore_step = 1
  metrics = train.train_and_evaluate(_without_evals(config), workdir)
  assert metrics["step"] == 2
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps[-1] == 2 and steps.count(2) == 1  # trained again, the first run's line dropped
  assert _files(tmp_path / "run" / "checkpoints_set_aside" / "2") == newest


def test_a_non_finite_state_is_never_saved(data_dir, scenes64, tmp_path):
  """A checkpoint is the last good state: one NaN anywhere and it is not written."""
  config = tiny_config(data_dir)
  trainer = train.build_method(config, scenes64)
  state = trainer.create_train_state(0)
  mgr = checkpoint.manager(str(tmp_path), 1, 3)
  kernel = state.params["decoder"]["conv_in"]["kernel"]
  bad = state.replace(params={**state.params, "decoder": {
      **state.params["decoder"], "conv_in": {**state.params["decoder"]["conv_in"],
                                             "kernel": kernel.at[0, 0, 0, 0].set(np.nan)}}})
  with pytest.raises(checkpoint.NonFiniteState,
                     match=r"step 2: the state is not finite \(1 leaves, first "
                           r".*'decoder'.*'conv_in'.*'kernel'.*\); it is not saved"):
    checkpoint.save(mgr, 2, bad, b"", config, force=True)
  mgr.wait_until_finished()
  assert mgr.latest_step() is None
  mgr.close()


def test_a_short_sgc_run_learns_and_uses_its_codebook(data_dir, scenes64, tmp_path):
  config = tiny_config(data_dir, total_steps=60, log_every=1)
  config.checkpoint.every = 1000
  metrics = train.train_and_evaluate(config, str(tmp_path / "learn"))
  lines = [json.loads(l) for l in open(tmp_path / "learn" / "metrics.jsonl")]
  first = next(l for l in lines if "loss/reconstruction" in l)
  print(f"\nreconstruction L1 {first['loss/reconstruction']:.3f} -> "
        f"{metrics['loss/reconstruction']:.3f}; val PSNR {metrics['val/psnr']:.1f} dB, "
        f"codebook usage {metrics['val/codebook_usage']:.2f}, "
        f"token purity {metrics['val/token_purity']:.2f}")
  assert metrics["loss/reconstruction"] < 0.6 * first["loss/reconstruction"]
  assert metrics["val/codebook_usage"] >= 0.9
  assert metrics["val/images"] == 128  # the whole validation split
  assert os.path.exists(tmp_path / "learn" / "images" / "reconstructions_0000060.png")

  # --mode=eval on the checkpoint: the same reconstruction numbers as the
  # trainer's final evaluation, every metric in range, absent ones absent.
  results = eval_checkpoint.evaluate_checkpoint(config, str(tmp_path / "learn"))
  print(eval_checkpoint.markdown(results))
  assert results["step"] == 60 and results["images"] == 128
  assert results["psnr"] == pytest.approx(metrics["val/psnr"], abs=1e-4)
  assert results["token_purity"] == pytest.approx(metrics["val/token_purity"], abs=1e-6)
  assert results["lpips"] is None and results["rfid"] is None
  for key in ("ssim", "codebook_usage", "normalized_entropy", "top10_share", "token_purity",
              "code_purity", "zero_shot_miou", "posterior_miou", "hungarian_miou",
              "probe_miou"):
    assert 0 < results[key] <= 1, key
  # The tokens carry the classes after 60 steps (measured: purity 0.50, zero-shot
  # mIoU 0.17 and 0.13 over 10 classes); codes not tied to classes (a broken
  # allocation or guidance) give about 0.1 purity and 0.05 mIoU.
  assert results["token_purity"] > 0.35
  assert results["zero_shot_miou"] > 0.1 and results["posterior_miou"] > 0.1
  eval_dir = tmp_path / "learn" / "eval"
  assert json.load(open(eval_dir / "eval.json"))["hungarian_miou"] == results["hungarian_miou"]
  assert "| LPIPS | absent |" in open(eval_dir / "eval.md").read()
  for name in ("reconstructions", "codebook_usage", "codes_pca"):
    assert min(PIL.Image.open(eval_dir / f"{name}.png").size) >= 64, name
  bundle = export.export_checkpoint(config, str(tmp_path / "learn"))
  assert json.load(open(os.path.join(bundle, "model.json")))["step"] == 60


def test_a_second_trainer_on_a_workdir_stops_at_once_naming_the_holder(tmp_path):
  lock = run_output.WorkdirLock(str(tmp_path))
  with pytest.raises(run_output.WorkdirBusy, match=rf"{tmp_path} is in use by pid {os.getpid()} on"):
    run_output.WorkdirLock(str(tmp_path))
  lock.release()
  run_output.WorkdirLock(str(tmp_path)).release()  # free again
  # A holder killed with SIGKILL leaves no lock behind (the kernel drops it).
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from sgc_jax.utils import run_output; lock = run_output.WorkdirLock(sys.argv[1]); "
      "print('locked', flush=True); time.sleep(60)"), str(tmp_path)], cwd=ROOT,
      stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(run_output.WorkdirBusy, match=f"pid {holder.pid} on"):
    run_output.WorkdirLock(str(tmp_path))
  holder.kill()
  holder.wait()
  run_output.WorkdirLock(str(tmp_path)).release()


def test_a_resumed_run_does_not_repeat_its_replayed_steps_in_the_metrics(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 8)))
  run_output.Writer(str(tmp_path), 10, 4).close()  # resumed from the checkpoint of step 4
  assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def two_checkpoints(data_dir, scenes64, tmp_path_factory):
  """(config, workdir) of a 2-step ema run with checkpoints at steps 1 and 2."""
  config = tiny_config(data_dir, "ema", total_steps=2)
  config.checkpoint.every = 1
  workdir = str(tmp_path_factory.mktemp("two_checkpoints"))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _copy_of(two_checkpoints, tmp_path):
  config, workdir = two_checkpoints
  shutil.copytree(workdir, tmp_path / "run")
  return copy.deepcopy(config), str(tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncated_ocdbt", "garbage_metadata", "no_data_metadata"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(two_checkpoints, scenes64,
                                                                    tmp_path, damage, caplog):
  config, workdir = _copy_of(two_checkpoints, tmp_path)
  latest = tmp_path / "run" / "checkpoints" / "2"
  if damage == "truncated_ocdbt":
    for path in (latest / "state" / "d").iterdir():
      path.write_bytes(path.read_bytes()[:20])
  elif damage == "garbage_metadata":
    (latest / "_CHECKPOINT_METADATA").write_bytes(b"\x00garbage{")
    for path in (latest / "state" / "d").iterdir():
      path.write_bytes(b"")
  else:
    os.remove(latest / "data" / "metadata")
  # What a resumed run does: the newest checkpoint whose state and data restore.
  trainer = train.build_method(config, scenes64)
  mgr = checkpoint.manager(workdir, 1, 5)
  state, data, step = loop.restore_newest(trainer, mgr, with_data=True)
  mgr.close()
  assert step == 1 and int(state.step) == 1 and json.loads(data)["batches_done"] == 1
  assert f"checkpoint {tmp_path / 'run' / 'checkpoints'}/2 does not restore" in caplog.text


def test_a_workdir_of_another_model_names_the_fields_that_differ(two_checkpoints, tmp_path):
  config, workdir = _copy_of(two_checkpoints, tmp_path)
  config.model.codebook.num_codes = 32
  config.model.codebook.mode = "vq"
  with pytest.raises(config_lib.ConfigError, match=(
      r"checkpoint \(step 2\) was written for another model: model\.codebook\.mode: 'ema' in "
      r"the checkpoint, 'vq' now; model\.codebook\.num_codes: 64 in the checkpoint, 32 now\. "
      r"Use a new --workdir")):
    train.train_and_evaluate(config, workdir)
