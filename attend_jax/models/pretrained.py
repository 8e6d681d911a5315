"""A converted backbone's folder, as ``tools/convert_dinov2.py --out`` writes it: a weights
folder (``attend_jax.export``) whose ``config.json`` holds ``{"backbone": the ViT config,
"converted_from": ...}`` and whose ``weights/`` holds the parameters.

Reading it belongs to the models (a run's config names such a folder as
``model.pretrained``); turning other formats into it belongs to ``attend_jax.convert``. Folders
of the old format (``vit_config.json`` + ``state/``, before the one weights-folder format)
still load, with one line saying so.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from attend_jax import export, paths
from attend_jax.errors import CheckpointError
from attend_jax.models import vit
from attend_jax.progress import warn

BACKBONE = "backbone"  # config.json's key for the architecture.
# The old format: the architecture and the parameters (an orbax StandardCheckpointer folder).
OLD_CONFIG_FILE, OLD_STATE_DIR = "vit_config.json", "state"


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
  """Writes ``model`` as a weights folder: ``config.json`` (the architecture and ``metadata``)
  and ``weights/``."""
  out_dir = paths.path(out_dir)
  if (out_dir / export.WEIGHTS).exists():
    (out_dir / export.WEIGHTS).rmtree()
  export.write(out_dir, {"params": nnx.state(model, nnx.Param)},
               {BACKBONE: config_to_json(model.cfg), **(metadata or {})})


def _is_old(ckpt_dir) -> bool:
  return not (ckpt_dir / export.CONFIG).exists() and (ckpt_dir / OLD_CONFIG_FILE).exists()


def read_config(ckpt_dir: str | os.PathLike, variant: str = "vitb14") -> vit.ViTConfig:
  """The architecture a ``save`` folder (or an old-format one) holds; a missing folder's error
  gives the command that writes it, for ``variant``."""
  ckpt_dir = paths.path(ckpt_dir)
  if not ckpt_dir.exists():
    raise CheckpointError(ckpt_dir, "no such folder; convert the backbone's weights there"
                          f" first: python tools/convert_dinov2.py --variant {variant}"
                          f" --out {ckpt_dir}")
  old = _is_old(ckpt_dir)
  config_path = ckpt_dir / (OLD_CONFIG_FILE if old else export.CONFIG)
  if not config_path.exists():
    raise CheckpointError(ckpt_dir, f"not a converted DINOv2 checkpoint (no {export.CONFIG})")
  try:
    data = json.loads(config_path.read_text())
  except ValueError as e:  # JSONDecodeError is a ValueError.
    raise CheckpointError(config_path, f"unreadable ({type(e).__name__}: {e}); convert the"
                          " weights again with tools/convert_dinov2.py") from None
  key = "config" if old else BACKBONE
  if not old and isinstance(data, dict) and BACKBONE not in data and "model" in data:
    raise CheckpointError(ckpt_dir, "a whole model's weights (a run's export), not a converted"
                          " backbone; model.pretrained takes the output of"
                          " tools/convert_dinov2.py")
  try:
    return config_from_json(data[key])
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(config_path, f"unreadable ({type(e).__name__}: {e}); convert the"
                          " weights again with tools/convert_dinov2.py") from None


def load(ckpt_dir: str | os.PathLike, shardings=None, **config_overrides) -> vit.DinoV2:
  """Loads a backbone written by ``save`` (or an old-format folder); ``shardings`` (a
  state-shaped tree of concrete shardings, e.g. a live model's) places each parameter as it is
  read, else it lands on the default device."""
  ckpt_dir = paths.path(ckpt_dir)
  cfg = dataclasses.replace(read_config(ckpt_dir), **config_overrides)
  model = vit.abstract(cfg)
  target = nnx.state(model, nnx.Param)
  # Under jax.set_mesh the abstract model carries shardings of an AbstractMesh, which name no
  # devices: orbax cannot place arrays with them.
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target,
      shardings if shardings is not None else jax.tree.map(lambda _: default, target))
  if _is_old(ckpt_dir):
    warn("%s is in the old converted-weights format (vit_config.json + state/); it loads, and"
         " tools/convert_dinov2.py --out writes the current one (config.json + weights/).",
         ckpt_dir)
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore(ckpt_dir / OLD_STATE_DIR, target)
  else:
    found = export.restore(ckpt_dir / export.WEIGHTS, {"params": target})
    if found is None:
      raise CheckpointError(ckpt_dir / export.WEIGHTS, "no readable checkpoint; convert the"
                            " weights again with tools/convert_dinov2.py")
    restored = found[1]["params"]
  nnx.update(model, restored)
  return model
