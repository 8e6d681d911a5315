"""One mesh from the config, parameter shardings from the layers' annotations, global batches.

Layers annotate their kernels with mesh axis names (``"fsdp"``); a dimension that the axis
does not divide is replicated instead, so the same model runs on 1 device, 8 host devices or a
pod slice. Everything is created directly in its sharded layout (``jax.jit`` with
``out_shardings``), so no full copy is ever materialised on one device.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

M = TypeVar("M", bound=nnx.Module)

BATCH_SPEC = PartitionSpec(("data", "fsdp"))  # Examples are split over every device.


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A ("data", "fsdp") mesh; -1 for ``data`` takes all devices left after ``fsdp``."""
  devices = list(devices if devices is not None else jax.devices())
  if data == -1:
    if len(devices) % fsdp:
      raise ValueError(f"fsdp={fsdp} does not divide the {len(devices)} available devices.")
    data = len(devices) // fsdp
  if data * fsdp != len(devices):
    raise ValueError(
        f"Mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices; {len(devices)} are"
        " available. Set mesh.data=-1 to use all of them."
    )
  # Auto axes: Explicit (the make_mesh default) rejects reshapes of sharded activations.
  return jax.make_mesh(
      (data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2, devices=devices
  )


def fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Replicates the dimensions whose size the named mesh axes do not divide."""
  fitted = []
  for dim, names in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if names is None:
      fitted.append(None)
      continue
    axes = names if isinstance(names, tuple) else (names,)
    size = int(np.prod([mesh.shape[a] for a in axes]))
    fitted.append(names if dim % size == 0 else None)
  return PartitionSpec(*fitted)


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for a (possibly abstract) nnx.State, from its partition annotations."""
  specs = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(
      lambda a, s: NamedSharding(mesh, fit_spec(s, a.shape, mesh)), abstract_state, specs
  )


def opt_state_shardings(init: Callable, params, mesh: Mesh):
  """NamedShardings of ``init(params)`` (an optax state): every leaf shaped like a parameter at
  the end of its path (Adam's moments) is sharded like it, the rest (step counts) replicated.

  ``jax.jit(init)`` alone gives no such layout: the moments do not depend on the parameters'
  values, so XLA places them on one device and a mesh would replicate them.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  like = {path: (tuple(x.shape), x.sharding) for path, x in flat}
  replicated = NamedSharding(mesh, PartitionSpec())

  def pick(path, leaf):
    for start in range(len(path)):
      shape, spec = like.get(tuple(path[start:]), (None, None))
      if shape == tuple(leaf.shape):
        return spec
    return replicated

  return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(init, params))


def create_sharded(make_model: Callable[[], M], mesh: Mesh) -> M:
  """Builds ``make_model()`` with every variable created in place in its sharded layout."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  shardings = state_shardings(abstract_state, mesh)
  state = jax.jit(lambda: nnx.split(make_model())[1], out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Each host's rows of ``batch`` (numpy) -> one global batch split over every device."""
  rows = len(next(iter(batch.values()))) * jax.process_count()
  if rows % mesh.size:
    raise ValueError(
        f"Batch size {rows} is not divisible by the {mesh.size} devices of the mesh"
        f" {dict(mesh.shape)}; choose a multiple of {mesh.size}.")
  spec = NamedSharding(mesh, BATCH_SPEC)
  return {k: jax.make_array_from_process_local_data(spec, np.asarray(v)) for k, v in batch.items()}
