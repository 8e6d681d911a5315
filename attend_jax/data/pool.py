"""Worker processes for decoding and rendering, the one way the package starts them.

forkserver: workers fork from a clean server that imported the named modules once, so they
start in milliseconds without inheriting the parent's threads (JAX's do not survive a fork).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Sequence


def process_pool(workers: int, preload: Sequence[str] = ()) -> concurrent.futures.Executor:
  """A ProcessPoolExecutor of ``workers`` forkserver processes with ``preload`` imported."""
  ctx = multiprocessing.get_context("forkserver")
  ctx.set_forkserver_preload(list(preload))
  return concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)


def worker_count(requested: int | None, jobs: int) -> int:
  """``requested`` processes (default: every core), never more than there are jobs."""
  return max(1, min(requested or os.cpu_count() or 1, jobs))
