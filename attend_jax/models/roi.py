"""On-device RoI crops and box position embeddings, with the reference's exact semantics.

The reference crops each RoI on the host, every epoch: a square of side ``max(w, h)`` grown by
20 px, zero where it leaves the image, resized to 448 x 448 with antialiased bilinear
(torchvision ``Resize(antialias=True)``), repeated to 3 channels and ImageNet-normalised.

Here the crop and the resize are one linear map per axis. For each RoI we build the (S, H)
row-weight and (S, W) column-weight matrices of torch's antialiased bilinear filter over the
square crop, with rows and columns outside the image contributing zeros (they are zero pixels
of the crop, so they still count in the normalisation). The RoI is then ``Wy @ image @ Wx.T``:
static shapes, batched over RoIs and images, jit-compiled, no host work per RoI.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from attend_jax import box_ops

CROP_PADDING = float(box_ops.CROP_PADDING)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _axis_weights(start: jax.Array, size: jax.Array, extent: jax.Array, out_size: int,
                  in_size: int, num_taps: int) -> jax.Array:
  """(out_size, in_size) antialiased-bilinear weights from image pixels to one crop axis.

  ``start`` and ``size`` place the crop on this axis; ``extent`` is the image's real length.
  Like torch, each output pixel's triangle taps are normalised over the crop's pixels; taps
  outside the image are zeros of the crop, so they count in the sum but carry no pixel.
  """
  scale = size / out_size  # Crop pixels per output pixel.
  support = jnp.maximum(scale, 1.0)  # The triangle widens when downsampling (antialias).
  center = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale  # In crop coordinates.

  def triangle(t):  # t: integer crop coordinates; zero outside the crop.
    w = jnp.maximum(0.0, 1.0 - jnp.abs(t + 0.5 - center[:, None]) / support)
    return jnp.where((t >= 0) & (t < size), w, 0.0)

  # The normalisation sums over the crop's pixels, in or out of the image: a few taps each.
  taps = jnp.floor(center - support)[:, None] + jnp.arange(num_taps, dtype=jnp.float32)[None]
  norm = jnp.maximum(jnp.sum(triangle(taps), axis=1, keepdims=True), 1e-12)
  # The weights themselves, densely over the image's pixels (``start`` is a whole number):
  # (out_size, in_size) floats, not a one-hot over taps, so memory stays small at 4096 px.
  pixel = jnp.arange(in_size, dtype=jnp.float32)[None, :]
  w = triangle(pixel - start) / norm
  return jnp.where(pixel < extent, w, 0.0)


def crop_rois(image: jax.Array, image_hw: jax.Array, boxes: jax.Array, out_size: int,
              padding: float = CROP_PADDING, dtype=None) -> jax.Array:
  """RoI crops of one image.

  Args:
    image: (H, W) float grey levels in [0, 1]; pixels beyond ``image_hw`` are ignored.
    image_hw: (2,) the real height and width inside the padded buffer.
    boxes: (K, 4) ``cx cy w h`` in image pixels.
    out_size: S, the side of each crop.
    dtype: None computes in float32 at HIGHEST precision (the reference's numbers); bfloat16
      takes bfloat16 operands and accumulates in float32 (``crop_rois_bf16``).

  Returns:
    (K, S, S) float32 crops.
  """
  h, w = image.shape
  x0, y0, size = box_ops.square_crop(boxes.astype(jnp.float32), padding)
  # Static tap count: a crop is at most the padded image plus its padding on each side.
  max_size = max(h, w) + 2 * padding
  size = jnp.minimum(size, max_size)
  num_taps = int(math.ceil(2 * max(1.0, max_size / out_size))) + 2
  rows = jax.vmap(lambda s, n: _axis_weights(s, n, image_hw[0], out_size, h, num_taps))(y0, size)
  cols = jax.vmap(lambda s, n: _axis_weights(s, n, image_hw[1], out_size, w, num_taps))(x0, size)
  if dtype is None:
    hi = jax.lax.Precision.HIGHEST
    tmp = jnp.einsum("kyh,hw->kyw", rows, image.astype(jnp.float32), precision=hi)
    return jnp.einsum("kyw,kxw->kyx", tmp, cols, precision=hi)
  f32 = jnp.float32
  tmp = jnp.einsum("kyh,hw->kyw", rows.astype(dtype), image.astype(dtype),
                   preferred_element_type=f32)
  return jnp.einsum("kyw,kxw->kyx", tmp.astype(dtype), cols.astype(dtype),
                    preferred_element_type=f32)


def crop_rois_bf16(image: jax.Array, image_hw: jax.Array, boxes: jax.Array, out_size: int,
                   padding: float = CROP_PADDING) -> jax.Array:
  """``crop_rois`` with bfloat16 operands and float32 accumulation: one pass of an accelerator's
  16-bit matmul units instead of float32 at HIGHEST (six bf16 passes on a TPU), for models that
  compute in bfloat16 anyway. Crops are within 1e-2 of the float32 ones (pixels in [0, 1]: about
  one bfloat16 step near 1, as the ViT's own cast of them).

  At 2048 px and five 448 px RoIs a crop is 23 GFLOP; XLA's cost analysis also priced a banded
  form (only the taps each pixel reads: 0.14 GFLOP but 4.6x the bytes, 603 MB, as gathers): at
  the chips' rooflines this one is the cheapest, 0.04 ms on an H100 and 0.16 ms on a v5e against
  0.18 / 0.74 ms banded and 0.34 / 0.7 ms at float32 HIGHEST.
  """
  return crop_rois(image, image_hw, boxes, out_size, padding, dtype=jnp.bfloat16)


CROPS = {"dense": crop_rois, "bf16": crop_rois_bf16}


def normalize_rois(crops: jax.Array) -> jax.Array:
  """(…, S, S) grey crops in [0, 1] -> (…, S, S, 3) ImageNet-normalised, channels last."""
  mean = jnp.asarray(IMAGENET_MEAN, crops.dtype)
  std = jnp.asarray(IMAGENET_STD, crops.dtype)
  return (crops[..., None] - mean) / std


def box_positions(boxes: jax.Array, image_hw: jax.Array) -> jax.Array:
  """(…, 4) ``cx cy w h`` -> (cx/W, cy/H, side/W, side/H); the crop padding is not included."""
  hw = image_hw.astype(jnp.float32)  # (..., 2), broadcastable against boxes[..., 0].
  h, w = hw[..., 0], hw[..., 1]
  side = jnp.maximum(boxes[..., 2], boxes[..., 3])
  return jnp.stack([boxes[..., 0] / w, boxes[..., 1] / h, side / w, side / h], axis=-1)


def sine_embedding(positions: jax.Array, dims: int = 64, temperature: float = 10000.0
                   ) -> jax.Array:
  """DAB-DETR sine embedding of (…, 4) positions -> (…, 4 * dims), in (y, x, w, h) order.

  Per coordinate: ``p = c * 2π / 10000 ** (2 * (i // 2) / dims)``, then the interleave
  ``[sin p0, cos p1, sin p2, cos p3, …]``.
  """
  i = jnp.arange(dims, dtype=jnp.float32)
  dim_t = temperature ** (2 * (i // 2) / dims)
  p = positions[..., None].astype(jnp.float32) * (2 * math.pi) / dim_t  # (…, 4, dims)
  even = jnp.arange(dims) % 2 == 0
  emb = jnp.where(even, jnp.sin(p), jnp.cos(p))
  x, y, w, h = emb[..., 0, :], emb[..., 1, :], emb[..., 2, :], emb[..., 3, :]
  return jnp.concatenate([y, x, w, h], axis=-1)


# "detector" boxes are put into the batch's proposals on device (the run's proposal step,
# attend_jax.run.load_proposal_step) and are then taken like "files".
PROPOSAL_SOURCES = ("files", "detector", "grid", "breast_only")


def anchor_boxes(image_hw: jax.Array) -> jax.Array:
  """(B, 4) ``cx cy w h`` covering each stored breast crop: the RoI anchor."""
  hw = image_hw.astype(jnp.float32)
  return jnp.stack([hw[:, 1] / 2, hw[:, 0] / 2, hw[:, 1], hw[:, 0]], axis=-1)


def grid_boxes(image_hw: jax.Array, grid: int) -> jax.Array:
  """(B, grid * grid, 4) tiles of the breast crop, row-major: proposals without a detector."""
  hw = image_hw.astype(jnp.float32)
  centers = (jnp.arange(grid, dtype=jnp.float32) + 0.5) / grid
  cy, cx = jnp.meshgrid(centers, centers, indexing="ij")
  h, w = hw[:, 0, None], hw[:, 1, None]
  return jnp.stack([cx.ravel()[None] * w, cy.ravel()[None] * h,
                    jnp.broadcast_to(w / grid, (hw.shape[0], grid * grid)),
                    jnp.broadcast_to(h / grid, (hw.shape[0], grid * grid))], axis=-1)


def make_rois(image_hw: jax.Array, proposals: jax.Array, proposal_mask: jax.Array, source: str,
              topk: int, grid: int = 2, anchor: bool = True, with_index: bool = False):
  """(B, topk, 4) RoIs ``cx cy w h``; with ``with_index`` also (B, topk) int32, the proposal
  each RoI was taken from (-1 for the anchor, tiles and the whole-image stand-in).

  ``files``: the stored detector proposals in score order; where an image has fewer valid ones
  they are cycled, and with none at all the whole image stands in. ``grid``: ``grid`` x
  ``grid`` tiles. ``breast_only``: the whole breast crop alone (topk must be 1). With
  ``anchor`` the breast crop is RoI 0 and ``topk - 1`` RoIs follow; without it (``files``
  only) the ``topk`` proposals are taken as they are, as the reference does, whose first box
  is usually the whole breast.
  """
  whole = anchor_boxes(image_hw)[:, None]
  none = jnp.full((image_hw.shape[0], topk), -1, jnp.int32)
  out = lambda rois, index: (rois, index) if with_index else rois  # noqa: E731
  if source == "breast_only":
    if topk != 1:
      raise ValueError("proposals.source='breast_only' needs proposals.topk=1.")
    return out(whole, none)
  if source == "grid":
    tiles = grid_boxes(image_hw, grid)
    if tiles.shape[1] != topk - 1 or not anchor:
      raise ValueError(f"proposals.source='grid' with grid={grid} gives {grid * grid} tiles"
                       f" after the breast anchor; set proposals.topk={grid * grid + 1} and"
                       " proposals.anchor=True.")
    return out(jnp.concatenate([whole, tiles], axis=1), none)
  if source not in ("files", "detector"):
    raise ValueError(f"proposals.source must be one of {PROPOSAL_SOURCES}, got {source!r}.")
  need = topk - 1 if anchor else topk
  if proposals.shape[1] < need:
    raise ValueError(f"{need} proposals are needed per image but the batch holds"
                     f" {proposals.shape[1]}.")
  count = jnp.sum(proposal_mask, axis=1)  # Valid proposals come first (prepare sorts them).
  idx = jnp.arange(need)[None, :] % jnp.maximum(count, 1)[:, None]
  picked = jnp.take_along_axis(proposals[..., :4], idx[..., None], axis=1)
  picked = jnp.where((count > 0)[:, None, None], picked, whole)
  idx = jnp.where((count > 0)[:, None], idx, -1).astype(jnp.int32)
  if anchor:
    return out(jnp.concatenate([whole, picked], axis=1),
               jnp.concatenate([none[:, :1], idx], axis=1))
  return out(picked, idx)


def lesion_iou(rois: jax.Array, lesion_boxes: jax.Array, lesion_mask: jax.Array) -> jax.Array:
  """(B, K) each RoI's best IoU with a lesion of its image (0 without lesions).

  ``rois`` are ``cx cy w h``, ``lesion_boxes`` ``x0 y0 x1 y1``, ``lesion_mask`` (B, L).
  """
  iou = box_ops.pairwise_iou(box_ops.to_xyxy(rois), lesion_boxes)
  return jnp.max(jnp.where(lesion_mask[:, None], iou, 0.0), axis=-1, initial=0.0)


def lesion_hits(rois: jax.Array, lesion_boxes: jax.Array, lesion_mask: jax.Array,
                min_coverage: float = 0.5, min_iou: float = 0.0) -> jax.Array:
  """(B, K) True where a RoI hits a known lesion.

  By default a hit covers at least ``min_coverage`` of some lesion's area: coverage of the
  lesion rather than IoU, because a RoI is often much larger than the small lesion it
  contains. With ``min_iou > 0`` a hit is an IoU of at least ``min_iou`` instead, the rule of
  detection metrics. On a cancer image the RoIs that miss every lesion, above all a detector's
  confident false positives, are the hard negatives of the contrastive loss.
  ``rois`` are ``cx cy w h``, ``lesion_boxes`` ``x0 y0 x1 y1``.
  """
  if min_iou > 0:
    return lesion_iou(rois, lesion_boxes, lesion_mask) >= min_iou
  inter = box_ops.pairwise_intersection(box_ops.to_xyxy(rois), lesion_boxes)
  coverage = inter / jnp.maximum(box_ops.area(lesion_boxes)[:, None], 1e-6)
  return jnp.any((coverage >= min_coverage) & lesion_mask[:, None], axis=-1)
