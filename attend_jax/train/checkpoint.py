"""Orbax checkpoints: "latest" for exact resume, "best" (by validation metric) for evaluation.

The two live in separate managers. One manager with ``best_fn`` and ``max_to_keep`` can delete
the newest checkpoint when its metric is the worst, and a resume would then lose progress.

"latest" holds the parameters, BatchNorm statistics, optimizer state, step, the trainer's own
counters (best metric, evaluations without improvement) and the grain iterator state; dropout
keys are derived from the seed and the step, so they need no saving. Restores take the live
state as their target, so every array comes back with the sharding the run uses now.

A checkpoint that cannot be read (a truncated file, a crash mid-write on a filesystem without
atomic renames) never ends a run: resume takes the newest one that restores, and moves the
broken ones aside to ``WORKDIR/corrupt_checkpoints/`` (nothing is deleted); inference falls back
from ``best/`` to ``checkpoints/`` to ``weights/``. Each skip is said, with its reason.
"""

from __future__ import annotations

import contextlib
import errno
import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from attend_jax import paths
from attend_jax.data.errors import DiskFullError
from attend_jax.progress import warn

LATEST, BEST, CORRUPT = "checkpoints", "best", "corrupt_checkpoints"


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of a folder could be read; the message lists each one and why."""


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _reason(e: BaseException) -> str:
  """The exception's first line, short (TensorStore appends pages of details)."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  text = text.split(" See full TensorStore details")[0][:200]
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Checkpoints:

  def __init__(self, workdir: str | os.PathLike, keep: int = 2):
    self.workdir = paths.path(workdir)
    self.keep = keep
    self._open()

  def _open(self) -> None:
    options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True)  # noqa: E731
    self.latest = ocp.CheckpointManager(self.workdir / LATEST, options=options(self.keep))
    self.best = ocp.CheckpointManager(self.workdir / BEST, options=options(1))

  @contextlib.contextmanager
  def _disk(self, sub: str, state=None):
    """A full disk, whichever way orbax reports it (an OSError, or a TensorStore ValueError
    from its writer threads at the next save), as one DiskFullError naming the folder and what
    a checkpoint needs."""
    try:
      yield
    except Exception as e:  # noqa: BLE001  (re-raised unless it is a full disk)
      if not (getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e)):
        raise
      if state is not None:
        self.size = sum(x.nbytes for x in jax.tree.leaves(state))
      raise DiskFullError(self.workdir / sub, getattr(self, "size", 0)) from None

  def save_latest(self, step: int, state: dict, trainer: dict, data_state) -> None:
    with self._disk(LATEST, state):
      self.latest.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), trainer=ocp.args.JsonSave(trainer),
          data=ocp.args.JsonSave(data_state)))

  def save_best(self, step: int, state: dict, metrics: dict) -> None:
    with self._disk(BEST, state):
      self.best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), metrics=ocp.args.JsonSave(metrics)))

  def _set_aside(self, manager: ocp.CheckpointManager, sub: str, step: int) -> epath.Path:
    """Moves ``sub/step`` to ``corrupt_checkpoints/sub-step`` and reopens the managers, so the
    step can be written again."""
    manager.wait_until_finished()
    dest = self.workdir / CORRUPT / f"{sub}-{step}"
    n = 1
    while dest.exists():  # The same step broke before: keep both.
      n += 1
      dest = self.workdir / CORRUPT / f"{sub}-{step}-{n}"
    if jax.process_index() == 0:
      dest.parent.mkdir(exist_ok=True)
      (self.workdir / sub / str(step)).rename(dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"set aside {sub} {step}")
    self.close()
    self._open()
    return dest

  def _restore(self, sub: str, args_for_target):
    """(step, restored) of the newest checkpoint of ``sub`` that restores, or None if ``sub``
    holds none; broken ones are set aside and said."""
    manager = self.latest if sub == LATEST else self.best
    steps = sorted(manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      manager = self.latest if sub == LATEST else self.best
      try:
        return step, manager.restore(step, args=args_for_target())
      except Exception as e:  # noqa: BLE001  (any unreadable checkpoint is set aside and said)
        failures.append(f"step {step}: {_reason(e)}")
        dest = self._set_aside(manager, sub, step)
        warn("checkpoint %s/%d could not be read (%s); moved to %s, trying the one before.",
             sub, step, _reason(e), dest)
    if failures:
      raise CheckpointRestoreError(
          f"No checkpoint in {self.workdir / sub} could be read ({'; '.join(failures)}); they"
          f" are in {self.workdir / CORRUPT}. Remove {self.workdir / sub} to start over.")
    return None

  def restore_latest(self, target: dict):
    """(step, state, trainer counters, data state), or None on a fresh workdir."""
    out = self._restore(LATEST, lambda: ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target)), trainer=ocp.args.JsonRestore(),
        data=ocp.args.JsonRestore()))
    if out is None:
      return None
    step, restored = out
    return step, restored["state"], restored["trainer"], restored["data"]

  def restore_best(self, target: dict):
    """(step, state, metrics) of the best checkpoint, or None if there is none that reads."""
    try:
      out = self._restore(BEST, lambda: ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(target)), metrics=ocp.args.JsonRestore()))
    except CheckpointRestoreError as e:
      warn("%s The final evaluation uses the latest parameters instead.", e)
      return None
    if out is None:
      return None
    step, restored = out
    return step, restored["state"], restored["metrics"]

  def wait(self) -> None:
    with self._disk(LATEST):
      self.latest.wait_until_finished()
      self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_weights(directory: str | os.PathLike, target: dict):
  """(step, {"params", "stats"}) from the newest checkpoint in ``directory`` that reads, or None
  (no checkpoint, or none readable: each failure is said).

  For inference: whatever else the checkpoint holds (optimizer state, counters) is not read, and
  nothing is moved (the folder may be another process's, or read-only).
  """
  directory = paths.path(directory)
  if not directory.is_dir():
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False,
                                                                                  read_only=True))
  abstract = _abstract(target)
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True)))
      except Exception as e:  # noqa: BLE001  (the caller falls back to another checkpoint)
        warn("%s/%d could not be read (%s); trying the next checkpoint.", directory, step,
             _reason(e))
        continue
      return step, {k: out["state"][k] for k in target}
  finally:
    manager.close()
  return None


def save_weights(directory: str | os.PathLike, state: dict, step: int = 0) -> None:
  """A standalone weights checkpoint (parameters and BatchNorm statistics), e.g. a converted
  reference model, in the layout ``restore_weights`` reads."""
  manager = ocp.CheckpointManager(paths.path(directory),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()
