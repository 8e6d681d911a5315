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

CROP_PADDING = 20.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def square_crop(boxes: jax.Array, padding: float = CROP_PADDING) -> tuple[jax.Array, jax.Array,
                                                                            jax.Array]:
  """(…, 4) ``cx cy w h`` -> (x0, y0, size): Python ``int()`` truncation, as the reference."""
  side = jnp.maximum(boxes[..., 2], boxes[..., 3])
  x0 = jnp.trunc(boxes[..., 0] - side / 2 - padding)
  y0 = jnp.trunc(boxes[..., 1] - side / 2 - padding)
  size = jnp.trunc(side + 2 * padding)
  return x0, y0, jnp.maximum(size, 1.0)


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
  first = jnp.floor(center - support)
  taps = first[:, None] + jnp.arange(num_taps, dtype=jnp.float32)[None, :]  # Crop coordinates.
  w = jnp.maximum(0.0, 1.0 - jnp.abs(taps + 0.5 - center[:, None]) / support)
  w = jnp.where((taps >= 0) & (taps < size), w, 0.0)
  w = w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-12)
  pixel = (taps + start).astype(jnp.int32)
  w = jnp.where((pixel >= 0) & (pixel < extent), w, 0.0)
  one_hot = pixel[:, :, None] == jnp.arange(in_size)[None, None, :]
  return jnp.sum(jnp.where(one_hot, w[:, :, None], 0.0), axis=1)


def crop_rois(image: jax.Array, image_hw: jax.Array, boxes: jax.Array, out_size: int,
              padding: float = CROP_PADDING) -> jax.Array:
  """RoI crops of one image.

  Args:
    image: (H, W) float grey levels in [0, 1]; pixels beyond ``image_hw`` are ignored.
    image_hw: (2,) the real height and width inside the padded buffer.
    boxes: (K, 4) ``cx cy w h`` in image pixels.
    out_size: S, the side of each crop.

  Returns:
    (K, S, S) float32 crops.
  """
  h, w = image.shape
  x0, y0, size = square_crop(boxes.astype(jnp.float32), padding)
  # Static tap count: a crop is at most the padded image plus its padding on each side.
  max_size = max(h, w) + 2 * padding
  size = jnp.minimum(size, max_size)
  num_taps = int(math.ceil(2 * max(1.0, max_size / out_size))) + 2
  rows = jax.vmap(lambda s, n: _axis_weights(s, n, image_hw[0], out_size, h, num_taps))(y0, size)
  cols = jax.vmap(lambda s, n: _axis_weights(s, n, image_hw[1], out_size, w, num_taps))(x0, size)
  hi = jax.lax.Precision.HIGHEST
  tmp = jnp.einsum("kyh,hw->kyw", rows, image.astype(jnp.float32), precision=hi)
  return jnp.einsum("kyw,kxw->kyx", tmp, cols, precision=hi)


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


PROPOSAL_SOURCES = ("files", "grid", "breast_only")


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
              topk: int, grid: int = 2) -> jax.Array:
  """(B, topk, 4) RoIs: the breast anchor first, then ``topk - 1`` proposals.

  ``files``: the stored detector proposals in score order; where an image has fewer valid ones
  they are cycled, and with none at all the anchor repeats. ``grid``: ``grid`` x ``grid``
  tiles. ``breast_only``: the anchor alone (topk must be 1).
  """
  anchor = anchor_boxes(image_hw)[:, None]
  if source == "breast_only":
    if topk != 1:
      raise ValueError("proposals.source='breast_only' needs proposals.topk=1.")
    return anchor
  if source == "grid":
    tiles = grid_boxes(image_hw, grid)
    if tiles.shape[1] != topk - 1:
      raise ValueError(f"proposals.source='grid' with grid={grid} gives {grid * grid} tiles;"
                       f" set proposals.topk={grid * grid + 1}.")
    return jnp.concatenate([anchor, tiles], axis=1)
  if source != "files":
    raise ValueError(f"proposals.source must be one of {PROPOSAL_SOURCES}, got {source!r}.")
  need = topk - 1
  count = jnp.sum(proposal_mask, axis=1)  # Valid proposals come first (prepare sorts them).
  idx = jnp.arange(need)[None, :] % jnp.maximum(count, 1)[:, None]
  picked = jnp.take_along_axis(proposals[..., :4], idx[..., None], axis=1)
  picked = jnp.where((count > 0)[:, None, None], picked, anchor)
  return jnp.concatenate([anchor, picked], axis=1)


def lesion_hits(rois: jax.Array, lesion_boxes: jax.Array, lesion_mask: jax.Array,
                min_coverage: float = 0.5) -> jax.Array:
  """(B, K) True where a RoI covers at least ``min_coverage`` of some lesion's area.

  Coverage of the lesion rather than IoU, because a RoI is often much larger than the small
  lesion it contains. ``rois`` are ``cx cy w h``, ``lesion_boxes`` ``x0 y0 x1 y1``.
  """
  r0 = rois[..., :2] - rois[..., 2:4] / 2
  r1 = rois[..., :2] + rois[..., 2:4] / 2
  l0, l1 = lesion_boxes[..., :2], lesion_boxes[..., 2:4]
  lo = jnp.maximum(r0[:, :, None], l0[:, None])
  hi = jnp.minimum(r1[:, :, None], l1[:, None])
  inter = jnp.prod(jnp.clip(hi - lo, 0, None), axis=-1)
  area = jnp.prod(jnp.clip(l1 - l0, 0, None), axis=-1)[:, None]
  coverage = inter / jnp.maximum(area, 1e-6)
  return jnp.any((coverage >= min_coverage) & lesion_mask[:, None], axis=-1)
