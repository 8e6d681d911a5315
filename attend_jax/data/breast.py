"""The breast region: threshold, largest connected component, padded box; optional flip.

The box is the RoI "anchor" (box 0) and the crop that training stores. It follows the
reference: the image is reduced to 8 bits, thresholded, and the bounding box of the largest
foreground region is grown by 15 px. The connected components come from
``scipy.ndimage.label`` on a copy downsampled to at most ``work_size`` px, which finds the
same region far faster on 3000 x 2400 images; the box is then refined at full resolution.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from scipy import ndimage

from attend_jax.data.errors import BreastNotFoundError

PADDING = 15
THRESHOLD_8BIT = 10  # Air is ~0 after VOI and min-max scaling; skin and tissue are well above.


@dataclasses.dataclass(frozen=True)
class BreastBox:
  """``x0, y0, x1, y1`` (exclusive ends) in the pixels given to ``find_breast``."""

  x0: int
  y0: int
  x1: int
  y1: int

  @property
  def width(self) -> int:
    return self.x1 - self.x0

  @property
  def height(self) -> int:
    return self.y1 - self.y0

  def center_format(self) -> np.ndarray:
    """``cx cy w h`` float32, the proposals' box format."""
    return np.array([(self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2, self.width, self.height],
                    np.float32)


def foreground(pixels: np.ndarray, threshold_8bit: int = THRESHOLD_8BIT) -> np.ndarray:
  """The reference's 8-bit reduction, then a fixed threshold."""
  return (pixels.astype(np.uint32) * 255 // 65535) > threshold_8bit


def find_breast(pixels: np.ndarray, path: str | os.PathLike = "<image>",
                padding: int = PADDING, work_size: int = 512,
                threshold_8bit: int = THRESHOLD_8BIT) -> BreastBox:
  """The padded box of the largest foreground component; BreastNotFoundError if there is none."""
  h, w = pixels.shape
  step = max(1, int(np.ceil(max(h, w) / work_size)))
  small = foreground(pixels[::step, ::step], threshold_8bit)
  labels, count = ndimage.label(small)
  if count == 0:
    raise BreastNotFoundError(path, "no breast found: every pixel is below the background"
                              f" threshold ({threshold_8bit}/255)")
  sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
  largest = int(np.argmax(sizes)) + 1
  ys, xs = ndimage.find_objects(labels)[largest - 1]
  # Back to full resolution: refine the edges inside the coarse box grown by one step.
  y0, y1 = max(0, (ys.start - 1) * step), min(h, (ys.stop + 1) * step)
  x0, x1 = max(0, (xs.start - 1) * step), min(w, (xs.stop + 1) * step)
  mask = foreground(pixels[y0:y1, x0:x1], threshold_8bit)
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  by0, by1 = y0 + rows[0], y0 + rows[-1] + 1
  bx0, bx1 = x0 + cols[0], x0 + cols[-1] + 1
  return BreastBox(int(max(0, bx0 - padding)), int(max(0, by0 - padding)),
                   int(min(w, bx1 + padding)), int(min(h, by1 + padding)))


def faces_left(pixels: np.ndarray, threshold_8bit: int = THRESHOLD_8BIT) -> bool:
  """True when the chest wall is on the right, i.e. most tissue lies in the right half."""
  mask = foreground(pixels[::4, ::4], threshold_8bit)
  half = mask.shape[1] // 2
  return mask[:, half:].sum() > mask[:, :half].sum()


def normalize_orientation(pixels: np.ndarray, threshold_8bit: int = THRESHOLD_8BIT
                          ) -> tuple[np.ndarray, bool]:
  """Flips so the chest wall is on the left in every image. Returns (pixels, flipped).

  Boxes found on the flipped image map back with ``box_ops.flip``.
  """
  if faces_left(pixels, threshold_8bit):
    return pixels[:, ::-1], True
  return pixels, False
