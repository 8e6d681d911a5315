"""Metrics to TensorBoard event files (tensorboardX) and a JSON-lines file, on host 0 only.

CLU's metric writers import TensorFlow; tensorboardX writes the same event files without it, but
only to local disk. For a workdir on a bucket both files are written to a local mirror and
uploaded (``paths.Mirror``) at most every ``upload_every_s`` seconds, at every evaluation and at
``close``; a killed run's bucket may then miss its last seconds of training scalars, never a
checkpoint.

A resumed run starts at its last checkpoint's step, and a run killed after logging steps past that
checkpoint trains them again. So the writer of a run that starts at ``start_step`` drops the rows
of later steps from ``metrics.jsonl`` (and a row cut short by the kill): the file then holds each
step's row once, the rerun's. Event files are never rewritten: each run writes its own, and the
new one starts with TensorBoard's purge marker (``purge_step``), by which TensorBoard hides the
older files' events from ``start_step + 1`` on.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import logging

from attend_jax import paths

JSONL, TENSORBOARD = "metrics.jsonl", "tensorboard"


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch whenever
  it is installed (Colab, our test environment), only to recognise torch tensors, which we never
  pass; that was 1.7 s of every run's start."""
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None  # An import of it raises ImportError, which tensorboardX expects.
  try:
    from tensorboardX import SummaryWriter
  finally:
    if block:
      del sys.modules["torch"]
  return SummaryWriter


def _drop_rows_after(path: pathlib.Path, step: int) -> None:
  """Keeps the complete rows of steps up to ``step`` (rows are written whole and flushed, so only
  the last one can be cut short)."""
  if not path.exists():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = [l for l in lines if l.endswith("\n") and json.loads(l)["step"] <= step]
  if kept != lines:
    path.write_text("".join(kept))


class MetricWriter:

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True,
               start_step: int | None = None, upload_every_s: float = 30.0):
    """``start_step``: the step a run continues from (see above); None appends to what is
    there."""
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      SummaryWriter = _summary_writer_class()
      self._mirror = paths.Mirror(workdir, resume=(JSONL,), every_s=upload_every_s)
      # Event files are named by the second they start in; the pid keeps a quick rerun's apart.
      self._tb = SummaryWriter(
          str(self._mirror.dir / TENSORBOARD), filename_suffix=f".{os.getpid()}.{id(self)}",
          purge_step=None if start_step is None else start_step + 1)
      if start_step is not None:
        _drop_rows_after(self._mirror.dir / JSONL, start_step)
      self._jsonl = open(self._mirror.dir / JSONL, "a")

  def write(self, step: int, prefix: str, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      if value is not None:
        self._tb.add_scalar(f"{prefix}/{name}", value, step)
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **scalars}) + "\n")
    self._jsonl.flush()
    if prefix != "train" or self._mirror.due():
      self._tb.flush()
      self._mirror.sync()

  def parameter_overview(self, params) -> None:
    if not self.enabled:
      return
    from clu import parameter_overview
    from flax import nnx

    logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(
        nnx.to_pure_dict(params), include_stats=False))

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self._mirror.close()
