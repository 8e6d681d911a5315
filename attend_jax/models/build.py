"""Config sections -> the models' frozen config dataclasses, and pretrained backbones.

The ``ml_collections`` config is the user's; the models only see dataclasses. Everything that
maps one to the other lives here, so tasks, tools and converters build models the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from attend_jax.models import attend, detector, vit
from attend_jax.progress import log


def vit_config(config) -> vit.ViTConfig:
  overrides = {k: v for k, v in config.model.vit_overrides.items() if v}
  overrides["dtype"] = jnp.dtype(config.model.dtype)
  return vit.config_for(config.model.variant, config.model.registers, **overrides)


def attend_config(config) -> attend.AttendConfig:
  return attend.AttendConfig(
      vit=vit_config(config), pool=config.model.pool, pool_attn_block=config.model.pool_attn_block,
      num_classes=config.model.num_classes, dropout=config.model.dropout,
      roi_size=config.model.roi_size,
      contrastive_dim=config.model.contrastive_dim if config.loss.contrastive_weight else 0)


def detector_config(config) -> detector.DetectorConfig:
  d = config.detector
  return detector.DetectorConfig(
      vit=vit_config(config), input_size=d.input_size, fpn_dim=d.fpn_dim,
      head_convs=d.head_convs, strides=tuple(d.strides), object_scale=d.object_scale,
      center_radius=d.center_radius, focal_alpha=d.focal_alpha, focal_gamma=d.focal_gamma,
      giou_weight=d.giou_weight, l1_weight=d.l1_weight, pre_nms=d.pre_nms, nms_iou=d.nms_iou,
      max_detections=d.max_detections)


def load_pretrained_backbone(model: nnx.Module, path: str) -> None:
  """Replaces ``model.vision_model``'s parameters by a converted DINOv2 (tools/convert_dinov2.py),
  each placed with the sharding the live parameter has."""
  from attend_jax.convert import dinov2

  pretrained = dinov2.load(path)
  if dataclasses.replace(pretrained.cfg, dtype=model.cfg.vit.dtype) != model.cfg.vit:
    raise ValueError(f"{path}: the converted backbone is {pretrained.cfg}, but the config asks"
                     f" for {model.cfg.vit}; set model.variant / registers to match.")
  current = nnx.state(model.vision_model, nnx.Param)
  loaded = nnx.state(pretrained, nnx.Param)
  placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), loaded, current)
  nnx.update(model.vision_model, placed)
  log("Loaded the DINOv2 backbone from %s", path)
