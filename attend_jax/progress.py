"""What a person watching a run sees: short messages, and one status line per long phase.

``log`` is for people, on host 0; library chatter (TFDS, orbax, absl) goes to the log file that
``attend_jax.cli.setup_logging`` opens instead. ``Progress`` is the one status line (tqdm) with
count, rate and time left, used by every phase that takes a while: writing synthetic DICOMs,
preparing, evaluating, predicting, exporting.
"""

from __future__ import annotations

import sys

import jax
from absl import logging
from tqdm import tqdm


def log(message: str, *args) -> None:
  """A line for people on stdout (host 0 only), and the same line in the log file."""
  if jax.process_index() == 0:
    print(message % args if args else message, flush=True)
  logging.info(message, *args)


def warn(message: str, *args) -> None:
  """``warning: ...`` for people on stderr (host 0 only), and in the log file."""
  text = message % args if args else message
  if jax.process_index() == 0:
    print(f"warning: {text}", file=sys.stderr, flush=True)
  logging.warning("%s", text)


_OPEN: set = set()


def close_all() -> None:
  """Ends every open status line, so that an error printed next starts a line of its own."""
  for bar in list(_OPEN):
    bar.close()


class Progress:
  """``progress(done, total)`` callbacks drawn as one tqdm line on stderr.

  The first call fixes the starting count, so a resumed phase's rate counts only the work done
  now. Off a terminal (CI logs, captured subprocesses) the line is redrawn at most every 30 s.
  The line closes itself when ``done`` reaches ``total``.
  """

  def __init__(self, what: str = "images", unit: str = "it", unit_scale: bool = False):
    """``unit="B", unit_scale=True`` shows bytes as kB, MB, ...; a ``total`` of 0 is unknown."""
    self.what, self.unit, self.unit_scale = what, unit, unit_scale
    self._bar = None

  def __call__(self, done: int, total: int) -> None:
    if self._bar is None:
      self._bar = tqdm(total=total or None, initial=done, desc=self.what, unit=self.unit,
                       unit_scale=self.unit_scale, file=sys.stderr, dynamic_ncols=True,
                       leave=True, mininterval=0.5 if sys.stderr.isatty() else 30.0,
                       disable=jax.process_index() != 0)
      _OPEN.add(self)
    self._bar.update(done - self._bar.n)
    if total and done >= total:
      self.close()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    _OPEN.discard(self)
