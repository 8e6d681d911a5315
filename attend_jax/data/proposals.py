"""Detector proposals: parse the reference's box files and keep the top ``k`` after greedy NMS.

A proposal file holds one box per line, ``cx cy w h score``, in pixels of the breast-cropped
image (the reference writes 900 per image, sorted by score). The classifier keeps ``k`` of them:

1. greedy NMS in score order: a box is dropped when its IoU with an already kept box is
   **greater than** 0.5, and selection stops at ``k`` kept boxes (the reference's rule);
2. short lists are padded. The reference pads with random picks among the kept boxes; we pad
   deterministically by cycling through them in score order, so the same file always gives the
   same RoIs. An empty list is padded with the whole image (score 0);
3. optionally the breast box from the mask becomes box 0, the anchor, and takes part in NMS
   as the first kept box.

The RoIs are then made square, padded and cropped on device (``attend_jax.models.roi``).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from attend_jax import box_ops, paths
from attend_jax.errors import ProposalError

IOU_THRESHOLD = 0.5


def proposal_path(proposal_root: str | os.PathLike, im_path: str) -> pathlib.PurePath:
  """The reference's naming: ``<root>/<im_path without .dicom>_preds.txt`` (``root`` may be a
  bucket)."""
  stem = im_path[: -len(".dicom")] if im_path.endswith(".dicom") else os.path.splitext(im_path)[0]
  return paths.as_given(proposal_root) / f"{stem}_preds.txt"


def read_proposals(path: str | os.PathLike) -> np.ndarray:
  """Reads a ``cx cy w h score`` file (local or on a bucket) into a float32 (N, 5) array; raises
  ProposalError."""
  path = paths.as_given(path)
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


def on_image(boxes: np.ndarray, image_hw: tuple[int, int], path: str | os.PathLike = ""
             ) -> tuple[np.ndarray, int]:
  """The ``cx cy w h score`` boxes that overlap the (H, W) image, and how many did not.

  A box wholly off the image would be cropped as zeros and reported as a RoI; ProposalError if
  none is left (the file is probably another image's, or in other pixels).
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
  h, w = image_hw
  xyxy = box_ops.to_xyxy(boxes)
  inside = (xyxy[:, 2] > 0) & (xyxy[:, 0] < w) & (xyxy[:, 3] > 0) & (xyxy[:, 1] < h)
  if len(boxes) and not inside.any():
    raise ProposalError(path, f"none of its {len(boxes)} boxes overlaps the image ({w} x {h} px"
                        " breast crop): are they another image's, or in other pixels?")
  return boxes[inside], int((~inside).sum())


EXTENT_TOLERANCE = 0.05  # Detectors' boxes may overhang their image a little, not by more.


def check_extent(boxes: np.ndarray, image_hw: tuple[int, int], path: str | os.PathLike = ""
                 ) -> None:
  """ProposalError if the boxes reach well beyond the (H, W) breast crop they must be in: the
  file was made on another crop (rule or resolution), and every RoI would be shifted."""
  if not len(boxes):
    return
  reach = box_ops.to_xyxy(np.asarray(boxes, np.float32).reshape(-1, 5))[:, 2:].max(axis=0)
  h, w = image_hw
  if reach[0] > w * (1 + EXTENT_TOLERANCE) or reach[1] > h * (1 + EXTENT_TOLERANCE):
    raise ProposalError(path, f"its boxes reach x = {reach[0]:.0f}, y = {reach[1]:.0f}, beyond"
                        f" the {w} x {h} px breast crop they must be in: the file was made on"
                        " another crop (the reference's proposals need --crop=reference at full"
                        " resolution, --long_side 0)")


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
  kept = boxes[box_ops.greedy_nms(boxes, k, iou_threshold, num_forced)]
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
