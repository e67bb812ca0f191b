"""The one entry point of sgc_jax.

    python -m sgc_jax.main --config=configs/NAME.py[:args] --workdir=DIR \
        --mode=data|preview|train|eval|export|pseudo_labels [--config.a.b=value ...]

Modes:
  data     build (or check) the data set of the config and print its summary
  preview  write PNGs of data examples and of training views to WORKDIR/preview
  train    train (resuming from WORKDIR's checkpoints)
  eval     every metric of WORKDIR's latest checkpoint -> WORKDIR/eval/
  export   WORKDIR's latest checkpoint -> an inference bundle in WORKDIR/bundle
  pseudo_labels  a segmenting method's (ACSeg's) maps of both splits -> a
           user-folder data set in WORKDIR/pseudo_labels (see sgc_jax.modes.pseudo_labels)
`config.method` names the method (default sgc_vqgan). The config is validated
(the core's fields, the method's, the evaluators') before anything is built or
compiled; a bad field is a one-line error that names it. Library logs stay at WARNING; `--verbosity=0`
shows their INFO lines.
"""

from __future__ import annotations

import re
import sys

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from sgc_jax import config_lib
from sgc_jax.runtime import hugepages
from sgc_jax.utils import logs

MODES = ("data", "preview", "train", "eval", "export", "pseudo_labels")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, with :args.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs go.")
_MODE = flags.DEFINE_enum("mode", "data", MODES, "What to do.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run "
    "outside a TPU pod / SLURM / MPI (there it is found automatically).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_EVAL_INITIAL = flags.DEFINE_bool(
    "eval_initial", False, "--mode=eval: evaluate the method's initial state (random "
    "init, or config.init_from's weights) instead of a checkpoint: the untrained baseline.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout", 300, "Seconds to wait for every process of a multi-process run to join.")


def validate(config) -> None:
  """Checks the fields every method relies on; raises ConfigError naming the field."""
  config_lib.check_positive(config, "data.batch_size", "data.image_size",
                            "data.num_views")
  if config.data.worker_count < 0:
    raise config_lib.ConfigError(
        f"config.data.worker_count={config.data.worker_count}: must be >= 0")
  if "normalization" in config.data:
    config_lib.check_choice(config, "data.normalization",
                            ("symmetric", "imagenet", "clip"))
  if config.data.get("photometric", None) is not None:
    from sgc_jax.data import pipeline
    config_lib.check_choice(config, "data.photometric", tuple(pipeline.PHOTOMETRIC))
  frame = config.data.get("eval_frame")
  if frame is not None and not (
      isinstance(frame, (tuple, list)) and len(frame) == 2
      and all(isinstance(side, int) and not isinstance(side, bool) and side > 0
              for side in frame)):
    raise config_lib.ConfigError(f"config.data.eval_frame={frame!r}: must be (height, "
                                 "width), two positive integers, or None")
  crop = config.data.crop
  if not 0 < crop.min_area <= crop.max_area <= 1:
    raise config_lib.ConfigError(
        f"config.data.crop: need 0 < min_area ({crop.min_area}) <= max_area "
        f"({crop.max_area}) <= 1")
  if not 0 < crop.min_aspect <= crop.max_aspect:
    raise config_lib.ConfigError("config.data.crop: need 0 < min_aspect <= max_aspect")
  if "total_steps" in config:
    config_lib.check_positive(config, "total_steps", "log_every", "checkpoint.every",
                              "checkpoint.keep")
  restore_step = config.checkpoint.get("restore_step")
  if restore_step is not None and restore_step < 0:
    raise config_lib.ConfigError(f"config.checkpoint.restore_step={restore_step}: must be "
                                 ">= 0 (a saved step), or None for the newest")
  if "max_update_ratio" in config.checkpoint:
    config_lib.check_positive(config, "checkpoint.max_update_ratio")
  for axis in ("data", "fsdp", "model"):
    size = config.mesh[axis]
    if size != -1 and size < 1:
      raise config_lib.ConfigError(f"config.mesh.{axis}={size}: must be >= 1 or -1")


def validate_method(config, dataset=None):
  """The method's own fields (with the data set: those that depend on it) and
  the evaluators'; returns the method's class."""
  from sgc_jax import methods
  from sgc_jax.core import evaluation
  method_class = methods.get(methods.method_name(config))
  method_class.validate(config)
  if dataset is not None:
    method_class.validate_data(config, dataset)
  evaluation.validate(config)
  return method_class


def config_problem(config) -> str | None:
  """What makes `get_config()`'s result unusable as a config, if anything."""
  if isinstance(config, ml_collections.ConfigDict):
    return None
  # ml_collections keeps a file it could not read as a stand-in config that
  # raises OSError on any use, the reason as its cause.
  try:
    getattr(config, "data", None)
  except OSError as error:
    return f"cannot read it ({_last_line(error.__cause__ or error)})"
  shown = "None" if config is None else f"{type(config).__name__} {_brief(repr(config))}"
  return f"get_config() returned {shown}, expected an ml_collections.ConfigDict"


def _last_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[-1].strip() if lines else type(error).__name__


