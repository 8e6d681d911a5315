"""Stopping cleanly on SIGTERM and SIGINT: a checkpoint at the next step boundary, then an exit
with its own code.

Spot and preemptible VMs get SIGTERM and about 30 s before they go. ``StopSignal`` notes the
signal; the trainer asks ``requested(agree)`` after each step, saves and waits for the
checkpoint to commit, and raises ``Preempted``; ``main`` prints one line and exits with
``EXIT_PREEMPTED``. Rerunning the same command resumes exactly from that step.

- Multi-host: a signal reaches one host, or all at different moments. ``requested`` is agreed
  by a one-integer all-gather at the steps where the hosts sync anyway (log, eval and checkpoint
  steps) and every ``train.host_sync_every`` steps, so every host stops after the same step and
  writes its part of the same checkpoint, and the steps in between run with no host sync.
  (JAX's ``reached_preemption_sync_point`` only hears SIGTERM through its own handler, and is
  only there under ``jax.distributed``; the all-gather covers SIGINT and single hosts too.)
- The grace period: if the checkpoint has not committed ``grace_s`` seconds after the signal
  (a slow bucket, a huge model), the process exits at once with ``EXIT_PREEMPTED_UNSAVED``,
  and the rerun resumes from the previous checkpoint.
- A second Ctrl-C interrupts at once (KeyboardInterrupt), as usual.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import jax
import numpy as np

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal, checkpoint committed; rerun to resume.
EXIT_PREEMPTED_UNSAVED = 76  # The grace period ran out first: the rerun loses the last steps.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on a signal after ``step``, with a committed checkpoint of it."""

  def __init__(self, signum: int | None, step: int, where):
    """``signum`` None: this host got no signal, another one did."""
    self.signum, self.step, self.where = signum, step, where
    cause = (f"by {signal.Signals(signum).name}" if signum is not None
             else "with the other hosts (one of them was signalled)")
    super().__init__(f"stopped {cause} after step {step}; its checkpoint is committed in"
                     f" {where}. Rerun the same command to resume.")


class StopSignal:
  """Within ``with``: SIGTERM and SIGINT are noted instead of ending the process (main thread
  only; elsewhere signals cannot be caught and nothing changes)."""

  def __init__(self, grace_s: float):
    self.grace_s = grace_s
    self.signum: int | None = None
    self._previous: dict[int, object] = {}
    self._timer: threading.Timer | None = None

  def __enter__(self) -> "StopSignal":
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._note)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()
    # Out of the block nothing is saved any more: the grace period's exit would only kill
    # whatever the process does next (a test session's worker, 600 s later, did).
    self.committed()

  def _note(self, signum: int, frame) -> None:
    if self.signum is not None:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      return
    self.signum = signum
    print(f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping"
          f" (within {self.grace_s:g} s).", file=sys.stderr, flush=True)
    self._timer = threading.Timer(self.grace_s, self._out_of_time)
    self._timer.daemon = True  # Never keeps a finished process alive.
    self._timer.start()

  @property
  def counting_down(self) -> bool:
    """Whether the grace period runs (a signal came, its checkpoint is not committed yet)."""
    return self._timer is not None and self._timer.is_alive()

  def committed(self) -> None:
    """The stop checkpoint is committed: the grace period has done its work."""
    if self._timer is not None:
      self._timer.cancel()
      self._timer.join()

  def _out_of_time(self) -> None:
    print(f"error: the checkpoint did not commit within train.preemption_grace_s"
          f" ({self.grace_s:g} s) of the signal; stopping now. The rerun resumes from the"
          " previous checkpoint.", file=sys.stderr, flush=True)
    os._exit(EXIT_PREEMPTED_UNSAVED)

  def requested(self, agree: bool = True) -> bool:
    """Whether to stop after this step: on every host the same answer, True if any host was
    signalled. Under multi-host that takes a collective, run only where ``agree`` (which every
    host must pass alike for the same step); elsewhere the answer is False until then. One host
    decides alone, at every step."""
    noted = self.signum is not None
    if jax.process_count() == 1:
      return noted
    if not agree:
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(noted))
    return bool(np.max(flags))
