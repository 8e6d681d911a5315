"""Will the train step fit? An estimate from the compiled step, before any batch is read.

The trainer compiles its step ahead of time from the batch's shapes (``abstract_batch``: the
pipeline's own padding of an empty record) and trains with that executable. XLA's
``memory_analysis`` of it says what one device needs: arguments, outputs and temporaries, less
what donation lets outputs reuse. That is compared with what a device has: the backend's
``bytes_limit`` (GPU, TPU), or on CPU, whose devices share the host, the host's available RAM,
which must also hold the input pipeline's read-ahead batches. A batch that cannot fit would
otherwise fill the host with batches until the OS kills the process, or fail at the first step.

When it does not fit, a second compile at the smallest batch (one example per device) gives the
memory per example, and from the two the largest batch that fits: an estimate, said as one.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from attend_jax.config_check import ConfigError
from attend_jax.data import pipeline
from attend_jax.train import sharding


class BatchDoesNotFitError(ConfigError):
  """``data.batch_size`` needs more memory than the devices have, by the compiled step's own
  figures; the message names the largest batch that fits, by the same estimate."""


def _size(n: float) -> str:
  for unit in ("kB", "MB", "GB", "TB"):
    n /= 1000
    if n < 1000 or unit == "TB":
      return f"{n:.1f} {unit}"


def _example(config) -> dict[str, np.ndarray]:
  """One training example as the pipeline pads it, from an empty record: no data is read."""
  empty = {"image": np.zeros((1, 1), np.uint16), "label": 0,
           "lesion_boxes": np.zeros((0, 4), np.float32),
           "lesion_malignant": np.zeros((0,), np.float32),
           "proposals": np.zeros((0, 5), np.float32)}
  cfg = pipeline.for_split(config, "train", train=True)
  return pipeline.to_fixed_shapes(empty, 0, cfg.image_size, cfg.num_proposals, cfg.max_lesions)


def abstract_batch(config, mesh, batch_size: int, proposal_step=None) -> dict:
  """A global training batch of ``batch_size`` as the step receives it: shapes, dtypes (as
  ``sharding.to_global`` makes them) and the batch sharding; after ``proposal_step`` if there is
  one."""
  spec = NamedSharding(mesh, sharding.BATCH_SPEC)
  batch = {k: jax.ShapeDtypeStruct((batch_size, *np.shape(v)),
                                   jax.dtypes.canonicalize_dtype(np.asarray(v).dtype),
                                   sharding=spec)
           for k, v in _example(config).items()}
  if proposal_step is not None:
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec)
             for k, v in jax.eval_shape(proposal_step, batch).items()}
  return batch


def step_bytes(compiled) -> int | None:
  """What one device needs to run ``compiled`` (None where the backend does not say)."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes + m.generated_code_size_in_bytes)


def host_available_bytes() -> int | None:
  """The RAM this process may still take: Linux's MemAvailable, or a container's (cgroup v2)
  limit less its use where that is lower; None where neither can be read."""
  try:
    with open("/proc/meminfo") as f:
      available = int(re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024
  except (OSError, AttributeError):
    return None
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      limit = f.read().strip()
    with open("/sys/fs/cgroup/memory.current") as f:
      used = int(f.read())
  except OSError:  # No cgroup v2 here.
    return available
  return available if limit == "max" else min(available, int(limit) - used)


@dataclasses.dataclass(frozen=True)
class Budget:
  """Memory a step may use: ``capacity`` bytes for ``devices`` x a device's need plus the host
  batches (``host_per_example`` bytes per example of the global batch), as ``where`` says."""
  capacity: int
  devices: int
  host_per_example: float
  where: str

  def need(self, device_bytes: int, batch_size: int) -> float:
    return device_bytes * self.devices + self.host_per_example * batch_size


def budget(config, mesh, state) -> Budget | None:
  """The memory of this host's devices (None where it cannot be known).

  On CPU the state's arrays (``state``) already sit in the RAM that is counted as available no
  more, and the step's arguments count them again: they are added back.
  """
  devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  stats = devices[0].memory_stats() or {}
  if "bytes_limit" in stats:
    limit = min(d.memory_stats()["bytes_limit"] for d in devices)
    return Budget(limit, 1, 0.0, f"per {devices[0].device_kind} device, which has {_size(limit)}")
  available = host_available_bytes()
  if available is None:
    return None
  resident = sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards)
  cfg = pipeline.for_split(config, "train", train=True)
  # Read ahead: each worker (or the reading thread) holds its prefetch buffer and one batch more.
  batches = (cfg.prefetch_batches + 1) * max(1, cfg.worker_count)
  per_example = sum(np.asarray(v).nbytes for v in _example(config).values())
  return Budget(available + resident, len(devices), per_example * batches / jax.process_count(),
                f"of this host's {_size(available + resident)} of RAM for its {len(devices)} CPU"
                f" device(s) and {batches} read-ahead batches")


def largest_batch(small: tuple[int, float], large: tuple[int, float], capacity: float,
                  multiple: int) -> int:
  """The largest multiple of ``multiple`` whose need, on the line through the (batch size,
  need) points ``small`` and ``large`` (which needs more than ``capacity``), is within
  ``capacity``; 0 if not even ``small``'s is."""
  (b0, need0), (b1, need1) = small, large
  if need0 > capacity:
    return 0
  fits = b0 + (capacity - need0) * (b1 - b0) / (need1 - need0)
  return max(int(fits) // multiple * multiple, b0)


def check(config, mesh, compiled, compile_at, available: Budget | None) -> None:
  """Raises BatchDoesNotFitError when ``compiled`` (the step at ``config.data.batch_size``)
  needs more than is ``available``; only then ``compile_at`` compiles it at the smallest batch
  too, for the estimate of what fits."""
  batch_size = config.data.batch_size
  device_bytes = step_bytes(compiled)
  if available is None or device_bytes is None:
    logging.info("No memory figures for this backend or host: the memory check is skipped.")
    return
  need = available.need(device_bytes, batch_size)
  logging.info("The train step needs about %s (%s).", _size(need), available.where)
  if need <= available.capacity:
    return
  smallest = mesh.size
  small = (available.need(step_bytes(compile_at(smallest)), smallest)
           if batch_size > smallest else need)
  head = (f"config.data.batch_size={batch_size} does not fit: by an estimate from the compiled"
          f" train step it needs about {_size(need)} ({available.where})")
  skip = "or skip this estimate with --config.train.memory_check=False"
  fits = largest_batch((smallest, small), (batch_size, need), available.capacity, smallest)
  if fits:
    raise BatchDoesNotFitError(
        f"{head}; about {fits} fits (the largest multiple of the {smallest} devices, by the same"
        " estimate). Lower --config.data.batch_size (optim.grad_accum keeps the effective"
        f" batch), {skip}.")
  raise BatchDoesNotFitError(
      f"{head}, and even {smallest} (one example per device) needs about {_size(small)}: the model"
      " and its optimiser state need more than there is. Split them over the devices with"
      f" mesh.fsdp, use model.dtype=bfloat16 or a smaller model, {skip}.")
