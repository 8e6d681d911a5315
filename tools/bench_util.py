"""Helpers the tools/bench_*.py scripts share: alternating timing and analytic ViT FLOPs."""

from __future__ import annotations

import statistics
import time
from typing import Callable

from attend_jax.models import vit


def forward_flops(cfg: vit.ViTConfig, size: int, batch: int) -> float:
  """Multiply-adds x2 of the matmuls and attention; norms and activations are ignored."""
  grid = size // vit.PATCH_SIZE
  n, t, d = grid * grid, 1 + cfg.num_registers + grid * grid, cfg.width
  mlp_in = 2 * cfg.mlp_hidden if cfg.mlp == "swiglu" else cfg.mlp_hidden
  per_block = 2 * t * d * (3 * d + d + mlp_in + cfg.mlp_hidden) + 2 * 2 * t * t * d
  return batch * (2 * n * vit.PATCH_SIZE**2 * 3 * d + cfg.depth * per_block)


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int) -> dict:
  """Median seconds per framework; the order within each repetition alternates."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  names = list(fns)
  for r in range(reps):
    for name in names if r % 2 == 0 else names[::-1]:
      start = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}
