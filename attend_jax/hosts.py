"""The hosts of a multi-host run (``jax.distributed``): the same command on every host starts
it, arrays are replicated over a mesh that spans hosts, and small values are shared.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def replicate(tree, mesh: Mesh):
  """Every array of ``tree`` (this host's copy, the same on every host) replicated over every
  device of ``mesh``, which may span hosts."""
  spec = NamedSharding(mesh, PartitionSpec())
  if not mesh.is_multi_process:
    return jax.device_put(tree, spec)
  mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  return jax.tree.map(lambda x: jax.make_array_from_single_device_arrays(
      x.shape, spec, [jax.device_put(x, d) for d in mine]), tree)


def maybe_initialize_distributed() -> None:
  """Multi-host: the same command on every host. TPU pods configure themselves; GPU and CPU
  clusters set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
  if jax.distributed.is_initialized():
    return
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()
  else:
    return
  # The hosts leave initialize together. A first collective now sets up the CPU backend's
  # (Gloo's) connections while they are in step: its connect times out after about 30 s, and
  # at the first collective of the run (orbax's, when the checkpoint folder is opened) one
  # host may arrive that much later than another (seen: a loaded CI machine, a bucket).
  multihost_utils.sync_global_devices("attend_jax: hosts started")


def from_every_host(value: Any) -> list:
  """``value`` (anything JSON writes) of every host, in host order, on every host: a collective
  that all hosts must call together. One process: ``[value]``."""
  if jax.process_count() == 1:
    return [value]
  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([len(data)], np.int64)).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:len(data)] = data
  every = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:size])) for row, size in zip(every, sizes)]
