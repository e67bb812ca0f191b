"""THE train loop, and the restore of a workdir's newest checkpoint, for any method.

    train_and_evaluate(method_class, config, workdir)

Resumes from the workdir's newest checkpoint that restores (state and data
position: a resumed run sees the batches of an uninterrupted one); one jitted
step per phase of the method, with the state donated; metrics as JSON lines
(and TensorBoard) every `log_every` steps and a progress bar; the config's
evaluators when due; checkpoints by the manager's policy; SIGTERM (a TPU
preemption) finishes the step, saves and returns, Ctrl-C the same and then
raises Interrupted; a non-finite loss term, or an update that outgrows the
parameters (a diverging run), stops the run naming it before that state is
saved, with the checkpoints a restart may choose from.
"""

from __future__ import annotations

import json
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from sgc_jax import config_lib
from sgc_jax.core import checkpoint, evaluation
from sgc_jax.core.method import Method
from sgc_jax.data import pipeline, sources, views
from sgc_jax.runtime import sharding
from sgc_jax.utils import logs, run_output


class NonFiniteLoss(RuntimeError):
  pass


class Diverging(NonFiniteLoss):
  """A step's update outgrew the parameters: the state is not one to save."""


class Interrupted(RuntimeError):
  """Ctrl-C: the loop finished its step and saved; the run stops with status 130."""


class Preemption:
  """SIGTERM (a TPU preemption) and SIGINT (Ctrl-C) set a flag; the loop
  finishes its step and saves. A second Ctrl-C interrupts at once."""

  def __init__(self):
    self.requested = None  # the signal's name once one came
    self._previous = {signum: signal.signal(signum, self._handle)
                      for signum in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    logging.warning("%s: finishing this step, saving, exiting", name)
    self.requested = name
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous[signal.SIGINT])

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def check_finite(metrics: dict, step: int) -> None:
  for name, value in metrics.items():
    if name.startswith("loss/") and not np.isfinite(value):
      raise NonFiniteLoss(f"step {step}: loss term {name[5:]!r} is {value}; stopping")


def check_update(metrics: dict, step: int, max_ratio: float) -> None:
  """Stops a diverging run before its state is saved: a finite state can
  still be one whose next step is not (weights blown up to 1e30)."""
  ratio = metrics.get("update_ratio")
  if ratio is not None and not ratio <= max_ratio:
    raise Diverging(f"step {step}: the update is {ratio:.3g} times the parameters' norm "
                    f"(config.checkpoint.max_update_ratio={max_ratio:g}): training diverges "
                    "(learning rate?); stopping, this state is not saved")


