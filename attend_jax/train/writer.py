"""Metrics to TensorBoard event files (tensorboardX) and a JSON-lines file, on host 0 only.

CLU's metric writers import TensorFlow; tensorboardX writes the same event files without it.
"""

from __future__ import annotations

import json
import pathlib

from absl import logging


class MetricWriter:

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(workdir / "tensorboard"))
      self._jsonl = open(workdir / "metrics.jsonl", "a")

  def write(self, step: int, prefix: str, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      if value is not None:
        self._tb.add_scalar(f"{prefix}/{name}", value, step)
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **scalars}) + "\n")
    self._jsonl.flush()

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
