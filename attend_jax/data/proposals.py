"""Detector proposals: parse the reference's box files, greedy NMS, square boxes, positions.

A proposal file holds one box per line, ``cx cy w h score``, in pixels of the breast-cropped
image (the reference writes 900 per image, sorted by score). The classifier keeps ``k`` of them:

1. greedy NMS in score order: a box is dropped when its IoU with an already kept box is
   **greater than** 0.5, and selection stops at ``k`` kept boxes (the reference's rule);
2. short lists are padded. The reference pads with random picks among the kept boxes; we pad
   deterministically by cycling through them in score order, so the same file always gives the
   same RoIs. An empty list is padded with the whole image (score 0);
3. optionally the breast box from the mask becomes box 0, the anchor, and takes part in NMS
   as the first kept box.

Every box is then made square and padded for cropping (``square_crop_boxes``) and its position
normalised for the box embedding (``normalized_positions``).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from attend_jax.data.errors import ProposalError

IOU_THRESHOLD = 0.5
CROP_PADDING = 20  # Pixels added on every side of the square crop.


def proposal_path(proposal_root: str | os.PathLike, im_path: str) -> pathlib.Path:
  """The reference's naming: ``<root>/<im_path without .dicom>_preds.txt``."""
  stem = im_path[: -len(".dicom")] if im_path.endswith(".dicom") else os.path.splitext(im_path)[0]
  return pathlib.Path(proposal_root) / f"{stem}_preds.txt"


def read_proposals(path: str | os.PathLike) -> np.ndarray:
  """Reads a ``cx cy w h score`` file into a float32 (N, 5) array; raises ProposalError."""
  path = pathlib.Path(path)
  try:
    text = path.read_text()
  except FileNotFoundError as e:
    raise ProposalError(path, "no such proposal file") from e
  except (OSError, UnicodeDecodeError) as e:
    raise ProposalError(path, f"unreadable ({e})") from e
  rows = []
  for line_no, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split()
    if len(fields) != 5:
      raise ProposalError(path, f"line {line_no} has {len(fields)} values, expected 5 (cx cy w h score)")
    try:
      values = [float(v) for v in fields]
    except ValueError as e:
      raise ProposalError(path, f"line {line_no}: not a number ({e})") from e
    if not np.all(np.isfinite(values)):
      raise ProposalError(path, f"line {line_no} holds NaN or infinity: {line.strip()!r}")
    if values[2] < 0 or values[3] < 0:
      raise ProposalError(path, f"line {line_no} has a negative width or height")
    rows.append(values)
  if not rows:
    raise ProposalError(path, "is empty: no proposals")
  return np.asarray(rows, dtype=np.float32)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of (N, >=4) and (M, >=4) centre-format boxes, (N, M); 0 where the union is empty."""
  a = np.asarray(a, np.float64)[:, None, :4]
  b = np.asarray(b, np.float64)[None, :, :4]
  a_lo, a_hi = a[..., :2] - a[..., 2:4] / 2, a[..., :2] + a[..., 2:4] / 2
  b_lo, b_hi = b[..., :2] - b[..., 2:4] / 2, b[..., :2] + b[..., 2:4] / 2
  wh = np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None)
  inter = wh[..., 0] * wh[..., 1]
  union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, inter / union, 0.0)
  return np.clip(iou, 0.0, 1.0)


def greedy_nms(boxes: np.ndarray, k: int, iou_threshold: float = IOU_THRESHOLD,
               num_forced: int = 0) -> np.ndarray:
  """Indices of at most ``k`` boxes kept by greedy NMS in the given order.

  ``boxes`` must already be in priority order. The first ``num_forced`` are always kept (the
  breast anchor). One pass over the candidates, each checked against all kept boxes at once.
  """
  if len(boxes) == 0 or k <= 0:
    return np.zeros((0,), np.int64)
  iou = pairwise_iou(boxes, boxes)
  keep = list(range(min(num_forced, k)))
  for i in range(num_forced, len(boxes)):
    if len(keep) >= k:
      break
    if not keep or iou[i, keep].max() <= iou_threshold:
      keep.append(i)
  return np.asarray(keep, np.int64)


def select_proposals(boxes: np.ndarray, k: int, image_hw: tuple[int, int] | None = None,
                     anchor: np.ndarray | None = None,
                     iou_threshold: float = IOU_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
  """The ``k`` RoIs for one image: ((k, 5) boxes ``cx cy w h score``, (k,) bool ``is_real``).

  ``boxes`` are sorted by descending score (stable, so ties keep file order). ``anchor``
  (``cx cy w h``) is put first. Padding entries are marked ``is_real=False``; an image with
  no boxes at all is padded with its whole extent, which needs ``image_hw``.
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
  boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
  num_forced = 0
  if anchor is not None:
    anchor_row = np.concatenate([np.asarray(anchor, np.float32)[:4], [1.0]]).astype(np.float32)
    boxes = np.concatenate([anchor_row[None], boxes])
    num_forced = 1
  kept = boxes[greedy_nms(boxes, k, iou_threshold, num_forced)]
  is_real = np.zeros((k,), bool)
  is_real[: len(kept)] = True
  if len(kept) == 0:
    if image_hw is None:
      raise ValueError("No proposals and no image size to fall back on.")
    h, w = image_hw
    kept = np.array([[w / 2, h / 2, w, h, 0.0]], np.float32)
  if len(kept) < k:
    kept = kept[np.arange(k) % len(kept)]
  return kept, is_real


def square_crop_boxes(boxes: np.ndarray, padding: int = CROP_PADDING) -> np.ndarray:
  """(…, 4) integer ``x0 y0 size size`` crops: square on max(w, h), ``padding`` px each side.

  Python ``int()`` truncation toward zero, as the reference does, not floor.
  """
  boxes = np.asarray(boxes, np.float64)
  side = np.maximum(boxes[..., 2], boxes[..., 3])
  x0 = np.trunc(boxes[..., 0] - side / 2 - padding)
  y0 = np.trunc(boxes[..., 1] - side / 2 - padding)
  size = np.trunc(side + 2 * padding)
  return np.stack([x0, y0, size, size], axis=-1).astype(np.int64)


def normalized_positions(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
  """(…, 4) float32 ``(cx/W, cy/H, side/W, side/H)``; the crop padding is not included."""
  boxes = np.asarray(boxes, np.float64)
  h, w = image_hw
  side = np.maximum(boxes[..., 2], boxes[..., 3])
  return np.stack([boxes[..., 0] / w, boxes[..., 1] / h, side / w, side / h], -1).astype(np.float32)
