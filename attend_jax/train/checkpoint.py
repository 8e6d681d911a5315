"""Orbax checkpoints: "latest" for exact resume, "best" (by validation AUC) for evaluation.

The two live in separate managers. One manager with ``best_fn`` and ``max_to_keep`` can delete
the newest checkpoint when its metric is the worst, and a resume would then lose progress.

"latest" holds the parameters, BatchNorm statistics, optimizer state, step, the trainer's own
counters (best AUC, evaluations without improvement) and the grain iterator state; dropout
keys are derived from the seed and the step, so they need no saving. Restores take the live
state as their target, so every array comes back with the sharding the run uses now.
"""

from __future__ import annotations

import os
import pathlib

import jax
import orbax.checkpoint as ocp

LATEST, BEST = "checkpoints", "best"


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


class Checkpoints:

  def __init__(self, workdir: str | os.PathLike, keep: int = 2):
    workdir = pathlib.Path(workdir).absolute()
    options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True)
    self.latest = ocp.CheckpointManager(workdir / LATEST, options=options(keep))
    self.best = ocp.CheckpointManager(workdir / BEST, options=options(1))

  def save_latest(self, step: int, state: dict, trainer: dict, data_state) -> None:
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), trainer=ocp.args.JsonSave(trainer),
        data=ocp.args.JsonSave(data_state)))

  def save_best(self, step: int, state: dict, metrics: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), metrics=ocp.args.JsonSave(metrics)))

  def restore_latest(self, target: dict):
    """(step, state, trainer counters, data state), or None on a fresh workdir."""
    step = self.latest.latest_step()
    if step is None:
      return None
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target)), trainer=ocp.args.JsonRestore(),
        data=ocp.args.JsonRestore()))
    return step, out["state"], out["trainer"], out["data"]

  def restore_best(self, target: dict):
    """(step, state, metrics) of the best checkpoint, or None if there is none yet."""
    step = self.best.latest_step()
    if step is None:
      return None
    out = self.best.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target)), metrics=ocp.args.JsonRestore()))
    return step, out["state"], out["metrics"]

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_weights(directory: str | os.PathLike, target: dict):
  """(step, {"params", "stats"}) from the newest checkpoint in ``directory``, or None.

  For inference: whatever else the checkpoint holds (optimizer state, counters) is not read.
  """
  directory = pathlib.Path(directory).absolute()
  if not directory.is_dir():
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False,
                                                                                  read_only=True))
  step = manager.latest_step()
  if step is None:
    return None
  abstract = _abstract(target)
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=True)))
  manager.close()
  return step, {k: out["state"][k] for k in target}


def save_weights(directory: str | os.PathLike, state: dict, step: int = 0) -> None:
  """A standalone weights checkpoint (parameters and BatchNorm statistics), e.g. a converted
  reference model, in the layout ``restore_weights`` reads."""
  manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()
