"""Helpers the tools/bench_*.py scripts share: alternating timing and analytic ViT FLOPs."""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Callable

from attend_jax.models import attend, vit


# glibc serves a large allocation from a thread's arena with a fresh mmap, whatever
# M_MMAP_THRESHOLD says, and unmaps it on free. XLA:CPU allocates each execution's temporaries in
# one such block (3.1 GB for the ViT-S/14 train step at 448 px and 5 RoIs) from its worker
# threads, so every step faults the whole block in again, page by page: 0.9 M minor faults and
# 1.7 s of kernel time per step here, a cost that varies with the machine's kernel and its
# transparent huge pages. One arena and no mmap keep freed memory for reuse: no faults after the
# first step, for PyTorch in the same process as for JAX.
MALLOC_REUSE = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                "glibc.malloc.trim_threshold=1099511627776")


def reuse_freed_memory(mode: str) -> str:
  """With ``mode`` "reuse", on Linux, runs this script again with MALLOC_REUSE (glibc reads its
  tunables at start-up only), unless GLIBC_TUNABLES is already set; returns the tunables the
  process runs with ("" for glibc's defaults)."""
  if mode == "reuse" and sys.platform.startswith("linux") and "GLIBC_TUNABLES" not in os.environ:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv],
              {**os.environ, "GLIBC_TUNABLES": MALLOC_REUSE})
  return os.environ.get("GLIBC_TUNABLES", "")


def forward_flops(cfg: vit.ViTConfig, size: int, batch: int) -> float:
  """Multiply-adds x2 of the matmuls and attention; norms and activations are ignored."""
  grid = size // vit.PATCH_SIZE
  n, t, d = grid * grid, 1 + cfg.num_registers + grid * grid, cfg.width
  mlp_in = 2 * cfg.mlp_hidden if cfg.mlp == "swiglu" else cfg.mlp_hidden
  per_block = 2 * t * d * (3 * d + d + mlp_in + cfg.mlp_hidden) + 2 * 2 * t * t * d
  return batch * (2 * n * vit.PATCH_SIZE**2 * 3 * d + cfg.depth * per_block)


# Warm-up rounds go on (at most MAX_SETTLE_ROUNDS more) until no call of a round faults more
# than SETTLED_FAULTS pages: until the heap that both frameworks share has grown to its size.
SETTLED_FAULTS = 10_000  # 40 MB of 4 KiB pages.
MAX_SETTLE_ROUNDS = 4


def _round(fns: dict[str, Callable[[], None]], names: list[str]) -> dict[str, tuple]:
  """Calls each of ``names`` once, in that order: {name: (seconds, minor page faults)}."""
  import resource

  out = {}
  for name in names:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    fns[name]()
    out[name] = (time.perf_counter() - start,
                 resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  return out


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int,
                faults: dict | None = None) -> dict:
  """Median seconds per framework; the order within each repetition alternates. With
  ``faults``, also fills it with each framework's median count of minor page faults per timed
  call (first touches of memory the process had not used: a step that has to grow its heap
  pays about 10 us for each on a VM).

  The ``warmup`` rounds alternate as the timed ones do, and go on while a call still faults:
  the frameworks share one heap, and with one warm-up call each, one framework's next call could
  still find its memory taken by the other's and grow the heap again (the ViT-S/14 step at 224
  px faulted 0.1-0.2 M pages per timed call in such runs, 10 % slower, and none once settled)."""
  names = list(fns)
  order = lambda r: names if r % 2 == 0 else names[::-1]  # noqa: E731
  if warmup:
    for r in range(warmup + MAX_SETTLE_ROUNDS):
      calls = _round(fns, order(r))
      if r + 1 >= warmup and max(f for _, f in calls.values()) <= SETTLED_FAULTS:
        break
  times = {name: [] for name in fns}
  touched = {name: [] for name in fns}
  for r in range(reps):
    for name, (seconds, faulted) in _round(fns, order(r)).items():
      times[name].append(seconds)
      touched[name].append(faulted)
  if faults is not None:
    faults.update({name: int(statistics.median(t)) for name, t in touched.items()})
  return {name: statistics.median(t) for name, t in times.items()}


class Rows:
  """A benchmark's figures as JSON, written again after every row: a part killed at its time
  limit keeps every figure it finished (``{**header, "rows": [...]}`` in ``path``)."""

  def __init__(self, path: str | None, **header):
    self.path, self.header, self.rows = path, header, []

  def add(self, row: dict) -> None:
    self.rows.append(row)
    self.write()

  def write(self, **extra) -> None:
    self.header.update(extra)
    if self.path:
      import json
      import pathlib

      pathlib.Path(self.path).write_text(json.dumps({**self.header, "rows": self.rows},
                                                    indent=2) + "\n")


def peak_device_bytes() -> int | None:
  """The first device's peak memory in use so far (``memory_stats``; None where the backend has
  none, as the CPU's)."""
  import jax

  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def analytic_flops(config, model_cfg: attend.AttendConfig, batch: int, train: bool) -> dict:
  """Matmul FLOPs (2 x multiply-adds) of one step on ``batch`` images, by part.

  A train step is 3x the forward for every layer whose input needs a gradient, 2x for those
  whose input is data: the patch embedding (its input is the image) and the box embedding
  (sine features of the boxes). Frozen blocks (``model.freeze_blocks``) are 2x: their weight
  gradients are never read, so XLA drops them, but the input gradients still flow through them
  to the position embeddings and CLS token, which train (as in the reference); a frozen patch
  embedding is forward only. The RoI crop has no gradient. The contrastive projections only
  run in training (evaluation does not use them). Norms, activations, softmax, the losses'
  similarity matrices and the position-embedding resize are left out: they are the cost
  analysis's remainder.
  """
  v = model_cfg.vit
  k, s = config.proposals.topk, model_cfg.roi_size
  size = config.data.image_size
  grid = s // vit.PATCH_SIZE
  patch = 2 * grid * grid * vit.PATCH_SIZE**2 * 3 * v.width  # Per RoI.
  backbone = forward_flops(v, s, 1)  # Per RoI, the patch embedding included.
  e = model_cfg.width
  tokens = k + (model_cfg.pool == "cls")
  pos = 4 * attend.POSITION_DIMS
  aggregator = model_cfg.num_blocks * (10 * tokens * e * e + 4 * tokens * tokens * e)
  head = 2 * e * model_cfg.head_hidden + 2 * model_cfg.head_hidden * model_cfg.num_classes
  projection = 0
  if model_cfg.contrastive_dim and train:
    projection = (1 + k) * (2 * e * e + 2 * e * model_cfg.contrastive_dim)
  position = 2 * k * pos * pos
  crop = 2 * k * s * size * size + 2 * k * s * size * s  # Rows then columns, per image.
  block = (backbone - patch) / v.depth
  freeze = config.model.freeze_blocks
  frozen = min(freeze, v.depth) if freeze >= 0 else 0
  if train:  # Trained blocks 3x, frozen ones 2x; the patch embedding 2x, or 1x when frozen.
    vit_flops = 3 * (v.depth - frozen) * block + 2 * frozen * block
    vit_flops += patch if freeze >= 0 else 2 * patch
  else:
    vit_flops = backbone
  g = 3 if train else 1
  parts = {"vit": batch * k * vit_flops,
           "crop": batch * crop,
           "aggregator_head": batch * (g * (aggregator + head + projection)
                                       + (2 if train else 1) * position)}
  parts["total"] = sum(parts.values())
  return parts
