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

from attend_jax import hosts
from attend_jax.data import pipeline, prefetch, records
from attend_jax.tasks.base import Task
from attend_jax.train import sharding


def predict_step(task: Task, graph, detail: bool = False,
                 proposal_step: Callable[[dict], dict] | None = None):
  """A jitted ``(states, batch) -> task.eval_outputs`` for models of ``graph``: ``graph`` and the
  tuple ``states`` are what ``nnx.split`` returns. ``proposal_step`` (a run's detector,
  ``run.load_proposal_step``) replaces the batch's proposals first."""

  @jax.jit
  def step(states, batch):
    return task.eval_outputs(nnx.merge(graph, *states), batch, detail)

  if proposal_step is None:
    return step
  return lambda state, batch: step(state, proposal_step(batch))


def model_step(task: Task, model: nnx.Module, detail: bool = False,
               proposal_step: Callable[[dict], dict] | None = None,
               mesh=None) -> Callable[[dict], dict]:
  """``predict_step`` bound to one model's current state: ``batch -> outputs``; with ``mesh``,
  that state is replicated over its devices, for batches split over them."""
  graph, *states = nnx.split(model)
  if mesh is not None:
    states = hosts.replicate(states, mesh)
  step = predict_step(task, graph, detail, proposal_step)
  return lambda batch: step(tuple(states), batch)


def batch_mesh(batch_size: int):
  """A data-parallel mesh over as many of each host's devices as divide ``batch_size``, the rows
  each host gives a step: what evaluate and predict run on, as training runs on its mesh."""
  n = max(d for d in range(1, jax.local_device_count() + 1) if batch_size % d == 0)
  processes = sorted({d.process_index for d in jax.devices()})
  devices = [d for h in processes
             for d in sorted((d for d in jax.devices() if d.process_index == h),
                             key=lambda d: d.id)[:n]]
  return sharding.make_mesh(len(devices), 1, devices=devices)


def predict_split(step: Callable[[dict], dict], cfg: pipeline.PipelineConfig, mesh=None,
                  host_keys: tuple[str, ...] = ("label", "index"),
                  record_keys: tuple[str, ...] = (),
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """``step``'s outputs for every record of a split, with the batch's ``host_keys``, the records'
  ``ids`` (each with its ``record_keys``) and ``breast`` groups; every host gets every record.

  ``cfg`` is one pass in order (``pipeline.for_split(config, split, train=False)``). With a
  ``mesh`` each global batch is split over its devices; without one it goes to the default
  device. The last batch is padded to full size and the padding dropped afterwards. Batches
  are placed on the devices ahead of the step by a background thread, and the outputs stay
  there until the pass ends: the loop never waits for a batch's results.
  """
  from jax.experimental import multihost_utils

  multi = jax.process_count() > 1

  def place(batch):
    batch = pipeline.pad_batch(batch, cfg.batch_size)
    host = {k: batch.pop(k) for k in ("valid", *host_keys)}
    return (sharding.to_global(batch, mesh) if mesh is not None else jax.device_put(batch)), host

  total = len(records.data_source(cfg.data_dir, cfg.config, cfg.split)) if progress else 0
  outs, host_rows = [], []
  done = 0
  batches = prefetch.DevicePrefetch(iter(pipeline.make_dataset(cfg)), place)
  try:
    for (placed, host), _ in batches:
      outs.append(step(placed))  # Dispatched; its results stay on the device for now.
      host_rows.append(host)
      done += int(host["valid"].sum())  # Per host: the progress line is host 0's.
      if progress:
        progress(done * jax.process_count(), total)
  finally:
    batches.close()
  if multi:
    # Each global batch holds every host's rows, host by host: host arrays are gathered per
    # batch in the same order.
    outs = [multihost_utils.process_allgather(o, tiled=True) for o in outs]
    host_rows = [multihost_utils.process_allgather(h, tiled=True) for h in host_rows]
  else:
    outs = jax.device_get(outs)
  valid = np.concatenate([h["valid"] for h in host_rows])
  pred = {k: np.concatenate([np.asarray(o[k]) for o in outs])[valid] for k in (outs[0] if outs
                                                                                else {})}
  pred |= {k: np.concatenate([h[k] for h in host_rows])[valid] for k in host_keys if host_rows}
  pred["ids"] = pipeline.record_ids(cfg, pred["index"], record_keys)
  pred["breast"] = [f"{i['study_id']}/{i['laterality']}" for i in pred["ids"]]
  return pred
