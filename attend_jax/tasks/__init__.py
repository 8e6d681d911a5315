"""Tasks: what a run trains. ``get(config)`` is the one place that reads ``config.task``."""

from attend_jax.tasks.base import Task
from attend_jax.tasks.classify import Classify
from attend_jax.tasks.detect import Detect

TASKS = {"classify": Classify, "detect": Detect}


def name(config) -> str:
  """``config.task`` (default ``classify``), checked."""
  task = config.get("task", "classify")
  if task not in TASKS:
    raise ValueError(f"config.task must be one of {tuple(TASKS)}, got {task!r}.")
  return task


def get(config) -> Task:
  """The task of ``config``, bound to it."""
  return TASKS[name(config)](config)


__all__ = ["TASKS", "Task", "get", "name"]