def host_metrics(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def build_method(method_class: type[Method], config, dataset) -> Method:
  """The method of a config on a data set, on the config's mesh."""
  return method_class.build(config, sharding.config_mesh(config), dataset)


# ---------------------------------------------------------------- restore


def restore_state(method: Method, mgr, step: int, with_data: bool = True):
  """The train state of checkpoint `step`, placed by the method's shardings,
  and the data position (None without data)."""
  abstract = checkpoint.abstract_with_shardings(method.abstract_state, method.state_shardings)
  return checkpoint.restore(mgr, step, abstract, with_data)


def restore_newest(method: Method, mgr, with_data: bool = True, set_aside: bool = False,
                   restore_step: int | None = None):
  """(state, data position, step) of the newest checkpoint that restores, or
  None when there is none. A checkpoint that fails to restore (a damaged file)
  is skipped with a warning naming it, and with `set_aside` (a training run,
  which will save that step again) moved out of the manager's folder, kept for
  inspection; one written for another model stops with a ConfigError naming
  the fields that differ. `restore_step`: that checkpoint and no other (those
  after it are set aside: a training run saves their steps anew)."""
  steps = sorted(mgr.all_steps(), reverse=True)
  if restore_step is not None:
    if restore_step not in steps:
      raise checkpoint.CheckpointError(
          f"config.checkpoint.restore_step={restore_step}: {mgr.directory} holds steps "
          f"{sorted(steps) or 'none'}")
    for later in (s for s in steps if s > restore_step):
      # The run will save these steps anew; the ones it replaces are kept aside.
      logging.warning("checkpoint %s/%d is newer than restore_step: moved to %s",
                      mgr.directory, later, checkpoint.set_aside(mgr, later))
    steps = [restore_step]
  for step in steps:
    saved = checkpoint.saved_config(mgr, step)
    if saved is not None:
      _check_same_state_config(saved, method, step)
    try:
      state, data = restore_state(method, mgr, step, with_data)
    except Exception as error:  # a damaged checkpoint fails in many ways, all inside orbax
      aside = checkpoint.set_aside(mgr, step) if set_aside else None
      logging.warning("checkpoint %s/%d does not restore (%s)%s; trying an earlier one",
                      mgr.directory, step, checkpoint.one_line(error, 200),
                      f"; moved to {aside}" if aside else "")
      continue
    return state, data, step
  if steps:
    raise checkpoint.CheckpointError(f"{mgr.directory}: none of the checkpoints (steps "
                                     f"{sorted(steps)}) restores; start a new workdir")
  return None


def _check_same_state_config(saved: dict, method: Method, step: int):
  now = json.loads(method.config.to_json())
  differ = []
  saved_method, now_method = config_lib.method_name(saved), config_lib.method_name(now)
  if saved_method != now_method:
    differ.append(f"method: {saved_method!r} in the checkpoint, {now_method!r} now")
  if not differ:
    differ = method.state_config_differences(saved, now)
  if differ:
    raise config_lib.ConfigError(
        f"the workdir's checkpoint (step {step}) was written for another model: "
        + "; ".join(differ) + ". Use a new --workdir (or start from weights with "
        "--config.init_from)")


def prediction_variables(method: Method, state, dataset, config):
  """The variables predict, the evaluators and export take: the method's
  `eval_variables`, completed by its `fit` over training images if it has one."""
  variables = method.eval_variables(state)
  count = method.fit_images()
  if not count:
    return variables
  source = pipeline.head(dataset.split(config.data.train_split), count)
  return method.fit(variables, pipeline.evaluation_pipeline(source, config, method.mesh))


def restore_latest(method_class: type[Method], config, workdir: str):
  """(dataset, method, state, step) of WORKDIR's newest checkpoint that
  restores, for evaluation and export (the data position is not restored)."""
  dataset = sources.open_dataset(config.data.name, config.data.data_dir)
  method = build_method(method_class, config, dataset)
  mgr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.keep)
  restored = restore_newest(method, mgr, with_data=False)
  mgr.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first")
  state, _, step = restored
  return dataset, method, state, step


# ---------------------------------------------------------------- the loop


