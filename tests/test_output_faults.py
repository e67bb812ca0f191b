"""Faults of the outputs: a folder written whole (an inference bundle, the
pseudo-labels, --mode=eval's and --mode=preview's folders) appears whole or not
at all, and a failed rewrite (disk full, a file size limit) leaves the previous
one as it was; a workdir or output path that is a file, or that cannot be
written, stops the mode before its work in one line naming the path."""

import errno
import hashlib
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from sgc_jax.bundle import inference
from sgc_jax.core import checkpoint
from sgc_jax.data import pipeline, views
from sgc_jax.modes import eval_checkpoint, export, preview, pseudo_labels, train
from sgc_jax.utils import run_output, tree_io
from test_bundle_faults import one_line_error
from test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_ONLY = ("cpu",)  # Bundles for this machine only: half the export's compile time.


def _main(*args, file_size_limit=None):
  """The entry point; `file_size_limit` (bytes): `ulimit -f`'s, set by the
  shell (not a preexec_fn: forking a process that runs JAX threads)."""
  command = [sys.executable, "-m", "sgc_jax.main", *args]
  if file_size_limit is not None:
    command = ["bash", "-c", f"ulimit -f {file_size_limit // 1024} && exec \"$@\"", "bash",
               *command]
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def contents(directory) -> dict[str, str]:
  """{relative path: SHA-256} of every file under `directory`."""
  found = {}
  for parent, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(parent, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return found


def failing_after(count: int, under, error=errno.ENOSPC):
  """An `open` that fails as a full disk does from the `count`-th file written
  under the folder `under` on."""
  real_open = open
  opened = []

  def fake_open(file, mode="r", *args, **kwargs):
    if any(flag in mode for flag in "wax") and str(file).startswith(str(under)):
      opened.append(file)
      if len(opened) > count:
        raise OSError(error, os.strerror(error), str(file))
    return real_open(file, mode, *args, **kwargs)
  return fake_open


# ------------------------------------------------------------------ folders written whole


def test_a_failed_rewrite_keeps_the_old_folder_and_a_failed_first_write_leaves_none(tmp_path):
  target = tmp_path / "out"
  with run_output.replacing_folder(str(target)) as partial:
    (tmp_path / "out.partial" / "a").write_text("old")
    assert partial == str(tmp_path / "out.partial") and not target.exists()
  assert contents(target) == {"a": hashlib.sha256(b"old").hexdigest()}
  before = contents(target)
  with pytest.raises(run_output.OutputError, match=(
      rf"^{target}: could not be written \(File too large\); the previous one is "
      r"unchanged$")):
    with run_output.replacing_folder(str(target)) as partial:
      open(os.path.join(partial, "a"), "w").write("half")
      raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
  assert contents(target) == before
  assert sorted(os.listdir(tmp_path)) == ["out"]
  fresh = tmp_path / "fresh"
  with pytest.raises(run_output.OutputError, match=(
      rf"^{fresh}: could not be written \(No space left on device: .*b\); nothing was left "
      r"there$")):
    with run_output.replacing_folder(str(fresh)) as partial:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(partial, "b"))
  assert sorted(os.listdir(tmp_path)) == ["out"]
  # Not an OSError: passed on as it is, the old folder kept all the same.
  with pytest.raises(KeyError):
    with run_output.replacing_folder(str(target)):
      raise KeyError("x")
  assert contents(target) == before and sorted(os.listdir(tmp_path)) == ["out"]


def test_a_writer_killed_between_the_renames_loses_nothing(tmp_path):
  target = tmp_path / "out"
  # Killed after the old folder went aside, before the new one came in: the
  # old one is the only whole one, and the next write puts it back first.
  (tmp_path / "out.old").mkdir()
  (tmp_path / "out.old" / "a").write_text("old")
  (tmp_path / "out.partial").mkdir()  # the killed writer's half
  with pytest.raises(run_output.OutputError):
    with run_output.replacing_folder(str(target)):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert (target / "a").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out"]
  # Killed after the new one came in: the aside one is stale.
  (tmp_path / "out.old").mkdir()
  with run_output.replacing_folder(str(target)) as partial:
    open(os.path.join(partial, "a"), "w").write("new")
  assert (target / "a").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out"]


