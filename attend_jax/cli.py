"""What every command-line entry point shares: quiet logging with a log file, ``--verbose``, and
errors a user can fix printed as one line.

  cli.run(main, errors=(...))

Each command prints its own progress (``attend_jax.progress``). Library chatter (TFDS, orbax,
grain, absl, Python warnings) goes only to ``log.txt`` in the command's output folder once
``setup_logging`` has named it; ``--verbose`` shows it on the terminal too, with a full
traceback for every error.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import re
import sys
import threading
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from attend_jax import paths, progress
from attend_jax.errors import DataError, DiskFullError, MissingExtraError
from attend_jax.data.sources import DatasetNotFoundError

LOG_FILE = "log.txt"
_VERBOSE = flags.DEFINE_bool("verbose", False,
                             "Show library logs and full tracebacks on the terminal.")
# What users cause (a missing dataset, an unusable file) and what their machine does (a full
# disk, a read-only or missing folder, an optional extra not installed): one line, exit code 1.
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, DatasetNotFoundError, DiskFullError,
                                                OSError, MissingExtraError)


def verbose() -> bool:
  return flags.FLAGS.is_parsed() and _VERBOSE.value


def setup_logging(log_dir: str | os.PathLike | None = None) -> None:
  """Library logs off the terminal (unless ``--verbose`` or ``--verbosity``) and, with
  ``log_dir``, into ``log_dir/log.txt`` at INFO (on a bucket: a local copy, uploaded at exit)."""
  logging.captureWarnings(True)
  if flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present:
    return  # The user chose absl's levels.
  absl_logging.set_verbosity(absl_logging.INFO)
  # Our own messages are printed; libraries' (orbax's async threads log whole tracebacks when a
  # save fails) reach the terminal only with --verbose.
  absl_logging.get_absl_handler().setLevel(logging.INFO if verbose() else logging.CRITICAL)
  if not verbose():
    _background_errors_to_the_log()
  if log_dir is not None:
    root = logging.getLogger()
    if not any(getattr(h, "log_dir", None) == str(paths.path(log_dir)) for h in root.handlers):
      mirror = paths.Mirror(log_dir, resume=(LOG_FILE,))
      handler = logging.FileHandler(mirror.dir / LOG_FILE)
      handler.log_dir = str(paths.path(log_dir))
      atexit.register(lambda: (handler.close(), mirror.close()))
      handler.setLevel(logging.INFO)
      handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
      root.addHandler(handler)


def _background_errors_to_the_log() -> None:
  """Errors of libraries' background threads (orbax's async writers print a traceback per
  array when a save fails) and of objects collected at exit go to the log file: the error that
  matters reaches the main thread and is printed there as one line."""
  logging.raiseExceptions = False  # A log file on a full disk must not print pages either.
  log = logging.getLogger("background")
  threading.excepthook = lambda args: log.error(
      "in thread %s", args.thread.name if args.thread else "?",
      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
  sys.unraisablehook = lambda u: log.error(
      "ignored in %r", u.object, exc_info=(u.exc_type, u.exc_value, u.exc_traceback))
  default_hook = sys.excepthook

  def excepthook(kind, value, tb):  # C callbacks (TensorStore's) print through this hook.
    if threading.current_thread() is threading.main_thread():
      default_hook(kind, value, tb)
    else:
      log.error("in a callback", exc_info=(kind, value, tb))

  sys.excepthook = excepthook


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a --config override naming no setting as one line: ml_collections
  raises a plain KeyError / AttributeError from inside flag parsing."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    names = re.findall(r"'([A-Za-z_][\w]*)'", text)
    hint = re.search(r"Did you mean .*\?", text)
    override = next((a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and names
                     and f".{names[0]}." in a.split("=")[0] + "."), "a --config override")
    print(f"error: {override}: the config has no such setting"
          + (f"; {hint.group(0)[0].lower()}{hint.group(0)[1:]}" if hint else ""), file=sys.stderr)
    sys.exit(1)


def run(fn: Callable[[list[str]], int | None], errors: tuple[type[BaseException], ...] = ()):
  """``app.run(main(fn, errors))`` with the config errors of flag parsing as one line."""
  app.run(main(fn, errors), flags_parser=_parse_flags)


def _one_line(e: BaseException) -> str:
  if (isinstance(e, OSError) and not isinstance(e, DiskFullError)
      and e.errno == errno.ENOSPC):
    return (f"no space left on the disk of {e.filename or 'the output folder'}; free some space"
            " and rerun the same command, which resumes")
  return str(e)


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
      progress.close_all()
      print(f"error: {_one_line(e)}", file=sys.stderr)
      return 1

  return wrapped
