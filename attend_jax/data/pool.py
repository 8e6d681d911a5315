"""Worker processes for decoding and rendering, the one way the package starts them.

forkserver: workers fork from a clean server that imported the named modules once, so they
start in milliseconds without inheriting the parent's threads (JAX's do not survive a fork).

``guarded_map`` is for work on users' files, where one file must never cost the others: each
file runs with a time limit, and whatever it does to its worker (an exception of any kind, a
Rust panic from a codec, a crash that kills the process, a hang) becomes that file's
``Failure`` while the pool replaces the worker and carries on (pebble's ProcessPool). Workers
exit when the process that started them dies, and their stderr (codec panics and warnings) goes
to the run's log file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pebble

# Generous: a 4.5k x 2.8k JPEG 2000 mammogram decodes in a few seconds.
DEFAULT_TIME_LIMIT_S = 300.0


def process_pool(workers: int, preload: Sequence[str] = ()) -> concurrent.futures.Executor:
  """A ProcessPoolExecutor of ``workers`` forkserver processes with ``preload`` imported."""
  return concurrent.futures.ProcessPoolExecutor(workers, mp_context=_context(preload))


def worker_count(requested: int | None, jobs: int) -> int:
  """``requested`` processes (default: every core), never more than there are jobs."""
  return max(1, min(requested or os.cpu_count() or 1, jobs))


def _context(preload: Sequence[str]):
  ctx = multiprocessing.get_context("forkserver")
  ctx.set_forkserver_preload(list(preload))
  return ctx


@dataclasses.dataclass(frozen=True)
class Failure:
  """What happened to one job: the reason, for bad_files.csv."""

  reason: str


def _watch_parent(parent: int, log_path: str | None) -> None:
  """Worker start-up: exit when ``parent`` is gone (a kill -9 must not leave workers behind),
  and send this process's stderr to ``log_path``."""
  if log_path:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)

  def watch():
    while True:
      time.sleep(1.0)
      try:
        os.kill(parent, 0)
      except ProcessLookupError:
        os._exit(1)

  threading.Thread(target=watch, daemon=True).start()


def _call(fn: Callable, job: Any, fatal: tuple[type[BaseException], ...]):
  """In the worker: ``fn(job)``, or the failure's reason as text. BaseException too: a codec's
  Rust panic (pyo3's PanicException) is not an Exception and cannot be pickled back."""
  try:
    return fn(job)
  except (KeyboardInterrupt, SystemExit, *fatal):
    raise
  except BaseException as e:  # noqa: BLE001  (see the docstring)
    return Failure(describe(e))


def describe(e: BaseException) -> str:
  """``Type: message`` on one line, the message's lines joined."""
  message = " / ".join(line.strip() for line in str(e).splitlines() if line.strip())
  return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _expired(e: pebble.ProcessExpired) -> str:
  code = e.exitcode
  if code is not None and code < 0:
    try:
      return f"the worker died decoding it ({signal.Signals(-code).name})"
    except ValueError:
      pass
  return f"the worker died decoding it (exit code {code})"


def guarded_map(fn: Callable, jobs: Iterable, *, workers: int, preload: Sequence[str] = (),
                time_limit: float = DEFAULT_TIME_LIMIT_S,
                log_path: str | os.PathLike | None = None,
                fatal: tuple[type[BaseException], ...] = ()) -> Iterator[tuple[Any, Any]]:
  """``(job, fn(job) or Failure)`` for every job, in order, from ``workers`` processes.

  ``fn`` must be a module-level function (it is pickled); ``preload`` names modules the
  workers import once. Exceptions of the ``fatal`` types (a full disk) stop the whole map and
  are raised here.
  """
  jobs = list(jobs)
  if not jobs:
    return
  pool = pebble.ProcessPool(max_workers=workers, initializer=_watch_parent,
                            initargs=(os.getpid(), str(log_path) if log_path else None),
                            context=_context(preload))
  locks = ()
  try:
    results = pool.map(_call, [fn] * len(jobs), jobs, [fatal] * len(jobs),
                       timeout=time_limit).result()
    locks = _channel_locks(pool)
    for job in jobs:
      yield job, _outcome(lambda: next(results), time_limit, fatal)
  finally:
    pool.stop()
    pool.join()  # Every worker is dead now; the locks may go.
    del locks


def _outcome(get: Callable[[], Any], time_limit: float,
             fatal: tuple[type[BaseException], ...]) -> Any:
  """``get()``, a job's result, or what went wrong with its worker as a Failure."""
  try:
    return get()
  except fatal:
    raise
  except concurrent.futures.TimeoutError:
    return Failure(f"took longer than {time_limit:.0f} s; skipped")
  except pebble.ProcessExpired as e:
    return Failure(_expired(e))
  except Exception as e:  # noqa: BLE001  (e.g. a result that cannot be pickled back)
    return Failure(describe(e))


class GuardedWorker:
  """One worker process that runs one job at a time with ``guarded_map``'s containment, for
  callers that get their jobs one by one (a Beam DoFn): ``worker(fn, job)`` is ``fn(job)`` or
  a Failure, and a worker that crashed or hung is replaced for the next job."""

  def __init__(self, preload: Sequence[str] = (), time_limit: float = DEFAULT_TIME_LIMIT_S,
               log_path: str | os.PathLike | None = None):
    self._time_limit = time_limit
    self._pool = pebble.ProcessPool(max_workers=1, initializer=_watch_parent,
                                    initargs=(os.getpid(), str(log_path) if log_path else None),
                                    context=_context(preload))
    self._locks = ()

  def __call__(self, fn: Callable, job: Any) -> Any:
    future = self._pool.schedule(_call, args=(fn, job, ()), timeout=self._time_limit)
    self._locks = self._locks or _channel_locks(self._pool)
    return _outcome(future.result, self._time_limit, ())

  def close(self) -> None:
    self._pool.stop()
    self._pool.join()
    self._locks = ()


def _channel_locks(pool: pebble.ProcessPool) -> tuple:
  """The semaphores of ``pool``'s channel, held by the caller until the pool has joined.

  pebble's stop deletes them (and so unlinks their names) before it stops the workers, and a
  worker still being started then cannot open them: a FileNotFoundError traceback from
  ``SemLock._rebuild`` on the terminal, whenever a short map ends before every worker is up.
  """
  mutex = pool._pool_manager.worker_manager.workers_channel.mutex  # noqa: SLF001
  return mutex.reader_mutex, mutex.writer_mutex
