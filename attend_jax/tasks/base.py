"""What a task is: the model a config builds, its loss, what evaluation keeps, and its report.

The trainer, the prediction loop and the evaluators only talk to this interface; adding a task
(a breast-level multi-view model, pretraining) is a new module beside ``classify`` and
``detect`` and one entry in ``attend_jax.tasks.TASKS``.
"""

from __future__ import annotations

import abc
import json
import pathlib
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from attend_jax.data import records


class Task(abc.ABC):
  """One task, bound to a run's config.

  Batches are dicts of arrays in the pipeline's layout (``attend_jax.data.pipeline``); the
  model's train/eval mode (dropout, BatchNorm) is the caller's to set.
  """

  name: str
  # Whether fit_calibration fits anything: the trainer predicts the validation split for it.
  calibrates: bool = False
  # Batch entries the prediction loop keeps beside the outputs, for ``summarize`` and ``write``.
  host_keys: tuple[str, ...] = ("label", "index")

  def __init__(self, config):
    self.config = config

  @abc.abstractmethod
  def build_model(self, seed: int = 0) -> nnx.Module:
    """The model with fresh parameters; the caller places it on a mesh."""

  @abc.abstractmethod
  def check(self) -> None:
    """Raises ValueError if the config cannot build this task's model (checked at start-up,
    before any data or model work)."""

  @property
  @abc.abstractmethod
  def selection_metric(self) -> str:
    """The validation metric (higher is better) that picks the best checkpoint."""

  @abc.abstractmethod
  def no_metric_reason(self) -> str:
    """Why a split may give no ``selection_metric``, for the log."""

  @abc.abstractmethod
  def loss_terms(self, model: nnx.Module, batch: dict, train: bool,
                 step: jax.Array | None = None) -> dict[str, jax.Array]:
    """Scalar terms for the log; ``loss`` among them is what the optimiser minimises. ``step``,
    the update about to be made (a traced scalar), is for terms on a schedule."""

  @abc.abstractmethod
  def eval_outputs(self, model: nnx.Module, batch: dict, detail: bool = False
                   ) -> dict[str, jax.Array]:
    """Per-example outputs of an evaluation step; ``detail`` adds what reports draw (RoIs,
    attention)."""

  @abc.abstractmethod
  def summarize(self, pred: dict) -> dict:
    """The metrics of a predicted split (``attend_jax.train.prediction.predict_split``'s output)."""

  @abc.abstractmethod
  def write(self, pred: dict, out_dir: pathlib.Path, split: str, extra: dict | None = None,
            gallery: int = 4, calibration=None) -> dict:
    """The task's evaluation of a predicted split, into ``out_dir``: ``metrics.json`` (the
    metrics, ``split`` and ``extra``), the per-example table, the plots, a gallery of
    ``gallery`` images per row (0: none) and ``report.md``, which links them all. Train-time
    evaluation and ``attend_jax.evaluate`` both write through it. ``calibration`` is what
    ``fit_calibration`` gave (None: none). Returns what metrics.json holds."""

  def fit_calibration(self, pred: dict, split: str):
    """What the run keeps, fitted on ``pred``, its validation split ``split``, to make its
    scores usable in practice (a classifier's ``eval.calibration.Calibration``); None for a
    task without one, or where it cannot be fitted (the log says why)."""
    return None

  @abc.abstractmethod
  def headline(self, summary: dict) -> str:
    """One readable line of ``summary``'s main numbers, for logs."""

  def records(self, split: str):
    """The prepared records of ``split`` (the images a gallery shows), by index."""
    return records.data_source(self.config.data.dir, self.config.data.name, split)

  def gallery_rows(self, pred: dict, split: str, picks: dict, tile: Callable) -> dict:
    """For each named row of ``picks`` (indices into ``pred``), ``tile(i, image, record)`` of
    each pick: ``image`` its stored record's pixels in [0, 1]."""
    source = self.records(split)

    def one(i):
      record = source[int(pred["index"][i])]
      return tile(int(i), np.asarray(record["image"], np.float32) / 65535.0, record)

    return {name: [one(i) for i in indices] for name, indices in picks.items()}

  def report_header(self, split: str, summary: dict, extra: dict | None) -> list[str]:
    """The first lines of report.md: the split, the model and the data."""
    lines = [f"# Evaluation: {split} split", ""]
    if (extra or {}).get("model"):
      lines += [f"Model: `{extra['model']}`", ""]
    return lines + [f"Data: `{self.config.data.dir}` ({self.config.data.name}).", ""]


def write_json(path: pathlib.Path, summary: dict) -> None:
  path.write_text(json.dumps(summary, indent=2) + "\n")


def fmt(value, digits: int = 3) -> str:
  """A metric for a log line or a table: n/a for None."""
  return "n/a" if value is None else f"{value:.{digits}f}"
