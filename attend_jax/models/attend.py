"""The Attend model: DINOv2 per RoI, box position tokens, RoI aggregator, pooling, head.

``AttendModel.__call__(crops, positions)`` takes ready RoI crops, as the reference does;
``AttendModel.from_images`` crops them on the accelerator from prepared breast images and boxes.
Both return ``(logits, aux)``; aux holds the RoI embeddings (``roi_embeddings``, after the
aggregator), the backbone's CLS per RoI (``roi_features``), the pooled vector (``pooled``) and
each aggregator block's attention (``attention``, a tuple of (B, L, L)); with a contrastive
head, also the projections of the pooled vector and of each RoI (``projection``,
``roi_projection``).

Train/eval behaviour (dropout, BatchNorm statistics) follows ``model.train()`` / ``model.eval()``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from attend_jax.models import roi, vit
from attend_jax.models.aggregator import AggregatorBlock

POOLS = ("anchor", "avg", "attn", "cls")
POSITION_DIMS = 64  # Sine embedding dims per box coordinate; 4 coordinates.


@dataclasses.dataclass(frozen=True)
class AttendConfig:
  vit: vit.ViTConfig = dataclasses.field(default_factory=lambda: vit.config_for("vitb14"))
  num_blocks: int = 3
  dropout: float = 0.25
  pool: str = "anchor"
  pool_attn_block: int = 3  # 1-based, as the reference's pool_attn_block.
  num_classes: int = 1  # 1: one sigmoid logit; 2: softmax over {no cancer, cancer}.
  roi_size: int = 448
  head_hidden: int = 256
  contrastive_dim: int = 0  # > 0 adds the projection head that the contrastive loss uses.
  # How RoIs are cut from the breast image (roi.CROPS): "dense", float32 at HIGHEST (the
  # reference's numbers), or "bf16": bfloat16 operands, float32 sums.
  crop: str = "dense"

  @property
  def width(self) -> int:
    """Token width: the backbone's CLS plus the projected box embedding (768 + 256 = 1024)."""
    return self.vit.width + 4 * POSITION_DIMS


class AttendModel(nnx.Module):

  def __init__(self, cfg: AttendConfig, *, rngs: nnx.Rngs):
    if cfg.pool not in POOLS:
      raise ValueError(f"pool must be one of {POOLS}, got {cfg.pool!r}.")
    if cfg.crop not in roi.CROPS:
      raise ValueError(f"model.crop must be one of {tuple(roi.CROPS)}, got {cfg.crop!r}.")
    if cfg.num_classes not in (1, 2):
      raise ValueError(f"num_classes must be 1 (sigmoid) or 2 (softmax), got {cfg.num_classes}.")
    if not 1 <= cfg.pool_attn_block <= cfg.num_blocks:
      raise ValueError(f"pool_attn_block {cfg.pool_attn_block} is not in 1..{cfg.num_blocks}.")
    self.cfg = cfg
    width, pos = cfg.width, 4 * POSITION_DIMS
    self.vision_model = vit.DinoV2(cfg.vit, rngs=rngs)
    self.fc_positions = nnx.Linear(pos, pos, rngs=rngs)
    self.blocks = nnx.List([AggregatorBlock(width, cfg.dropout, rngs=rngs)
                            for _ in range(cfg.num_blocks)])
    if cfg.pool == "cls":
      self.cls_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, width)))
    else:
      self.cls_token = None
    self.bn_vision = nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
    self.fc1 = nnx.Linear(width, cfg.head_hidden, rngs=rngs)
    self.fc2 = nnx.Linear(cfg.head_hidden, cfg.num_classes, rngs=rngs)
    if cfg.contrastive_dim:
      self.projection = nnx.Sequential(nnx.Linear(width, width, rngs=rngs), jax.nn.relu,
                                       nnx.Linear(width, cfg.contrastive_dim, rngs=rngs))
    else:
      self.projection = None

  def __call__(self, crops: jax.Array, positions: jax.Array):
    """crops (B, K, S, S, 3) ImageNet-normalised; positions (B, K, 4) normalised boxes."""
    b, k = crops.shape[:2]
    features, _ = self.vision_model(crops.reshape(b * k, *crops.shape[2:]))
    features = features.reshape(b, k, -1).astype(jnp.float32)
    pos = self.fc_positions(roi.sine_embedding(positions))
    x = jnp.concatenate([features, pos], axis=-1)
    if self.cls_token is not None:  # Appended last, so RoI indices (and RoPE) are unchanged.
      x = jnp.concatenate([x, jnp.broadcast_to(self.cls_token[...], (b, 1, x.shape[-1]))], 1)
    attention = []
    for block in self.blocks:
      x, probs = block(x)
      attention.append(probs)
    rois = x[:, :k]
    pool = self.cfg.pool
    if pool == "anchor":
      pooled = rois[:, 0]
    elif pool == "avg":
      pooled = rois.mean(axis=1)
    elif pool == "attn":
      weights = attention[self.cfg.pool_attn_block - 1][:, 0, :k]
      pooled = jnp.einsum("bk,bke->be", weights, rois)
    else:
      pooled = x[:, k]
    h = self.dropout(self.bn_vision(pooled))
    logits = self.fc2(jax.nn.relu(self.fc1(h)))
    if self.cfg.num_classes == 1:
      logits = logits[:, 0]
    aux = {"roi_embeddings": rois, "roi_features": features, "pooled": pooled,
           "attention": tuple(attention)}
    if self.projection is not None:
      unit = lambda t: t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
      aux["projection"] = self.projection(unit(pooled))
      aux["roi_projection"] = self.projection(unit(rois))
    return logits, aux

  def crops_from_images(self, images: jax.Array, image_hw: jax.Array, boxes: jax.Array):
    """Grey (B, H, W) images in [0, 1] and (B, K, 4) ``cx cy w h`` boxes -> model inputs."""
    size = self.cfg.roi_size
    crop = roi.CROPS[self.cfg.crop]
    crops = jax.vmap(lambda im, hw, bx: crop(im, hw, bx, size))(images, image_hw, boxes)
    return roi.normalize_rois(crops), roi.box_positions(boxes, image_hw[:, None, :])

  def from_images(self, images: jax.Array, image_hw: jax.Array, boxes: jax.Array):
    crops, positions = self.crops_from_images(images, image_hw, boxes)
    return self(crops, positions)
