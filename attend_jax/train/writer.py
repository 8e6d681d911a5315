"""Metrics to TensorBoard event files (tensorboardX) and a JSON-lines file, on host 0 only.

CLU's metric writers import TensorFlow; tensorboardX writes the same event files without it, but
only to local disk. For a workdir on a bucket both files are written to a local mirror and
uploaded (``paths.Mirror``) at most every ``upload_every_s`` seconds, at every evaluation and at
``close``; a killed run's bucket may then miss its last seconds of training scalars, never a
checkpoint.
"""

from __future__ import annotations

import json
import os
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


class MetricWriter:

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True,
               upload_every_s: float = 30.0):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      SummaryWriter = _summary_writer_class()
      self._mirror = paths.Mirror(workdir, resume=(JSONL,), every_s=upload_every_s)
      # Event files are named by the second they start in; the pid keeps a quick rerun's apart.
      self._tb = SummaryWriter(str(self._mirror.dir / TENSORBOARD),
                               filename_suffix=f".{os.getpid()}.{id(self)}")
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