def test_output_paths_that_are_files_or_not_writable_are_named(tmp_path, monkeypatch):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder")
  with pytest.raises(run_output.OutputError, match=rf"^{a_file}: exists and is a file, not a folder$"):
    run_output.check_folder(str(a_file))
  with pytest.raises(run_output.OutputError, match=(
      rf"^{a_file}/sub/deeper: cannot be made, {a_file} is a file, not a folder$")):
    run_output.check_folder(str(a_file / "sub" / "deeper"))
  with pytest.raises(run_output.OutputError, match=rf"^{a_file}: exists and is a file, not a folder$"):
    run_output.check_output_folder(str(a_file))
  with pytest.raises(run_output.OutputError, match=rf"^{a_file}: exists and is a file"):
    run_output.check_output_folder(str(a_file / "bundle"))
  run_output.check_folder(str(tmp_path / "new" / "deeper"))  # can be made: nothing is made
  assert sorted(os.listdir(tmp_path)) == ["a_file"]

  # Tests run as root, where permissions do not stop a write: a read-only
  # mount's answer, from the probe as from the real write.
  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))
  monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
  with pytest.raises(run_output.OutputError, match=(
      rf"^{tmp_path}: not writable \(Read-only file system\)$")):
    run_output.check_folder(str(tmp_path))
  with pytest.raises(run_output.OutputError, match=(
      rf"^{tmp_path}/new: not writable \(Read-only file system in {tmp_path}\)$")):
    run_output.check_folder(str(tmp_path / "new"))
  with pytest.raises(run_output.OutputError, match=rf"^{tmp_path}: not writable"):
    run_output.check_output_folder(str(tmp_path / "bundle"))
  with pytest.raises(run_output.OutputError, match=rf"^{tmp_path}: not writable"):
    run_output.WorkdirLock(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_the_workdir_lock_names_a_workdir_it_cannot_write(tmp_path, monkeypatch):
  # The probe passes, the lock file itself cannot be made (permissions as a
  # non-root user meets them).
  real_open = open

  def denied(file, *args, **kwargs):
    if str(file).endswith(".lock"):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
    return real_open(file, *args, **kwargs)
  monkeypatch.setattr("builtins.open", denied)
  with pytest.raises(run_output.OutputError, match=(
      rf"^{tmp_path}: not writable \(Permission denied: {tmp_path}/.lock\)$")):
    run_output.WorkdirLock(str(tmp_path))


# ------------------------------------------------------------------ a workdir with a checkpoint


@pytest.fixture(scope="module")
def workdir(data_dir, scenes64, tmp_path_factory):
  """A workdir holding one checkpoint (the initial state: no step compiled)."""
  config = tiny_config(data_dir, total_steps=1)
  config.evals = {}
  method = train.build_method(config, scenes64)
  state = method.initial_state(method.create_train_state(config.seed))
  spec = pipeline.PipelineSpec(split="train", global_batch_size=config.data.batch_size,
                               image_size=config.data.image_size, train=True, num_views=2,
                               crop=views.CropSpec(), seed=0, num_shards=1)
  batches = pipeline.InputPipeline(scenes64.split("train"), spec, method.mesh)
  directory = str(tmp_path_factory.mktemp("output_faults") / "work")
  mgr = checkpoint.manager(directory, 1, 1)
  checkpoint.save(mgr, 1, state, batches.get_state(), config, force=True)
  mgr.wait_until_finished()
  mgr.close()
  return config, directory


def main_args(config, workdir, mode):
  """The command line of `tiny_config`'s model (its checkpoints restore)."""
  return ["--config=configs/sgc_scenes.py:quantizer=sgc,size=32", f"--workdir={workdir}",
          f"--mode={mode}", "--config.total_steps=1", "--config.optimizer.warmup_steps=2",
          f"--config.data.data_dir={config.data.data_dir}",
          "--config.data.name=sgc_scenes/smoke64", "--config.data.batch_size=8",
          "--config.data.worker_count=0", "--config.model.ch=32",
          "--config.model.ch_mult=(1,2,2)", "--config.model.z_channels=32",
          "--config.model.codebook.num_codes=64", "--config.model.codebook.dim_sem=8",
          "--config.model.codebook.dim_det=8", "--config.model.codebook.chunk_size=128",
          "--config.evals={}", "--config.preview.num_examples=2"]


def test_a_failed_export_keeps_the_old_bundle_or_leaves_none(workdir, monkeypatch):
  config, directory = workdir
  bundle = export.export_checkpoint(config, directory)
  assert bundle == os.path.join(directory, "bundle")
  good = contents(bundle)
  _, method, state, _ = train.restore_latest(config, directory)
  variables = method.eval_variables(state)
  # The disk fills while the re-export writes its second file.
  monkeypatch.setattr("builtins.open", failing_after(1, bundle + ".partial"))
  with pytest.raises(run_output.OutputError, match=(
      rf"^{bundle}: could not be written \(No space left on device: {bundle}.partial/\w+"
      r"\.jax_export\); the previous one is unchanged$")):
    export.write_bundle(bundle, method, variables, {"step": 2}, CPU_ONLY)
  monkeypatch.undo()
  assert contents(bundle) == good
  inference.load(bundle)
  assert sorted(os.listdir(directory)) == ["bundle", "checkpoints"]
  # A first export that fails: no half bundle at the path.
  first = os.path.join(directory, "first")
  monkeypatch.setattr(tree_io, "save", lambda tree, path: (_ for _ in ()).throw(
      OSError(errno.EFBIG, os.strerror(errno.EFBIG), path)))
  with pytest.raises(run_output.OutputError, match=(
      rf"^{first}: could not be written \(File too large: {first}.partial/variables.npz\); "
      r"nothing was left there$")):
    export.write_bundle(first, method, variables, {"step": 2}, CPU_ONLY)
  assert sorted(os.listdir(directory)) == ["bundle", "checkpoints"]


def test_a_re_export_past_a_file_size_limit_is_one_line_and_keeps_the_bundle(workdir):
  """`ulimit -f`: the write fails with EFBIG (Python ignores SIGXFSZ) part way
  through variables.npz, the largest file of the bundle."""
  config, directory = workdir
  bundle = os.path.join(directory, "bundle")
  if not os.path.exists(os.path.join(bundle, "model.json")):
    export.export_checkpoint(config, directory)
  good = contents(bundle)
  size = os.path.getsize(os.path.join(bundle, "variables.npz"))
  result = _main(*main_args(config, directory, "export"), file_size_limit=size // 2)
  line = one_line_error(result, bundle, "File too large", "the previous one is unchanged")
  assert line == (f"error: {bundle}: could not be written (File too large); the previous one "
                  "is unchanged")
  assert contents(bundle) == good
  inference.load(bundle)
  assert sorted(os.listdir(directory)) == ["bundle", "checkpoints"]


def test_a_failed_eval_rewrite_keeps_the_old_folder(workdir, tmp_path, monkeypatch):
  config, directory = workdir
  monkeypatch.setattr(eval_checkpoint, "evaluate", lambda *args: args[-1](
      "p", np.zeros((4, 4, 3), np.uint8)) or {"psnr": 20.0})
  work = tmp_path / "work"
  os.makedirs(work)
  os.symlink(os.path.join(directory, "checkpoints"), work / "checkpoints")
  eval_checkpoint.evaluate_checkpoint(config, str(work))
  good = contents(work / "eval")
  assert "eval.json" in good and "p.png" in good
  monkeypatch.setattr("builtins.open", failing_after(1, f"{work}/eval.partial"))
  with pytest.raises(run_output.OutputError, match=(
      rf"^{work}/eval: could not be written \(No space left on device: .*eval.md\); the "
      r"previous one is unchanged$")):
    eval_checkpoint.evaluate_checkpoint(config, str(work))
  monkeypatch.undo()
  assert contents(work / "eval") == good
  assert sorted(os.listdir(work)) == ["checkpoints", "eval"]


def test_a_failed_pseudo_label_rewrite_keeps_the_old_folder(workdir, tmp_path, monkeypatch):
  config, directory = workdir
  work = tmp_path / "work"
  os.makedirs(work / "pseudo_labels")
  (work / "pseudo_labels" / "classes.txt").write_text("old\n")
  os.symlink(os.path.join(directory, "checkpoints"), work / "checkpoints")
  method_class = train.method_class(config)
  monkeypatch.setattr(method_class, "segment_names", lambda self: ("a", "b"), raising=False)
  monkeypatch.setattr(method_class, "segment", lambda self, variables, images:
                      np.zeros(images.shape[:3], np.int32), raising=False)
  monkeypatch.setattr(pseudo_labels, "_write", lambda *args: (_ for _ in ()).throw(
      OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
  with pytest.raises(run_output.OutputError, match=(
      rf"^{work}/pseudo_labels: could not be written \(No space left on device\); the "
      r"previous one is unchanged$")):
    pseudo_labels.write_pseudo_labels(config, str(work))
  assert (work / "pseudo_labels" / "classes.txt").read_text() == "old\n"
  assert sorted(os.listdir(work)) == ["checkpoints", "pseudo_labels"]


# ------------------------------------------------------------------ workdirs that are files


def test_a_workdir_that_is_a_file_stops_each_mode_before_its_work(workdir, scenes64, tmp_path):
  config, _ = workdir
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder")
  message = rf"^{a_file}: exists and is a file, not a folder$"
  with pytest.raises(run_output.OutputError, match=message):
    train.train_and_evaluate(config, str(a_file))
  with pytest.raises(run_output.OutputError, match=message):
    eval_checkpoint.evaluate_checkpoint(config, str(a_file))
  with pytest.raises(run_output.OutputError, match=message):
    export.export_checkpoint(config, str(a_file))
  with pytest.raises(run_output.OutputError, match=message):
    export.export_checkpoint(config, str(a_file), str(tmp_path / "elsewhere"))
  with pytest.raises(run_output.OutputError, match=message):
    pseudo_labels.write_pseudo_labels(config, str(a_file))
  with pytest.raises(run_output.OutputError, match=message):
    preview.write_previews(config, scenes64, str(a_file))
  with pytest.raises(run_output.OutputError, match=rf"^{a_file}/sub: cannot be made, {a_file} is a"):
    train.train_and_evaluate(config, str(a_file / "sub"))
  # A good workdir, an output path that is a file.
  _, good = workdir
  with pytest.raises(run_output.OutputError, match=message):
    export.export_checkpoint(config, good, str(a_file))
  with pytest.raises(run_output.OutputError, match=message):
    pseudo_labels.write_pseudo_labels(config, good, str(a_file))
  assert sorted(os.listdir(tmp_path)) == ["a_file"]
  assert a_file.read_text() == "not a folder"


@pytest.mark.parametrize("mode", ["train", "eval", "export", "preview"])
def test_a_workdir_that_is_a_file_is_one_line(workdir, tmp_path, mode):
  config, _ = workdir
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder")
  assert one_line_error(_main(*main_args(config, a_file, mode))) == (
      f"error: {a_file}: exists and is a file, not a folder")
  if mode == "export":  # a workdir under a file: it cannot be made
    assert one_line_error(_main(*main_args(config, a_file / "sub", mode))) == (
        f"error: {a_file}/sub: cannot be made, {a_file} is a file, not a folder")
  assert sorted(os.listdir(tmp_path)) == ["a_file"]
