"""A run's folder, and the one way to open it.

A training workdir holds ``config.json`` (the whole config, so every later use preprocesses
and builds the model as training did), orbax checkpoints (``checkpoints/`` for resume,
``best/`` for evaluation), a classifier's ``calibration.json`` (its temperature and operating
points, fitted on the validation split at the end of training: ``eval/calibration.py``), and,
for a classifier trained on a detector's boxes, ``detector/``: its own copy of that detector. A
weights export (a converted checkpoint, the detector copy) is the same minus the training state:
``config.json``, ``weights/`` and, where the model has one, ``calibration.json``.

The trainer writes through this module; predict, evaluate, export_proposals, the notebooks and
the classifier's detector proposals (``load_proposal_step``) read through ``load``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable

import jax
import ml_collections
from flax import nnx

from attend_jax import checkpoint, export, paths, tasks
from attend_jax.eval import calibration as calibration_lib
from attend_jax.progress import log
from attend_jax.tasks import detect

CONFIG, WEIGHTS = export.CONFIG, export.WEIGHTS  # A run's config, and a standalone export's.
DETECTOR_COPY = "detector"  # A classifier run's own copy of the detector it trained with.


class ModelNotFoundError(FileNotFoundError):
  """The run or checkpoint folder holds no usable model; the message says what is missing."""


@dataclasses.dataclass
class Loaded:
  config: ml_collections.ConfigDict
  model: nnx.Module  # In eval mode.
  source: str  # Which checkpoint, for the outputs.
  # proposals.source="detector": batch -> batch with the run's own detector's proposals.
  proposal_step: Callable[[dict], dict] | None = None
  # A classifier's calibration.json; None where there is none (an older run, a converted
  # reference checkpoint, a validation split of one class).
  calibration: calibration_lib.Calibration | None = None

  @property
  def task(self) -> tasks.Task:
    return tasks.get(self.config)


def write_config(directory: str | os.PathLike, config) -> None:
  """``DIR/config.json`` (host 0)."""
  if jax.process_index() == 0:
    path = paths.path(directory) / CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json_best_effort(indent=2) + "\n")


def read_config(directory: str | os.PathLike) -> ml_collections.ConfigDict:
  path = paths.path(directory) / CONFIG
  if not path.exists():
    raise ModelNotFoundError(f"{path.parent}: no {CONFIG}; pass a training workdir"
                             " (python -m attend_jax.main --workdir) or a converted checkpoint.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def save_export(directory: str | os.PathLike, model: nnx.Module, config,
                calibration: calibration_lib.Calibration | None = None) -> None:
  """``model``'s parameters and BatchNorm statistics with ``config``, as a weights folder
  (``attend_jax.export``) that ``load`` opens (a converted checkpoint, a classifier's detector
  copy), with ``calibration`` (a ``Loaded``'s) beside them where there is one."""
  _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  export.write(directory, {"params": params, "stats": stats}, config.to_json_best_effort(indent=2))
  if calibration is not None and jax.process_index() == 0:
    calibration_lib.write(directory, calibration)


def load(directory: str | os.PathLike, mesh=None) -> Loaded:
  """The model of a training workdir (best checkpoint, else the latest) or of a weights export:
  a classifier, with the detector that proposes its RoIs if it was trained with one (replicated
  over ``mesh``, where batches will be split), or a detector. The config comes from
  ``DIR/config.json``, a classifier's calibration from ``DIR/calibration.json`` if it has one.

  Raises:
    ModelNotFoundError: no config or no checkpoint.
    calibration.CalibrationError: a calibration.json that is not one.
  """
  directory = paths.path(directory)
  config = read_config(directory)
  if "backbone" in config and "model" not in config:
    raise ModelNotFoundError(f"{directory}: a converted backbone (tools/convert_dinov2.py), not"
                             " a trained model; train from it with --config.model.pretrained="
                             f"{directory}.")
  config.model.pretrained = ""  # The checkpoint holds the backbone too.
  calibration = calibration_lib.read(directory)
  build = tasks.get(config).build_model
  # Shapes only: the weights come from the checkpoint. An eager build would initialise every
  # parameter op by op (about 2 s of one-off kernel compiles per process) to be overwritten.
  graph, params, stats, _ = nnx.split(nnx.eval_shape(build), nnx.Param, nnx.BatchStat, ...)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = export.abstract({"params": params, "stats": stats}, device)
  # The rest (dropout's RNG state) as a fresh build has it, from one small compiled program.
  rest = jax.jit(lambda: nnx.split(build(), nnx.Param, nnx.BatchStat, ...)[3])()
  for sub in (checkpoint.BEST, checkpoint.LATEST, WEIGHTS):
    restored = export.restore(directory / sub, target)
    if restored is not None:
      step, state = restored
      model = nnx.merge(graph, state["params"], state["stats"], rest)
      model.eval()
      return Loaded(config, model, f"{directory / sub} step {step}",
                    load_proposal_step(config, directory, mesh), calibration)
  raise ModelNotFoundError(f"{directory}: no checkpoint in {checkpoint.BEST}/,"
                           f" {checkpoint.LATEST}/ or {WEIGHTS}/ yet.")


def load_proposal_step(config, workdir: str | os.PathLike,
                       mesh=None) -> Callable[[dict], dict] | None:
  """With ``proposals.source = "detector"``, the jitted ``batch -> batch`` that replaces a
  batch's proposals by the detector's top boxes, on device; otherwise None.

  The detector comes from ``workdir/detector`` if the run already has one (a resume, or a
  trained classifier used for prediction), else from ``config.proposals.detector`` (a detector
  workdir, best checkpoint first), and is then copied there, so that a classifier run carries
  the detector it was trained with.
  """
  if config.proposals.source != "detector":
    return None
  own = paths.path(workdir) / DETECTOR_COPY
  if (own / CONFIG).exists():
    loaded = load(own)
  else:
    if not config.proposals.get("detector"):
      raise ValueError("proposals.source='detector' needs proposals.detector: the workdir of a"
                       " trained detector (python -m attend_jax.main"
                       " --config=configs/detector_<dataset>.py --workdir=DIR).")
    loaded = load(config.proposals.detector)
    if tasks.name(loaded.config) != "detect":
      raise ValueError(f"proposals.detector={config.proposals.detector} is a"
                       f" {tasks.name(loaded.config)!r} run, not a detector.")
    if jax.process_index() == 0:
      save_export(own, loaded.model, loaded.config)
  log("Proposals: the detector of %s", loaded.source)
  return detect.proposal_step(loaded.model, max(config.proposals.topk, 1), mesh)


LOCK = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another run holds the folder (a training workdir, predict's --out); the message names it
  (host, pid, start time)."""


@contextlib.contextmanager
def locked(folder: str | os.PathLike, flag: str = "--workdir"):
  """Holds ``FOLDER/.lock`` while a run writes there (host 0 only: one job per folder), for a
  training workdir or predict's output folder; ``flag`` is the option that chose ``folder``.

  An flock: the kernel drops it when its process dies, so a killed run's lock never blocks the
  resume, and a second run refuses at once, naming the holder. A bucket has no such lock (an
  object that outlives a preempted VM would block its resume), so a folder on a bucket is not
  guarded: the log says so.
  """
  if jax.process_index() != 0:
    yield
    return
  if not paths.is_local(folder):
    log("%s is on a bucket: nothing stops a second run from using it at the same time.",
        folder)
    yield
    return
  path = paths.local(folder) / LOCK
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
      except ValueError:
        holder = {}
      raise WorkdirBusyError(
          f"{folder} is in use by another run (pid {holder.get('pid', '?')} on"
          f" {holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it to"
          f" finish or stop it, or choose another {flag}.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the lock.