def train_and_evaluate(method_class: type[Method], config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints); returns last metrics.

  The workdir is locked while training: a second trainer on it stops at once
  (run_output.WorkdirBusy, naming the holder)."""
  lock = run_output.WorkdirLock(workdir)
  try:
    return _train(method_class, config, workdir)
  finally:
    lock.release()


def _train(method_class: type[Method], config: ml_collections.ConfigDict, workdir: str) -> dict:
  dataset = sources.open_dataset(config.data.name, config.data.data_dir)
  method = build_method(method_class, config, dataset)
  # A whole-frame size the method cannot take stops the run before it writes
  # anything, not at its first evaluation.
  evaluation.check_eval_frame(
      method, method.fitted_shapes(jax.eval_shape(method.eval_variables, method.abstract_state)),
      config)
  spec = pipeline.PipelineSpec(
      split=config.data.train_split, global_batch_size=config.data.batch_size,
      image_size=config.data.image_size, train=True, num_views=config.data.num_views,
      crop=views.CropSpec(**config.data.crop), seed=config.seed,
      worker_count=config.data.worker_count, num_shards=config.data.num_shards,
      normalization=config.data.get("normalization", "symmetric"),
      photometric=config.data.get("photometric", None))
  batches = pipeline.InputPipeline(dataset.split(config.data.train_split), spec, method.mesh)
  mgr = checkpoint.manager(workdir, config.checkpoint.every, config.checkpoint.keep)
  restored = restore_newest(method, mgr, set_aside=True,
                            restore_step=config.checkpoint.get("restore_step"))
  latest = None
  if restored is not None:
    state, data_state, latest = restored
    batches.set_state(data_state)
    logs.note(f"resumed from step {latest}")
  else:
    state = method.initial_state(method.create_train_state(config.seed))
  step = int(state.step)
  all_evaluators = evaluation.create(config)
  # The handler before the metrics file opens: a SIGTERM from then on is a clean stop.
  preemption = Preemption()
  max_update_ratio = config.checkpoint.get("max_update_ratio", float("inf"))
  state_bytes = checkpoint.state_size(method.abstract_state)
  writer = run_output.Writer(workdir, config.total_steps, step)
  compiled = {}
  metrics: dict[str, float] = {}
  last_saved = latest
  window_start, window_steps = time.perf_counter(), 0
  try:
    while step < config.total_steps:
      batch = next(batches)
      phase = method.phase(step)
      if phase not in compiled:
        compiled[phase] = method.jit_train_step(phase, batch)
      state, step_metrics = compiled[phase](state, batch)
      metrics = host_metrics(step_metrics)
      step += 1
      try:
        check_finite(metrics, step)
        check_update(metrics, step, max_update_ratio)
      except NonFiniteLoss as error:
        raise type(error)(f"{error}. {_resume_hint(mgr)}") from None
      window_steps += 1
      if step % config.log_every == 0 or step == config.total_steps:
        seconds = time.perf_counter() - window_start
        metrics["steps_per_second"] = window_steps / seconds
        metrics["images_per_second"] = window_steps * config.data.batch_size / seconds
        writer.scalars(step, metrics)
        window_start, window_steps = time.perf_counter(), 0
      # A term a config turns off (PAT's semantic weight 0) has no metric to show.
      writer.progress(1, {label: metrics[key] for label, key in method.progress.items()
                          if key in metrics})
      due = [e for e in all_evaluators if e.due(step, config.total_steps)]
      if due:
        variables = prediction_variables(method, state, dataset, config)
        results = evaluation.run(due, evaluation.Context(
            method, variables, method.units(variables), dataset, config, step, final=False,
            write_image=lambda name, image: writer.image(step, name, image, workdir)))
        eval_metrics = {f"val/{k}": v for k, v in results.items() if v is not None}
        if eval_metrics:
          writer.scalars(step, eval_metrics)
          logging.info("step %d: %s", step, eval_metrics)
        metrics.update(eval_metrics)
      try:
        if checkpoint.save(mgr, step, state, batches.get_state(), config,
                           force=preemption.requested is not None
                           or step == config.total_steps):
          last_saved = step
      except (checkpoint.NonFiniteState, checkpoint.CheckpointError):
        raise  # said in one line already
      except Exception as error:  # orbax raises an earlier background write's failure here
        raise checkpoint.save_failed(mgr, error, state_bytes) from None
      if preemption.requested is not None:
        logging.warning("%s: saved step %d", preemption.requested, step)
        break
  finally:
    save_failure = checkpoint.finish(mgr, state_bytes)
    preemption.restore()
    writer.close()
  if save_failure is not None:  # (an error already on its way goes first)
    raise save_failure
  if preemption.requested == "SIGINT":
    raise Interrupted(f"interrupted at step {step}: saved in {workdir}; the same command "
                      "resumes")
  metrics["step"] = step
  metrics["last_checkpoint"] = last_saved if last_saved is not None else -1
  return metrics


def _resume_hint(mgr) -> str:
  """Which checkpoints a restart could resume from, for a run that failed."""
  steps = sorted(mgr.all_steps())
  if not steps:
    return "No checkpoint was saved"
  hint = f"The last checkpoint is step {steps[-1]}"
  if len(steps) > 1:
    hint += (f"; if a restart from it fails the same way, choose an earlier one (steps "
             f"{', '.join(map(str, steps[:-1]))}) with --config.checkpoint.restore_step=N")
  return hint
