"""What the command lines show a person: progress bars and one-line summaries.

Libraries (orbax, TFDS, grain, JAX) log at INFO through absl; a command shows
only their warnings unless `--verbosity=0` (INFO) or higher is given.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

import tqdm
from absl import flags, logging


# TFDS recommends OpenCV once per process (sgc_jax decodes with PIL on purpose),
# and notes every custom builder config (every user folder is one, by design).
_KNOWN_NOISE = ("OpenCV is not installed", "Using custom data configuration")


class _DropKnownNoise(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_KNOWN_NOISE)


class _DropOrbaxErrors(std_logging.Filter):
  # Orbax logs (with tracebacks, from its threads) the errors it also raises:
  # a failed save, an unreadable checkpoint's metadata. Where they matter the
  # raise reaches the command, which says it in one line.
  def filter(self, record: std_logging.LogRecord) -> bool:
    return not (record.levelno >= std_logging.ERROR
                and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def drop_known_noise() -> None:
  """Filters the warnings above out of the `absl` logger of this process.

  Called where data sources are imported, so that grain's worker processes,
  which import them to unpickle their sources, filter them too."""
  absl_logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _DropKnownNoise) for f in absl_logger.filters):
    absl_logger.addFilter(_DropKnownNoise())


def quiet_libraries() -> None:
  """Library logs at WARNING unless --verbosity was given (and then orbax's
  error logs too). Call inside absl's main."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
    absl_logger = std_logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbaxErrors) for f in absl_logger.filters):
      absl_logger.addFilter(_DropOrbaxErrors())
  drop_known_noise()


def note(message: str) -> None:
  """A one-line summary on stderr (process 0 only), above any progress bar."""
  import jax
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stderr)
