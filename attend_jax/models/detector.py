"""The RoI detector: a dense, anchor-free lesion detector on DINOv2 patch features, in Flax NNX.

The reference ran Grounding DINO offline; this detector trains in the same loop as the
classifier, on the lesion boxes the prepared records already hold (VinDr findings, CBIS-DDSM
ROI masks, the synthetic generator's lesions).

- **Input.** The padded (B, S, S) breast crops in [0, 1] are resized as a whole, with
  antialiasing, to ``input_size`` (518 px: 37 x 37 patches, DINOv2's own grid), so one scale
  ``input_size / S`` maps stored pixels to detector pixels.
- **Features.** The last ViT block's patch tokens form a (g, g, D) map; a ViTDet-style simple
  pyramid derives strides 7 (2x2 transposed conv), 14 (as is) and 28 (2x2 max pool) from it.
- **Head.** FCOS-style, shared over levels: a classification tower and a box tower of 3x3 conv,
  GroupNorm, ReLU, then one lesion logit and four box numbers per point. A point at ``p`` with
  stride ``s`` predicts the box centred at ``p + s * (dx, dy)`` of size ``s * exp(dw, dh)``
  (CenterNet / YOLOX style), so a point near a lesion smaller than the stride can still own it.
- **Targets.** Each lesion goes to the level whose stride best matches its size
  (``size ~ object_scale * stride``); on that level the points within ``center_radius`` strides
  of its centre (both axes) are positives. A point claimed by two lesions takes the smaller.
  Points over the zero padding beyond the breast crop are ignored.
- **Losses.** Sigmoid focal loss over all points, GIoU and L1 (in strides) on the positives,
  each normalised by the number of positives in the global batch.
- **Decoding.** Scores, the top ``pre_nms`` points, greedy NMS on device with static shapes,
  then the first ``max_detections`` boxes, in stored breast-crop pixels.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from attend_jax import box_ops
from attend_jax.models import roi, vit

_LEVEL_SCALE = {7: 2, 14: 1, 28: 2, 56: 4}  # Up-sampling (7) or pooling factor per stride.
STRIDES = tuple(_LEVEL_SCALE)


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  vit: vit.ViTConfig = dataclasses.field(default_factory=lambda: vit.config_for("vitb14"))
  input_size: int = 518  # Side of the detector's input, a multiple of the patch size 14.
  fpn_dim: int = 256
  head_convs: int = 2  # 3x3 conv + GroupNorm + ReLU layers in each tower.
  strides: tuple[int, ...] = (7, 14, 28)
  object_scale: float = 3.0  # A level's ideal lesion size, in strides.
  center_radius: float = 1.5  # Positives: points within this many strides of a lesion centre.
  prior_prob: float = 0.01  # Initial lesion probability of every point (focal-loss init).
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  giou_weight: float = 2.0
  l1_weight: float = 1.0
  pre_nms: int = 300  # Best-scoring points that enter NMS.
  nms_iou: float = 0.5  # A box overlapping a better one by more than this is dropped.
  max_detections: int = 100  # Static number of boxes per image after NMS.

  def __post_init__(self):
    if self.input_size % vit.PATCH_SIZE:
      raise ValueError(f"detector input_size {self.input_size} is not a multiple of the patch"
                       f" size {vit.PATCH_SIZE}.")
    bad = [s for s in self.strides if s not in _LEVEL_SCALE]
    if bad or not self.strides:
      raise ValueError(f"detector strides must be among {STRIDES}, got {self.strides}.")
    # A centre is at most half a stride from its nearest point on each axis, and positives are
    # strictly nearer than center_radius strides: 0.5 itself leaves border centres without one.
    if self.center_radius <= 0.5:
      raise ValueError("detector center_radius must be > 0.5 so every lesion has a positive"
                       f" point; got {self.center_radius}.")
    if self.max_detections > self.pre_nms:
      raise ValueError(f"max_detections ({self.max_detections}) exceeds pre_nms"
                       f" ({self.pre_nms}).")
    if self.pre_nms > self.num_points:
      raise ValueError(f"detector pre_nms ({self.pre_nms}) exceeds its {self.num_points} points"
                       f" at input_size {self.input_size} and strides {self.strides}: lower"
                       " pre_nms (and max_detections) or raise input_size.")

  @property
  def num_points(self) -> int:
    return sum(n * n for n in self.level_sizes())

  @property
  def grid(self) -> int:
    return self.input_size // vit.PATCH_SIZE

  def level_sizes(self) -> tuple[int, ...]:
    g = self.grid
    return tuple(2 * g if s == 7 else -(-g // _LEVEL_SCALE[s]) if s > 14 else g
                 for s in self.strides)


def points(cfg: DetectorConfig) -> tuple[jax.Array, jax.Array]:
  """(P, 2) point centres ``x y`` in input pixels and (P,) their strides, level after level,
  row-major within a level: the order of the head's outputs."""
  xy, strides = [], []
  for stride, n in zip(cfg.strides, cfg.level_sizes()):
    c = (jnp.arange(n, dtype=jnp.float32) + 0.5) * stride
    y, x = jnp.meshgrid(c, c, indexing="ij")
    xy.append(jnp.stack([x.ravel(), y.ravel()], axis=-1))
    strides.append(jnp.full((n * n,), float(stride), jnp.float32))
  return jnp.concatenate(xy), jnp.concatenate(strides)


