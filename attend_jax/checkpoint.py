"""Orbax checkpoints: "latest" for exact resume, "best" (by validation metric) for evaluation.

The two live in separate managers. One manager with ``best_fn`` and ``max_to_keep`` can delete
the newest checkpoint when its metric is the worst, and a resume would then lose progress.

"latest" holds the parameters, BatchNorm statistics, optimizer state, step, the trainer's own
counters (best metric, evaluations without improvement) and the grain iterator state; dropout
keys are derived from the seed and the step, so they need no saving. Restores take the live
state as their target, so every array comes back with the sharding the run uses now.

A checkpoint that cannot be read (a truncated file, a crash mid-write on a filesystem without
atomic renames) never ends a run: resume takes the newest one that restores, and moves the
broken ones aside to ``WORKDIR/corrupt_checkpoints/`` (nothing is deleted); inference (``export.restore``) falls
back from ``best/`` to ``checkpoints/`` to ``weights/``. Each skip is said, with its reason.
"""

from __future__ import annotations

import contextlib
import errno
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from attend_jax import paths
from attend_jax.export import abstract
from attend_jax.errors import DiskFullError, short_reason
from attend_jax.progress import warn

LATEST, BEST, CORRUPT = "checkpoints", "best", "corrupt_checkpoints"


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of a folder could be read; the message lists each one and why."""


def _abstract(tree):
  return abstract(tree, jax.tree.map(lambda a: a.sharding, tree))


def _disk_full(e: BaseException) -> bool:
  """Whichever way orbax reports it: an OSError, or a TensorStore ValueError from its writers."""
  return getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e)


def _arrays_saved_per_shard() -> None:
  """On a CPU backend, each replicated array is written whole by one device.

  orbax's default there (replica-parallel saving, which orbax itself switches off on GPUs)
  splits every replicated array between its replicas so that each writes a part: it buys
  nothing where the "devices" share the host's memory, and each part is cut by an eager slice,
  one small compiled program per array shape: 0.75 s of every save of the tests' models on 8
  simulated devices, a quarter of a short training run. TPUs keep orbax's default.
  """
  if jax.default_backend() == "cpu":
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpoints:
  """Saves are asynchronous: orbax writes a checkpoint in background threads while training goes
  on, and its own first word of a failure would be at the next save of that folder. Here a save
  is known to have failed when it ends (``check``, after every step) or at the latest before the
  folder's next save, and is reported by its step: a full disk as one DiskFullError naming
  ``sub/step``. The temporary folder a failed save leaves is removed (orbax leaves it; on a full
  disk that is also the space back), and any left by a killed run goes when the next opens."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 2):
    _arrays_saved_per_shard()
    self.workdir = paths.path(workdir)
    self.keep = keep
    self._pending: dict[str, tuple[int, int]] = {}  # Folder -> (step, bytes) of a save in flight.
    self._open()

  def _open(self) -> None:
    options = lambda n: ocp.CheckpointManagerOptions(  # noqa: E731
        max_to_keep=n, create=True, cleanup_tmp_directories=True)
    self.latest = ocp.CheckpointManager(self.workdir / LATEST, options=options(self.keep))
    self.best = ocp.CheckpointManager(self.workdir / BEST, options=options(1))

  def _manager(self, sub: str) -> ocp.CheckpointManager:
    return self.latest if sub == LATEST else self.best

  def _save(self, sub: str, step: int, state: dict, args: ocp.args.Composite) -> None:
    self._commit(sub)  # A failure before this save's own is then named by its own step.
    size = sum(x.nbytes for x in jax.tree.leaves(state))
    with self._failed(sub, step, size):
      self._manager(sub).save(step, args=args)
    self._pending[sub] = (step, size)

  def save_latest(self, step: int, state: dict, trainer: dict, data_state) -> None:
    self._save(LATEST, step, state, ocp.args.Composite(
        state=ocp.args.StandardSave(state), trainer=ocp.args.JsonSave(trainer),
        data=ocp.args.JsonSave(data_state)))

  def save_best(self, step: int, state: dict, metrics: dict) -> None:
    self._save(BEST, step, state, ocp.args.Composite(
        state=ocp.args.StandardSave(state), metrics=ocp.args.JsonSave(metrics)))

  def _commit(self, sub: str) -> None:
    """Waits for ``sub``'s save in flight, if any; its failure is raised, named."""
    if sub not in self._pending:
      return
    step, size = self._pending[sub]
    with self._failed(sub, step, size):
      self._manager(sub).wait_until_finished()
    del self._pending[sub]

  def check(self) -> None:
    """Raises the failure of a save that has ended, without waiting for one still writing.

    On one host only: hosts see a save end at different steps, and one stopping alone would
    leave the others waiting in the next step's collectives; there the failure is raised before
    the folder's next save, which every host reaches at the same step."""
    if jax.process_count() > 1:
      return
    for sub in list(self._pending):
      if not self._manager(sub).is_saving_in_progress():
        self._commit(sub)

  @contextlib.contextmanager
  def _failed(self, sub: str, step: int, size: int):
    """A failure of the save of ``sub/step``: its temporary folder and those of the other saves
    in flight (the same full disk fails them too) removed; a full disk as a DiskFullError."""
    try:
      yield
    except Exception as e:  # noqa: BLE001  (re-raised, a full disk as a DiskFullError)
      self._pending.pop(sub, None)
      self._remove_temporary(sub, step)
      self._abandon_pending()
      if not _disk_full(e):
        raise
      raise DiskFullError(self.workdir / sub / str(step), size) from None

  def _abandon_pending(self) -> None:
    """Waits for the saves still in flight; a failed one's temporary folder is removed, and its
    error goes to the log (the error being raised is the one reported)."""
    while self._pending:
      sub, (step, _) = self._pending.popitem()
      try:
        self._manager(sub).wait_until_finished()
      except Exception as e:  # noqa: BLE001  (logged; the first failure is the one raised)
        logging.warning("The save of %s/%d failed as well: %s", sub, step, short_reason(e))
        self._remove_temporary(sub, step)

  def _remove_temporary(self, sub: str, step: int) -> None:
    if jax.process_index() == 0:
      for tmp in (self.workdir / sub).glob(f"{step}{ocp.path.step.TMP_DIR_SUFFIX}*"):
        tmp.rmtree()

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
        failures.append(f"step {step}: {short_reason(e)}")
        dest = self._set_aside(manager, sub, step)
        warn("checkpoint %s/%d could not be read (%s); moved to %s, trying the one before.",
             sub, step, short_reason(e), dest)
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
    """Waits for the saves in flight; a failure is raised, named by its save."""
    for sub in (LATEST, BEST):
      self._commit(sub)

  def close(self) -> None:
    self.latest.close()
    self.best.close()
