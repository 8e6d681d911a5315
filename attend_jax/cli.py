"""What every command-line entry point shares: quiet logging with a log file, ``--verbose``, and
errors a user can fix printed as one line.

  app.run(cli.main(main, errors=(...)))

Each command prints its own progress (``attend_jax.progress``). Library chatter (TFDS, orbax,
grain, absl, Python warnings) goes only to ``log.txt`` in the command's output folder once
``setup_logging`` has named it; ``--verbose`` shows it on the terminal too, with a full
traceback for every error.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
from collections.abc import Callable

from absl import flags
from absl import logging as absl_logging

from attend_jax.data.errors import DataError
from attend_jax.data.sources import DatasetNotFoundError

LOG_FILE = "log.txt"
_VERBOSE = flags.DEFINE_bool("verbose", False,
                             "Show library logs and full tracebacks on the terminal.")
# What users cause (a missing dataset, an unusable file): one line, exit code 1.
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, DatasetNotFoundError)


def verbose() -> bool:
  return flags.FLAGS.is_parsed() and _VERBOSE.value


def setup_logging(log_dir: str | os.PathLike | None = None) -> None:
  """Library logs off the terminal (unless ``--verbose`` or ``--verbosity``) and, with
  ``log_dir``, into ``log_dir/log.txt`` at INFO."""
  logging.captureWarnings(True)
  if flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present:
    return  # The user chose absl's levels.
  absl_logging.set_verbosity(absl_logging.INFO)
  absl_logging.get_absl_handler().setLevel(logging.INFO if verbose() else logging.ERROR)
  if log_dir is not None:
    path = pathlib.Path(log_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if not any(getattr(h, "baseFilename", None) == str(path.absolute()) for h in root.handlers):
      handler = logging.FileHandler(path)
      handler.setLevel(logging.INFO)
      handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
      root.addHandler(handler)


def main(fn: Callable[[list[str]], int | None],
         errors: tuple[type[BaseException], ...] = ()) -> Callable[[list[str]], int]:
  """``fn`` as an absl main: logging set up, ``USER_ERRORS`` and ``errors`` printed as one
  ``error: ...`` line with exit code 1 (their traceback goes to the log file)."""
  caught = USER_ERRORS + tuple(errors)

  def wrapped(argv):
    setup_logging()
    try:
      return fn(argv) or 0
    except caught as e:
      if verbose():
        raise
      absl_logging.info("error", exc_info=True)
      print(f"error: {e}", file=sys.stderr)
      return 1

  return wrapped