def _brief(text: str, limit: int = 60) -> str:
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _missing_field(error: BaseException) -> str:
  """The field a ConfigDict's KeyError (or the AttributeError around one) names."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  name = str(error.args[0]) if error.args else str(error)
  return name.splitlines()[0].strip("'\"") if name else "?"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_libraries()
  config = _CONFIG.value
  if config is None and not flags.FLAGS["config"].present:
    sys.exit("error: --config is required")
  config_file = f"--config={flags.FLAGS['config'].config_filename}"
  problem = config_problem(config)
  if problem:
    sys.exit(f"config error: {config_file}: {problem}")
  try:
    validate(config)
    validate_method(config)
  except config_lib.ConfigError as error:
    sys.exit(f"config error: {error}")
  except (KeyError, AttributeError) as error:  # A ConfigDict's missing field.
    sys.exit(f"config error: {config_file}: no field {_missing_field(error)}, which sgc_jax "
             "configs have")
  # Heavy imports after validation, so that a bad config fails fast.
  from sgc_jax.modes import preview
  from sgc_jax.runtime import distributed
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _INIT_TIMEOUT.value)
  except ValueError as error:
    sys.exit(f"error: {error}")
  from sgc_jax.data import sources
  try:
    dataset = sources.open_dataset(config.data.name, config.data.data_dir)
  except sources.DataError as error:
    sys.exit(f"data error: {error}")
  if _MODE.value == "data":
    print(preview.describe(dataset))
  elif not _WORKDIR.value:
    sys.exit(f"error: --workdir is required for --mode={_MODE.value}")
  elif _MODE.value == "preview":
    from sgc_jax.utils import run_output
    try:
      paths = preview.write_previews(config, dataset, _WORKDIR.value)
    except run_output.OutputError as error:
      sys.exit(f"error: {error}")
    for path in paths:
      print(f"wrote {path}")
  else:
    from sgc_jax.convert import torch_file
    from sgc_jax.core import checkpoint, loop
    from sgc_jax.utils import run_output
    try:
      validate_method(config, dataset)
    except config_lib.ConfigError as error:
      sys.exit(f"config error: {error}")
    try:
      run_mode(_MODE.value, config, _WORKDIR.value)
    except config_lib.ConfigError as error:
      sys.exit(f"config error: {error}")
    except (FileNotFoundError, torch_file.WeightFileError, loop.NonFiniteLoss,
            checkpoint.NonFiniteState, checkpoint.CheckpointError,
            run_output.WorkdirBusy, run_output.OutputError) as error:
      sys.exit(f"error: {error}")
    except loop.Interrupted as error:
      print(str(error), file=sys.stderr)
      sys.exit(130)


def run_mode(mode: str, config, workdir: str) -> None:
  from sgc_jax.modes import train
  if mode == "train":
    metrics = train.train_and_evaluate(config, workdir)
    # Per-class results ("val/NAME/CLASS") are in metrics.jsonl and eval.md.
    print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                                if k.count("/") < 2))
  elif mode == "eval":
    from sgc_jax.modes import eval_checkpoint
    results = eval_checkpoint.evaluate_checkpoint(config, workdir, _EVAL_INITIAL.value)
    print(eval_checkpoint.markdown(results))
    print(f"wrote {workdir}/eval/eval.json, eval.md and PNGs")
  elif mode == "export":
    from sgc_jax.modes import export
    print(f"wrote the inference bundle {export.export_checkpoint(config, workdir)}")
  elif mode == "pseudo_labels":
    from sgc_jax.modes import pseudo_labels
    directory = pseudo_labels.write_pseudo_labels(config, workdir)
    print(f"wrote the pseudo-labelled data set {directory}")


def _config_file_argument(argv: list[str]) -> str:
  """`--config=VALUE` as given in argv (the last, as absl takes it)."""
  value = "?"
  for i, arg in enumerate(argv):
    if re.match(r"--?config=", arg):
      value = arg.split("=", 1)[1]
    elif arg in ("--config", "-config") and i + 1 < len(argv):
      value = argv[i + 1]
  return f"--config={value}"


def _config_error_message(error: Exception, argv: list[str]) -> str:
  text = " ".join(str(error).replace("\\n", " ").split())
  if "ConfigError: " in text:  # raised inside get_config, reported as a traceback
    return text.rsplit("ConfigError: ", 1)[1]
  # An override of a config file that could not be read: the stand-in config
  # raises on use, the reason as its cause.
  if isinstance(error, OSError) and "earlier failure to load" in text:
    return (f"{_config_file_argument(argv)}: cannot read it "
            f"({_last_line(error.__cause__ or error)})")
  if isinstance(error, AttributeError) and "has no attribute 'get_config'" in text:
    return f"{_config_file_argument(argv)}: no get_config function"
  # Any other exception of get_config, wrapped with its traceback as text.
  if "Error whilst parsing config file" in text:
    return f"{_config_file_argument(argv)}: {_last_line(error)}"
  if "Did you mean" in text or isinstance(error, (AttributeError, KeyError)):
    quoted = re.search(r"[\"'\\]+(\w+)[\"'\\]+", text)
    unknown = quoted.group(1) if quoted else text
    flag = next((a.split("=")[0] for a in argv
                 if a.startswith("--config.") and f".{unknown}." in a.split("=")[0] + "."),
                unknown)
    hint = text[text.index("Did you mean"):].rstrip("'\"") if "Did you mean" in text else ""
    return f"{flag}: no such config field. {hint}".strip()
  return text


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with config errors (unknown field, wrong type) on one line."""
  # ml_collections warns of a get_config that returns None; `main` says so
  # itself, on the one line of its error.
  def returned_none(record) -> bool:
    return "get_config() returned None" not in record.getMessage()
  absl_logging.get_absl_logger().addFilter(returned_none)
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # config_flags wraps field errors in several types
    sys.exit(f"config error: {_config_error_message(error, argv)}")
  finally:
    absl_logging.get_absl_logger().removeFilter(returned_none)


def run():
  hugepages.reexec_with_huge_pages()
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:  # outside training, which saves and stops by itself
    print("interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  run()
