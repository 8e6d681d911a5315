"""The authors' PyTorch state dict (``model_epoch_N.pt``) -> an AttendModel.

Their names: ``vision_model.*`` (Meta's DINOv2 names), ``fc_positions``,
``transformer_block{i}.attention_layer.{q,k,v,out}_proj``, ``transformer_block{i}.layer_norm1``,
``.mlp_layer``, ``.layer_norm2``, ``bn_vision`` (with running statistics), ``fc1``, ``fc2`` and,
in ``cls`` pooling only, ``cls_token``.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attend_jax.convert import dinov2
from attend_jax.errors import CheckpointError
from attend_jax.models import attend

VISION_PREFIX = "vision_model."


def _linear(sd, name):
  return {"kernel": sd[f"{name}.weight"].T, "bias": sd[f"{name}.bias"]}


def _norm(sd, name):
  return {"scale": sd[f"{name}.weight"], "bias": sd[f"{name}.bias"]}


def _require(sd: Mapping, keys, path) -> None:
  missing = [k for k in keys if k not in sd]
  if missing:
    raise CheckpointError(path, f"missing {len(missing)} keys of the reference model: "
                          + ", ".join(missing[:8]))


def reference_to_state(sd: Mapping[str, np.ndarray], cfg: attend.AttendConfig,
                       path: str | os.PathLike = "<state dict>") -> tuple[dict, dict]:
  """(params, batch_stats) shaped like ``nnx.state(model, nnx.Param / nnx.BatchStat)``."""
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
  vision = {k[len(VISION_PREFIX):]: v for k, v in sd.items() if k.startswith(VISION_PREFIX)}
  if not vision:
    raise CheckpointError(path, "no vision_model.* keys: not an attend-what-matters checkpoint")
  meta, _ = dinov2.to_meta_names(vision, path)
  dinov2.check_state_dict(meta, cfg.vit, path)

  head = ["fc_positions", "fc1", "fc2"]
  blocks = [f"transformer_block{i + 1}" for i in range(cfg.num_blocks)]
  needed = [f"{n}.{p}" for n in head for p in ("weight", "bias")]
  for b in blocks:
    for m in ("attention_layer.q_proj", "attention_layer.k_proj", "attention_layer.v_proj",
              "attention_layer.out_proj", "layer_norm1", "mlp_layer", "layer_norm2"):
      needed += [f"{b}.{m}.weight", f"{b}.{m}.bias"]
  needed += [f"bn_vision.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
  if cfg.pool == "cls":
    needed.append("cls_token")
  _require(sd, needed, path)

  params = {
      "vision_model": dinov2.meta_to_params(meta, cfg.vit),
      "fc_positions": _linear(sd, "fc_positions"),
      "blocks": {
          i: {
              "attention_layer": {p: _linear(sd, f"{b}.attention_layer.{p}")
                                  for p in ("q_proj", "k_proj", "v_proj", "out_proj")},
              "layer_norm1": _norm(sd, f"{b}.layer_norm1"),
              "mlp_layer": _linear(sd, f"{b}.mlp_layer"),
              "layer_norm2": _norm(sd, f"{b}.layer_norm2"),
          } for i, b in enumerate(blocks)
      },
      "bn_vision": _norm(sd, "bn_vision"),
      "fc1": _linear(sd, "fc1"),
      "fc2": _linear(sd, "fc2"),
  }
  if cfg.pool == "cls":
    params["cls_token"] = sd["cls_token"]
  stats = {"bn_vision": {"mean": sd["bn_vision.running_mean"],
                         "var": sd["bn_vision.running_var"]}}
  return params, stats


def create(cfg: attend.AttendConfig, seed: int = 0) -> attend.AttendModel:
  """A freshly initialised AttendModel, built inside jit (fast even for ViT-g)."""
  make = lambda: attend.AttendModel(cfg, rngs=nnx.Rngs(seed))
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  return nnx.merge(graphdef, jax.jit(lambda: nnx.split(make())[1])())


def load_reference(sd: Mapping[str, np.ndarray], cfg: attend.AttendConfig,
                   path: str | os.PathLike = "<state dict>") -> attend.AttendModel:
  """An AttendModel holding the reference's weights and BatchNorm statistics, in eval mode."""
  params, stats = reference_to_state(sd, cfg, path)
  model = create(cfg)
  for kind, values in ((nnx.Param, params), (nnx.BatchStat, stats)):
    state = nnx.state(model, kind)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, values))
    nnx.update(model, state)
  model.eval()
  return model
