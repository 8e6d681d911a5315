"""A converted backbone's folder, as ``tools/convert_dinov2.py --out`` writes it:
``vit_config.json`` (the architecture) and ``state/`` (the parameters, an orbax checkpoint).

Reading it belongs to the models (a run's config names such a folder as
``model.pretrained``); turning other formats into it belongs to ``attend_jax.convert``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from attend_jax import paths
from attend_jax.errors import CheckpointError
from attend_jax.models import vit

CONFIG_FILE = "vit_config.json"
STATE_DIR = "state"



def config_to_json(cfg: vit.ViTConfig) -> dict:
  out = dataclasses.asdict(cfg)
  out["dtype"] = jnp.dtype(cfg.dtype).name
  return out


def config_from_json(data: dict) -> vit.ViTConfig:
  """TypeError / ValueError for a field of the wrong kind, or one ViTConfig does not have."""
  data = dict(data)
  data["dtype"] = jnp.dtype(data.get("dtype", "float32"))
  cfg = vit.ViTConfig(**data)
  for field in dataclasses.fields(cfg):
    default, value = field.default, getattr(cfg, field.name)
    if isinstance(default, (int, float, str)) and not (
        isinstance(value, type(default)) or (type(default) is float and type(value) is int)):
      raise TypeError(f"{field.name} is {value!r}, not a {type(default).__name__}")
  return cfg


def save(model: vit.DinoV2, out_dir: str | os.PathLike, metadata: dict | None = None) -> None:
  """Writes ``out_dir/vit_config.json`` and the parameters as an orbax checkpoint."""
  import orbax.checkpoint as ocp

  out_dir = paths.path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  state_dir = out_dir / STATE_DIR
  if state_dir.exists():
    state_dir.rmtree()
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(state_dir, nnx.state(model, nnx.Param))
    ckptr.wait_until_finished()
  info = {"config": config_to_json(model.cfg), **(metadata or {})}
  (out_dir / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_config(ckpt_dir: str | os.PathLike, variant: str = "vitb14") -> vit.ViTConfig:
  """The architecture a ``save`` folder holds, from its ``vit_config.json``; a missing folder's
  error gives the command that writes it, for ``variant``."""
  ckpt_dir = paths.path(ckpt_dir)
  config_path = ckpt_dir / CONFIG_FILE
  if not ckpt_dir.exists():
    raise CheckpointError(ckpt_dir, "no such folder; convert the backbone's weights there"
                          f" first: python tools/convert_dinov2.py --variant {variant}"
                          f" --out {ckpt_dir}")
  if not config_path.exists():
    raise CheckpointError(ckpt_dir, f"not a converted DINOv2 checkpoint (no {CONFIG_FILE})")
  try:
    return config_from_json(json.loads(config_path.read_text())["config"])
  except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError.
    raise CheckpointError(config_path, f"unreadable ({type(e).__name__}: {e}); convert the"
                          " weights again with tools/convert_dinov2.py") from None


def load(ckpt_dir: str | os.PathLike, shardings=None, **config_overrides) -> vit.DinoV2:
  """Loads a backbone written by ``save``; ``shardings`` (a state-shaped tree of concrete
  shardings, e.g. a live model's) places each parameter as it is read, else it lands on the
  default device."""
  import orbax.checkpoint as ocp

  ckpt_dir = paths.path(ckpt_dir)
  cfg = dataclasses.replace(read_config(ckpt_dir), **config_overrides)
  model = vit.abstract(cfg)
  target = nnx.state(model, nnx.Param)
  # Under jax.set_mesh the abstract model carries shardings of an AbstractMesh, which name no
  # devices: orbax cannot place arrays with them.
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target,
      shardings if shardings is not None else jax.tree.map(lambda _: None, target))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(ckpt_dir / STATE_DIR, target)
  nnx.update(model, restored)
  return model
