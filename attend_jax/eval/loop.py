"""The one prediction loop over a prepared split: batched, padded, sharded, gathered from every
host; train-time evaluation, ``python -m attend_jax.evaluate`` and tools/export_proposals.py
all run it. ``predict_step`` is the jitted step it runs, which predict on DICOMs shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from attend_jax.data import pipeline, records
from attend_jax.tasks.base import Task
from attend_jax.train import sharding


def predict_step(task: Task, graph, detail: bool = False,
                 proposer: Callable[[dict], dict] | None = None):
  """A jitted ``(states, batch) -> task.eval_outputs`` for models of ``graph``: ``graph`` and the
  tuple ``states`` are what ``nnx.split`` returns. ``proposer`` (a run's detector) replaces the
  batch's proposals first."""

  @jax.jit
  def step(states, batch):
    return task.eval_outputs(nnx.merge(graph, *states), batch, detail)

  if proposer is None:
    return step
  return lambda state, batch: step(state, proposer(batch))


def model_step(task: Task, model: nnx.Module, detail: bool = False,
               proposer: Callable[[dict], dict] | None = None) -> Callable[[dict], dict]:
  """``predict_step`` bound to one model's current state: ``batch -> outputs``."""
  graph, *states = nnx.split(model)
  step = predict_step(task, graph, detail, proposer)
  return lambda batch: step(tuple(states), batch)


def predict_split(step: Callable[[dict], dict], cfg: pipeline.PipelineConfig, mesh=None,
                  host_keys: tuple[str, ...] = ("label", "index"),
                  record_keys: tuple[str, ...] = (),
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """``step``'s outputs for every record of a split, with the batch's ``host_keys``, the records'
  ``ids`` (each with its ``record_keys``) and ``breast`` groups; every host gets every record.

  ``cfg`` is one pass in order (``pipeline.for_split(config, split, train=False)``). With a
  ``mesh`` each global batch is split over its devices; without one it goes to the default
  device. The last batch is padded to full size and the padding dropped afterwards.
  """
  from jax.experimental import multihost_utils

  gather = (lambda x: multihost_utils.process_allgather(x, tiled=True)
            ) if jax.process_count() > 1 else (lambda x: jax.device_get(x))
  total = len(records.data_source(cfg.data_dir, cfg.config, cfg.split)) if progress else 0
  gathered: dict[str, list] = {}
  keep = []  # False for the padding of the last batch.
  done = 0
  for batch in pipeline.make_dataset(cfg):
    batch = pipeline.pad_batch(batch, cfg.batch_size)
    valid = batch.pop("valid")
    keep.append(gather(valid))
    placed = sharding.to_global(batch, mesh) if mesh is not None else batch
    out = gather(step(placed))
    out |= {k: gather(batch[k]) for k in host_keys}
    for k, v in out.items():
      gathered.setdefault(k, []).append(np.asarray(v))
    done += int(keep[-1].sum())
    if progress:
      progress(done, total)
  keep = np.concatenate(keep)
  pred = {k: np.concatenate(v)[keep] for k, v in gathered.items()}
  pred["ids"] = pipeline.record_ids(cfg, pred["index"], record_keys)
  pred["breast"] = [f"{i['study_id']}/{i['laterality']}" for i in pred["ids"]]
  return pred
