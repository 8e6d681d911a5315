"""The next global batches put on the devices while the current step runs.

``DevicePrefetch(iterator, place, size)`` reads the host pipeline and places each batch
(``sharding.to_global``: host -> device copies) in a background thread, ``size`` batches ahead,
as big_vision's ``prefetch_iterator`` does around ``start_global``. With the step's input
buffers donated, two in flight keep the device busy.

Each batch comes with the pipeline's state *after* it (``get_state()``), so a checkpoint saved
after training on a batch resumes at the next one, exactly as without prefetching: the batches
read ahead are read again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_END = object()


class DevicePrefetch:
  """Iterates ``(placed batch, data state after it)``; ``close()`` stops the reader."""

  def __init__(self, iterator: Iterator, place: Callable[[Any], Any], size: int = 2):
    if size < 1:
      raise ValueError(f"The prefetch size must be at least 1, got {size}.")
    self._iterator, self._place = iterator, place
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._read, name="device_prefetch", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _read(self) -> None:
    try:
      for batch in self._iterator:
        state = self._iterator.get_state() if hasattr(self._iterator, "get_state") else None
        if not self._put((self._place(batch), state)):
          return
      self._put(_END)
    except BaseException as e:  # noqa: BLE001  (raised again in the consumer's thread)
      self._put(e)

  def __iter__(self) -> "DevicePrefetch":
    return self

  def __next__(self):
    while True:
      try:
        item = self._queue.get(timeout=0.1)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          raise RuntimeError("The input pipeline's reader stopped without a word.") from None
    if item is _END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    """Stops the reader (it finishes the batch it is placing) and closes the pipeline."""
    self._stop.set()
    self._thread.join()
    if hasattr(self._iterator, "close"):
      self._iterator.close()
