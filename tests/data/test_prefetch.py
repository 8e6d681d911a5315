"""The device prefetcher: order, the data state after each batch, errors, stopping, read-ahead."""

import threading

import numpy as np
import pytest

from attend_jax.data import prefetch

# Only a guard against a hang; never a speed check.
WAIT_S = 60


class Counting:
  """Batches 0, 1, 2, ... up to ``n``, with grain's get_state/set_state; ``produced`` is set for
  each batch read."""

  def __init__(self, n=5, fail_at=None):
    self.n, self.fail_at, self.position, self.closed = n, fail_at, 0, False
    self.produced = [threading.Event() for _ in range(n)]

  def __iter__(self):
    return self

  def __next__(self):
    if self.position == self.fail_at:
      raise OSError("shard 3 is unreadable")
    if self.position >= self.n:
      raise StopIteration
    self.produced[self.position].set()
    self.position += 1
    return {"x": np.full((2,), self.position - 1)}

  def get_state(self):
    return {"position": self.position}

  def close(self):
    self.closed = True


def test_batches_come_in_order_each_with_the_state_after_it():
  source = Counting(5)
  got = list(prefetch.DevicePrefetch(source, lambda b: b["x"] * 10, size=2))
  assert [int(b[0]) for b, _ in got] == [0, 10, 20, 30, 40]
  assert [s["position"] for _, s in got] == [1, 2, 3, 4, 5]


def test_resuming_from_a_batch_s_state_gives_the_batches_after_it():
  """What a checkpoint after batch 1 holds resumes at batch 2, though the reader was ahead."""
  first = prefetch.DevicePrefetch(Counting(5), lambda b: b, size=2)
  next(first)
  _, state = next(first)
  first.close()
  resumed = Counting(5)
  resumed.position = state["position"]  # set_state
  assert [int(b["x"][0]) for b, _ in prefetch.DevicePrefetch(resumed, lambda b: b)] == [2, 3, 4]


def test_the_next_batch_is_read_while_the_current_one_is_used():
  source = Counting(5)
  inputs = prefetch.DevicePrefetch(source, lambda b: b, size=2)
  next(inputs)  # Batch 0 is being used; the reader goes on without being asked.
  assert source.produced[1].wait(WAIT_S) and source.produced[2].wait(WAIT_S)
  inputs.close()


def test_a_reader_error_reaches_the_step_loop_after_the_good_batches():
  inputs = prefetch.DevicePrefetch(Counting(5, fail_at=2), lambda b: b)
  assert int(next(inputs)[0]["x"][0]) == 0 and int(next(inputs)[0]["x"][0]) == 1
  with pytest.raises(OSError, match="shard 3 is unreadable"):
    next(inputs)


def test_close_stops_a_reader_waiting_on_a_full_queue_and_closes_the_pipeline():
  source = Counting(100)
  inputs = prefetch.DevicePrefetch(source, lambda b: b, size=1)
  next(inputs)
  assert source.produced[2].wait(WAIT_S)  # One in the queue, one waiting to be put.
  inputs.close()
  assert source.closed and source.position < 100
  assert not inputs._thread.is_alive()


def test_a_size_below_one_is_refused():
  with pytest.raises(ValueError, match="at least 1"):
    prefetch.DevicePrefetch(Counting(1), lambda b: b, size=0)
