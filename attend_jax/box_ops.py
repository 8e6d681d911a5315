"""Boxes in one place: the two formats, areas, IoU and GIoU, flips, greedy NMS, the square crop.

Two formats travel through the code:

- ``xyxy``: ``x0 y0 x1 y1``, for lesions, detections and every metric;
- ``cxcywh``: ``cx cy w h`` (a fifth column, a score, may follow and is ignored), for proposal
  files and RoIs, as the reference writes them.

Each function takes numpy or jax arrays and answers in the same kind, so the host (prepare, the
pipeline, metrics) and the accelerator (RoIs, the detector, losses) share one definition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CROP_PADDING = 20  # The reference grows each square RoI by this many pixels on every side.


def _xp(*arrays):
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def to_xyxy(b):
  """(…, >=4) ``cx cy w h [score]`` -> (…, 4) ``x0 y0 x1 y1``."""
  xp = _xp(b)
  b = xp.asarray(b)
  return xp.concatenate([b[..., :2] - b[..., 2:4] / 2, b[..., :2] + b[..., 2:4] / 2], axis=-1)


def to_cxcywh(b):
  """(…, 4) ``x0 y0 x1 y1`` -> (…, 4) ``cx cy w h``."""
  xp = _xp(b)
  b = xp.asarray(b)
  return xp.concatenate([(b[..., :2] + b[..., 2:4]) / 2, b[..., 2:4] - b[..., :2]], axis=-1)


def area(b):
  """(…, 4) ``xyxy`` -> (…,) areas, 0 for inverted boxes."""
  xp = _xp(b)
  return xp.clip(b[..., 2] - b[..., 0], 0, None) * xp.clip(b[..., 3] - b[..., 1], 0, None)


def pairwise_intersection(a, b):
  """(…, N, 4) and (…, M, 4) ``xyxy`` -> (…, N, M) intersection areas."""
  xp = _xp(a, b)
  w = (xp.minimum(a[..., :, None, 2], b[..., None, :, 2])
       - xp.maximum(a[..., :, None, 0], b[..., None, :, 0]))
  h = (xp.minimum(a[..., :, None, 3], b[..., None, :, 3])
       - xp.maximum(a[..., :, None, 1], b[..., None, :, 1]))
  return xp.clip(w, 0, None) * xp.clip(h, 0, None)


def pairwise_iou(a, b, fmt: str = "xyxy"):
  """(…, N, 4+) and (…, M, 4+) boxes -> (…, N, M) IoU in [0, 1]; 0 where the union is empty.

  The union is ``area(a) + area(b) - intersection`` in that order, as COCO's ``bbIou`` sums it,
  so IoUs of integer boxes are bit for bit COCOeval's. With ``fmt="cxcywh"`` areas are
  ``w * h``, as the reference's proposal NMS computes them.
  """
  if fmt not in ("xyxy", "cxcywh"):
    raise ValueError(f"fmt must be 'xyxy' or 'cxcywh', got {fmt!r}.")
  xp = _xp(a, b)
  if fmt == "cxcywh":
    if xp is np:  # float64, as the reference's arithmetic is checked against it.
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    area_a, area_b = a[..., 2] * a[..., 3], b[..., 2] * b[..., 3]
    a, b = to_xyxy(a), to_xyxy(b)
  else:
    a, b = a[..., :4], b[..., :4]
    area_a, area_b = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]),
                      (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))
  inter = pairwise_intersection(a, b)
  union = area_a[..., :, None] + area_b[..., None, :] - inter
  nonempty = union > 0
  if xp is np:
    with np.errstate(divide="ignore", invalid="ignore"):
      iou = np.where(nonempty, inter / union, 0.0)
  else:  # A safe denominator keeps gradients finite where the union is empty.
    iou = jnp.where(nonempty, inter / jnp.where(nonempty, union, 1.0), 0.0)
  return xp.clip(iou, 0.0, 1.0)


def giou(a, b):
  """Generalised IoU of matching ``xyxy`` boxes (…, 4), in [-1, 1]."""
  xp = _xp(a, b)
  lo = xp.maximum(a[..., :2], b[..., :2])
  hi = xp.minimum(a[..., 2:], b[..., 2:])
  inter = xp.prod(xp.clip(hi - lo, 0, None), axis=-1)
  union = area(a) + area(b) - inter
  iou = inter / xp.maximum(union, 1e-9)
  hull = xp.prod(xp.maximum(a[..., 2:], b[..., 2:]) - xp.minimum(a[..., :2], b[..., :2]), -1)
  return iou - (hull - union) / xp.maximum(hull, 1e-9)


def flip(b, size, axis: int = 1):
  """Mirrors ``xyxy`` boxes along x (``axis=1``) or y (``axis=0``) of an image ``size`` long.

  Float boxes keep their dtype; integers and lists become float64.
  """
  xp = _xp(b)
  b = xp.asarray(b)
  if not xp.issubdtype(b.dtype, xp.floating):
    b = b.astype(xp.float64 if xp is np else xp.float32)
  lo, hi = (b[..., 0], b[..., 2]) if axis == 1 else (b[..., 1], b[..., 3])
  if axis == 1:
    return xp.stack([size - hi, b[..., 1], size - lo, b[..., 3]], axis=-1)
  return xp.stack([b[..., 0], size - hi, b[..., 2], size - lo], axis=-1)


def greedy_nms(boxes: np.ndarray, k: int, iou_threshold: float = 0.5, num_forced: int = 0,
               fmt: str = "cxcywh") -> np.ndarray:
  """Indices of at most ``k`` boxes kept by greedy NMS in the given (priority) order, on the host.

  A box is dropped when its IoU with an already kept box is above ``iou_threshold``; selection
  stops at ``k`` kept boxes (the reference's rule). The first ``num_forced`` are always kept.
  """
  if len(boxes) == 0 or k <= 0:
    return np.zeros((0,), np.int64)
  iou = pairwise_iou(boxes, boxes, fmt)
  keep = list(range(min(num_forced, k)))
  for i in range(num_forced, len(boxes)):
    if len(keep) >= k:
      break
    if not keep or iou[i, keep].max() <= iou_threshold:
      keep.append(i)
  return np.asarray(keep, np.int64)


def nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: float,
        max_out: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Greedy NMS of one image's ``xyxy`` boxes on device, static shapes: (max_out, 4) boxes,
  scores and validity.

  ``boxes`` (N, 4) must be in descending score order. Box i is kept unless a kept box before it
  overlaps it by more than ``iou_threshold`` (``greedy_nms``'s rule). The keep vector is the
  fixed point of that rule, reached by iterating it from "keep every valid box": after t rounds
  the first t entries are final, and in practice a handful of rounds settle all of them.
  """
  n = boxes.shape[0]
  suppresses = (pairwise_iou(boxes, boxes) > iou_threshold) & jnp.triu(jnp.ones((n, n), bool), 1)

  def body(state):
    keep, _ = state
    new = valid & ~jnp.any(suppresses & keep[:, None], axis=0)
    return new, jnp.any(new != keep)

  keep, _ = jax.lax.while_loop(lambda s: s[1], body, (valid, jnp.array(True)))
  order = jnp.argsort(~keep, stable=True)[:max_out]  # Kept boxes first, in score order.
  return boxes[order], jnp.where(keep[order], scores[order], 0.0), keep[order]


def square_crop(b, padding: float = CROP_PADDING):
  """(…, >=4) ``cx cy w h`` -> (x0, y0, size) of the reference's square crop.

  side = max(w, h); the corner is ``int(c - side / 2 - padding)`` and the size
  ``int(side + 2 * padding)``, with Python ``int()`` truncating toward zero, not flooring.
  """
  xp = _xp(b)
  side = xp.maximum(b[..., 2], b[..., 3])
  x0 = xp.trunc(b[..., 0] - side / 2 - padding)
  y0 = xp.trunc(b[..., 1] - side / 2 - padding)
  size = xp.trunc(side + 2 * padding)
  return x0, y0, xp.maximum(size, 1.0)