# ----------------------------------------------------------------------------------------------
# Model.
# ----------------------------------------------------------------------------------------------


class PyramidLevel(nnx.Module):
  """One level of the simple feature pyramid, from the (B, g, g, D) last-block feature map."""

  def __init__(self, width: int, dim: int, stride: int, *, rngs: nnx.Rngs):
    self.stride = stride
    if stride == 7:
      self.up = nnx.ConvTranspose(width, width // 2, (2, 2), strides=(2, 2), rngs=rngs)
      self.up_norm = nnx.LayerNorm(width // 2, rngs=rngs)
      width //= 2
    else:
      self.up = self.up_norm = None
    self.lateral = nnx.Conv(width, dim, (1, 1), use_bias=False, rngs=rngs)
    self.lateral_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.output = nnx.Conv(dim, dim, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
    self.output_norm = nnx.LayerNorm(dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.up is not None:
      x = jax.nn.gelu(self.up_norm(self.up(x)), approximate=False)
    elif self.stride > 14:
      k = _LEVEL_SCALE[self.stride]
      x = nnx.max_pool(x, (k, k), strides=(k, k), padding="SAME")
    x = self.lateral_norm(self.lateral(x))
    return self.output_norm(self.output(x))


def _tower(dim: int, depth: int, rngs: nnx.Rngs) -> nnx.Sequential:
  layers = []
  for _ in range(depth):
    layers += [nnx.Conv(dim, dim, (3, 3), padding="SAME", rngs=rngs),
               nnx.GroupNorm(dim, num_groups=math.gcd(32, dim), rngs=rngs), jax.nn.relu]
  return nnx.Sequential(*layers)


class Detector(nnx.Module):
  """``__call__(images, image_hw)`` -> dense outputs (for the losses); ``detect`` -> boxes."""

  def __init__(self, cfg: DetectorConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.vision_model = vit.DinoV2(cfg.vit, rngs=rngs)
    self.levels = nnx.List([PyramidLevel(cfg.vit.width, cfg.fpn_dim, s, rngs=rngs)
                            for s in cfg.strides])
    self.cls_tower = _tower(cfg.fpn_dim, cfg.head_convs, rngs)
    self.box_tower = _tower(cfg.fpn_dim, cfg.head_convs, rngs)
    prior = -math.log((1 - cfg.prior_prob) / cfg.prior_prob)
    self.cls_logits = nnx.Conv(cfg.fpn_dim, 1, (3, 3), padding="SAME",
                               kernel_init=nnx.initializers.normal(0.01),
                               bias_init=nnx.initializers.constant(prior), rngs=rngs)
    # Boxes start centred on their point, object_scale strides wide.
    size = math.log(cfg.object_scale)
    self.box_pred = nnx.Conv(cfg.fpn_dim, 4, (3, 3), padding="SAME",
                             kernel_init=nnx.initializers.normal(0.01),
                             bias_init=lambda *_: jnp.array([0.0, 0.0, size, size]), rngs=rngs)

  def scale(self, image_size: int) -> float:
    """Detector pixels per stored pixel, for padded images of side ``image_size``."""
    return self.cfg.input_size / image_size

  def inputs(self, images: jax.Array) -> jax.Array:
    """(B, S, S) grey in [0, 1] -> (B, input, input, 3) ImageNet-normalised."""
    n = self.cfg.input_size
    resized = jax.image.resize(images.astype(jnp.float32), (images.shape[0], n, n), "linear",
                               antialias=True)
    return roi.normalize_rois(resized)

  def __call__(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
    """Dense outputs over the P points of every level.

    Returns ``logits`` (B, P), ``boxes`` (B, P, 4) ``x0 y0 x1 y1`` in detector input pixels,
    ``point_valid`` (B, P) (the point lies on the breast crop, not the padding), ``points``
    (P, 2) and ``strides`` (P,).
    """
    cfg = self.cfg
    b, g = images.shape[0], cfg.grid
    _, aux = self.vision_model(self.inputs(images))
    fmap = aux["patch_tokens"].astype(jnp.float32).reshape(b, g, g, -1)
    logits, deltas = [], []
    for level in self.levels:
      f = level(fmap)
      logits.append(self.cls_logits(self.cls_tower(f)).reshape(b, -1))
      deltas.append(self.box_pred(self.box_tower(f)).reshape(b, -1, 4))
    logits, deltas = jnp.concatenate(logits, 1), jnp.concatenate(deltas, 1)
    xy, strides = points(cfg)
    s = strides[None, :, None]
    centre = xy[None] + deltas[..., :2] * s
    # Clipped before exp: a box at most a few times the input, never inf.
    half = jnp.exp(jnp.clip(deltas[..., 2:], -6.0, math.log(4 * cfg.input_size / 7))) * s / 2
    boxes = jnp.concatenate([centre - half, centre + half], axis=-1)
    extent = image_hw.astype(jnp.float32)[:, ::-1] * self.scale(images.shape[-1])  # (B, 2) w h
    point_valid = jnp.all(xy[None] < extent[:, None], axis=-1)
    return {"logits": logits, "boxes": boxes, "point_valid": point_valid, "points": xy,
            "strides": strides}

  def detect(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
    """``boxes`` (B, N, 4) ``x0 y0 x1 y1`` in stored breast-crop pixels, ``scores`` (B, N) and
    ``valid`` (B, N), best first, N = ``max_detections``."""
    return decode(self(images, image_hw), image_hw, self.scale(images.shape[-1]), self.cfg)


def decode(out: dict, image_hw: jax.Array, scale: float, cfg: DetectorConfig) -> dict:
  scores = jnp.where(out["point_valid"], jax.nn.sigmoid(out["logits"]), -1.0)
  top, idx = jax.lax.top_k(scores, cfg.pre_nms)
  boxes = jnp.take_along_axis(out["boxes"], idx[..., None], axis=1) / scale
  hw = image_hw.astype(jnp.float32)
  limit = jnp.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], -1)[:, None]
  boxes = jnp.clip(boxes, 0.0, limit)
  valid = (top >= 0) & (box_ops.area(boxes) > 0)
  boxes, top, valid = jax.vmap(
      lambda b, s, v: box_ops.nms(b, s, v, cfg.nms_iou, cfg.max_detections))(boxes, top, valid)
  return {"boxes": boxes, "scores": top, "valid": valid}


def as_proposals(det: dict) -> tuple[jax.Array, jax.Array]:
  """Detections -> the pipeline's proposals: (B, N, 5) ``cx cy w h score`` and (B, N) mask."""
  props = jnp.concatenate([box_ops.to_cxcywh(det["boxes"]), det["scores"][..., None]], axis=-1)
  return props, det["valid"]


# ----------------------------------------------------------------------------------------------
# Targets and losses.
# ----------------------------------------------------------------------------------------------


def assign_targets(xy: jax.Array, strides: jax.Array, point_valid: jax.Array,
                   lesions: jax.Array, lesion_mask: jax.Array, cfg: DetectorConfig
                   ) -> tuple[jax.Array, jax.Array]:
  """Which points are positives, and the lesion box each must predict.

  Args:
    xy: (P, 2) point centres and strides (P,), as from ``points``.
    point_valid: (B, P).
    lesions: (B, L, 4) ``x0 y0 x1 y1`` in detector input pixels; lesion_mask (B, L).

  Returns:
    (B, P) positives and (B, P, 4) their target boxes (zeros at negatives).
  """
  level_strides = jnp.asarray(cfg.strides, jnp.float32)
  size = jnp.sqrt(jnp.maximum(box_ops.area(lesions), 1e-6))  # (B, L)
  ideal = cfg.object_scale * level_strides
  best = level_strides[jnp.argmin(jnp.abs(jnp.log2(size[..., None] / ideal)), axis=-1)]  # (B, L)
  centre = (lesions[..., :2] + lesions[..., 2:]) / 2  # (B, L, 2)
  near = jnp.all(jnp.abs(xy[None, :, None] - centre[:, None]) <
                 cfg.center_radius * strides[None, :, None, None], axis=-1)  # (B, P, L)
  claims = (near & (strides[None, :, None] == best[:, None]) & lesion_mask[:, None]
            & point_valid[..., None])
  area = jnp.where(claims, box_ops.area(lesions)[:, None], jnp.inf)
  owner = jnp.argmin(area, axis=-1)  # (B, P): the smallest claiming lesion.
  positive = jnp.any(claims, axis=-1)
  target = jnp.take_along_axis(lesions, owner[..., None], axis=1)
  return positive, jnp.where(positive[..., None], target, 0.0)


def losses(out: dict, lesion_boxes: jax.Array, lesion_mask: jax.Array, scale: float,
           cfg: DetectorConfig) -> dict[str, jax.Array]:
  """Focal, GIoU and L1 terms and their weighted ``loss``; lesion boxes in stored pixels."""
  positive, target = assign_targets(out["points"], out["strides"], out["point_valid"],
                                    lesion_boxes * scale, lesion_mask, cfg)
  num_pos = jnp.maximum(jnp.sum(positive), 1.0)
  focal = optax.sigmoid_focal_loss(out["logits"], positive.astype(jnp.float32),
                                   alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
  focal = jnp.sum(jnp.where(out["point_valid"], focal, 0.0)) / num_pos
  g = jnp.sum(jnp.where(positive, 1.0 - box_ops.giou(out["boxes"], target), 0.0)) / num_pos
  l1 = jnp.abs(out["boxes"] - target).mean(-1) / out["strides"][None]
  l1 = jnp.sum(jnp.where(positive, l1, 0.0)) / num_pos
  total = focal + cfg.giou_weight * g + cfg.l1_weight * l1
  return {"loss": total, "focal": focal, "giou": g, "l1": l1,
          "positives": jnp.sum(positive).astype(jnp.float32)}
