"""Config sections -> the models' frozen config dataclasses, and pretrained backbones.

The ``ml_collections`` config is the user's; the models only see dataclasses. Everything that
maps one to the other lives here, so tasks, tools and converters build models the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from attend_jax.errors import CheckpointError
from attend_jax.models import attend, detector, pretrained, vit
from attend_jax.progress import log


@contextlib.contextmanager
def fast_tracing():
  """Model construction traced without JAX's quadratic error-message work (jax-ml/jax#40041).

  flax's ``Variable.set_value`` probes ``getattr(value, "sharding", None)`` on every assignment;
  on a tracer that raises an AttributeError whose message walks every equation traced so far,
  and getattr then throws the message away. Building the ViT-B classifier under ``eval_shape``
  took 2.0 s, 0.26 s without it, and a run builds its model several times. Inside this block,
  tracer errors lose the "this value became a tracer at ..." lines, nothing else.
  """
  from jax._src.interpreters import partial_eval

  tracer = partial_eval.DynamicJaxprTracer
  original = tracer.__dict__.get("_origin_msg")
  if original is None:  # A JAX without the method: nothing to work around.
    yield
    return
  tracer._origin_msg = lambda self: ""
  try:
    yield
  finally:
    tracer._origin_msg = original


def vit_config(config) -> vit.ViTConfig:
  overrides = {k: v for k, v in config.model.vit_overrides.items() if v}
  overrides["dtype"] = jnp.dtype(config.model.dtype)
  overrides["attention"] = config.model.get("attention", "auto")
  overrides["remat"] = config.model.get("remat", "none")
  overrides["scan_blocks"] = config.model.get("scan_blocks", False)
  return vit.config_for(config.model.variant, config.model.registers, **overrides)


def attend_config(config) -> attend.AttendConfig:
  return attend.AttendConfig(
      vit=vit_config(config), pool=config.model.pool, pool_attn_block=config.model.pool_attn_block,
      num_classes=config.model.num_classes, dropout=config.model.dropout,
      roi_size=config.model.roi_size, crop=config.model.get("crop", "dense"),
      contrastive_dim=config.model.contrastive_dim if config.loss.contrastive_weight else 0)


def detector_config(config) -> detector.DetectorConfig:
  d = config.detector
  return detector.DetectorConfig(
      vit=vit_config(config), input_size=d.input_size, fpn_dim=d.fpn_dim,
      head_convs=d.head_convs, strides=tuple(d.strides), object_scale=d.object_scale,
      center_radius=d.center_radius, focal_alpha=d.focal_alpha, focal_gamma=d.focal_gamma,
      giou_weight=d.giou_weight, l1_weight=d.l1_weight, pre_nms=d.pre_nms, nms_iou=d.nms_iou,
      max_detections=d.max_detections)


# The architecture fields a converted backbone fixes, and the config keys that set them.
_ARCHITECTURE = {"width": "model.vit_overrides.width", "depth": "model.vit_overrides.depth",
                 "num_heads": "model.vit_overrides.num_heads",
                 "pretrained_grid": "model.vit_overrides.pretrained_grid",
                 "num_registers": "model.registers", "mlp": "model.variant",
                 "mlp_ratio": "model.variant"}


def pretrained_vit(config) -> vit.ViTConfig | None:
  """The backbone in ``config.model.pretrained`` (a tools/convert_dinov2.py folder), checked
  against the config's architecture; None without one. CheckpointError names the file and
  each config key that differs."""
  if not config.model.pretrained:
    return None
  stored = pretrained.read_config(config.model.pretrained, variant=config.model.variant)
  want = vit_config(config)
  wrong = [f"{key}: the weights have {getattr(stored, field)!r}, the config"
           f" {getattr(want, field)!r}" for field, key in _ARCHITECTURE.items()
           if getattr(stored, field) != getattr(want, field)]
  if wrong:
    raise CheckpointError(
        config.model.pretrained, "the converted backbone does not match config.model ("
        + "; ".join(wrong) + "): set those keys to the weights' values, or convert the"
        " weights of the backbone the config asks for")
  return stored


def adopt_pretrained(config) -> None:
  """Checks ``config.model.pretrained`` (``pretrained_vit``) and records in the config how its
  position embeddings are resized: the weights' source model's own algorithm, which the
  converter chose. config.json then says it, so every later build of the run (evaluate,
  predict) resizes them as training did."""
  stored = pretrained_vit(config)
  if stored is not None and not config.model.vit_overrides.get("pos_embed_interp"):
    with config.unlocked():
      config.model.vit_overrides.pos_embed_interp = stored.pos_embed_interp


def load_pretrained_backbone(model: nnx.Module, path: str) -> None:
  """Replaces ``model.vision_model``'s parameters by a converted DINOv2 (tools/convert_dinov2.py),
  each read straight into the sharding the live parameter has."""
  want = model.cfg.vit
  stored = pretrained.read_config(path)
  # How it computes (dtype, kernel, remat, scan) is the run's; what it is must match.
  how = ("dtype", "pos_embed_interp", "attention", "remat", "scan_blocks", "attention_chunk")
  if dataclasses.replace(stored, **{k: getattr(want, k) for k in how}) != want:
    raise CheckpointError(
        path, f"the converted backbone is {stored}, but the model is {want}")
  current = nnx.state(model.vision_model, nnx.Param)
  # Under the run's mesh, and never a whole copy on one device first.
  weights = pretrained.load(path, shardings=jax.tree.map(lambda x: x.sharding, current),
                           dtype=want.dtype, pos_embed_interp=want.pos_embed_interp)
  nnx.update(model.vision_model, nnx.state(weights, nnx.Param))
  log("Loaded the DINOv2 backbone from %s", path)
