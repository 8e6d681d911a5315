"""A weights folder: the one format of every model that leaves a run.

    DIR/config.json   what the weights are: a run's whole config, or a converted backbone's
                      architecture ({"backbone": ViT config, "converted_from": ...})
    DIR/weights/      an orbax checkpoint (one step) of {"params": ..., "stats": ...}

``tools/convert_dinov2.py`` writes a backbone this way (``models/pretrained.py``);
``tools/convert_reference.py``, a run's export and a classifier's copy of its detector write a
whole model (``run.py``). A training workdir's ``best/`` and ``checkpoints/`` are read with the
same ``restore``. Folders of the old converter format (``vit_config.json`` + ``state/``) still
load, through ``models/pretrained.py``.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from attend_jax import paths
from attend_jax.errors import short_reason
from attend_jax.progress import warn

CONFIG = "config.json"
WEIGHTS = "weights"


def abstract(tree, shardings):
  """ShapeDtypeStructs of ``tree``'s arrays, laid out by ``shardings``: a tree like ``tree``, or
  one sharding for every leaf. What a compile or an orbax restore takes in place of arrays."""
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shardings),
                        tree)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree,
                      shardings)


def write(directory: str | os.PathLike, state: dict, config: dict | str, step: int = 0) -> None:
  """``DIR/weights`` (``state``: {"params", "stats"}, as a checkpoint of ``step``) and
  ``DIR/config.json`` (``config``: a dict, or JSON text) from host 0."""
  directory = paths.path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  manager = ocp.CheckpointManager(directory / WEIGHTS,
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()
  if jax.process_index() == 0:
    text = config if isinstance(config, str) else json.dumps(config, indent=2)
    (directory / CONFIG).write_text(text.rstrip("\n") + "\n")


def restore(directory: str | os.PathLike, target: dict):
  """(step, {key: ...} for each key of ``target``) from the newest checkpoint in ``directory``
  (a ``DIR/weights``, ``best/`` or ``checkpoints/``) that reads, or None (no checkpoint, or
  none readable: each failure is said). ``target`` holds arrays or ShapeDtypeStructs whose
  shardings say where each array goes.

  For inference: whatever else the checkpoint holds (optimizer state, counters) is not read, and
  nothing is moved (the folder may be another process's, or read-only).
  """
  directory = paths.path(directory)
  if not directory.is_dir():
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False,
                                                                                  read_only=True))
  shapes = abstract(target, jax.tree.map(lambda a: a.sharding, target))
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=shapes, restore_args=ocp.checkpoint_utils.construct_restore_args(shapes),
            partial_restore=True)))
      except Exception as e:  # noqa: BLE001  (the caller falls back to another checkpoint)
        warn("%s/%d could not be read (%s); trying the next checkpoint.", directory, step,
             short_reason(e))
        continue
      return step, {k: out["state"][k] for k in target}
  finally:
    manager.close()
  return None
