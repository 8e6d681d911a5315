"""What a task is: the model a config builds, its loss, what evaluation keeps, and its report.

The trainer, the prediction loop and the evaluators only talk to this interface; adding a task
(a breast-level multi-view model, pretraining) is a new module beside ``classify`` and
``detect`` and one entry in ``attend_jax.tasks.TASKS``.
"""

from __future__ import annotations

import abc
import pathlib

import jax
from flax import nnx


class Task(abc.ABC):
  """One task, bound to a run's config.

  Batches are dicts of arrays in the pipeline's layout (``attend_jax.data.pipeline``); the
  model's train/eval mode (dropout, BatchNorm) is the caller's to set.
  """

  name: str
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
  def write(self, pred: dict, out_dir: pathlib.Path, split: str, extra: dict | None = None
            ) -> dict:
    """``metrics.json`` (the metrics, ``split`` and ``extra``), the per-example table and the
    task's plots into ``out_dir``; returns what metrics.json holds."""
