"""The breast region: a padded box around the breast, two rules to find it; optional flip.

The box is the RoI "anchor" (box 0) and the crop that training stores. ``find_breast`` has two
rules (``RULES``):

- ``"robust"`` (the default): the breast alone, also on digitised films (DDSM, CBIS-DDSM). Those
  carry bright film-edge strips along one to three sides, burned-in labels ("LCC", "RMLO"),
  markers and faint scanner bands; a fixed low threshold joins them to the breast, and the crop
  becomes the whole film, or the full film height when a strip touches the breast. So, on a copy
  downsampled to at most ``work_size`` px: the tissue level comes from the histogram (a
  three-class Otsu split into background with bands, tissue, and what is brighter: strips,
  labels; see ``_tissue_level``); an opening whose radius scales with the image removes what is
  thin (strips, text, bands); the breast is the largest remaining component, and among
  components of comparable size the one touching the chest-wall edge. Its box is then refined
  at full resolution within two coarse pixels of it, so the skin line is kept.
- ``"reference"``: the authors' crop, exactly, for parity with their proposal files and their
  checkpoint: 8 bits, value > 1, OpenCV's largest external contour by area, its bounding rect
  grown by 15 px with their arithmetic (see ``_reference_box``). At full resolution.
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np

from attend_jax.errors import BreastNotFoundError

RULES = ("robust", "reference")
PADDING = 15
THRESHOLD_8BIT = 10  # Air is ~0 after VOI and min-max scaling; skin and tissue are well above.
REFERENCE_THRESHOLD_8BIT = 1  # The reference keeps 8-bit values > 1.
# Opening radius as a fraction of the image's short side: strips up to 5 % of it thick, text and
# bands go; a breast is far thicker.
OPENING_FRACTION = 0.025
_REFINE_MARGIN = 2  # Coarse pixels around the breast searched at full resolution.


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
                padding: int = PADDING, work_size: int = 512, *,
                rule: str = "robust") -> BreastBox:
  """The breast's box grown by ``padding`` (clipped to the image), by ``rule`` (see the module).

  ``pixels`` are uint16 on the full 0..65535 scale, dense tissue bright. ``work_size`` bounds the
  robust rule's search copy; the reference rule works at full resolution. BreastNotFoundError
  names ``path`` when there is no breast.
  """
  if rule not in RULES:
    raise ValueError(f"unknown breast-crop rule {rule!r}; choose one of {RULES}")
  if pixels.ndim != 2 or pixels.dtype != np.uint16:
    raise TypeError(f"{path}: find_breast takes 2-D uint16 pixels, got {pixels.dtype}"
                    f" {pixels.shape}")
  if rule == "reference":
    return _reference_box(pixels, path, padding)
  return _robust_box(pixels, path, padding, work_size)


def _reference_box(pixels: np.ndarray, path, padding: int) -> BreastBox:
  """The reference's arithmetic: the far edge moves out by 2p where the near one was clipped."""
  mask = foreground(pixels, REFERENCE_THRESHOLD_8BIT).astype(np.uint8)
  contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
  if not contours:
    raise BreastNotFoundError(path, "no breast found: every pixel is at or below"
                              f" {REFERENCE_THRESHOLD_8BIT}/255 (reference rule)")
  x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
  x, y = max(0, x - padding), max(0, y - padding)
  w, h = w + 2 * padding, h + 2 * padding
  # The reference crops img[y:y + h, x:x + w]; slicing clips the far edges.
  return BreastBox(x, y, min(pixels.shape[1], x + w), min(pixels.shape[0], y + h))


def _three_class_otsu(hist: np.ndarray) -> tuple[int, int]:
  """The two thresholds that split ``hist`` best into three classes (Otsu): the last bins of
  the darker two classes.

  Where empty bins make several lower thresholds equally good, it returns the middle one, so a
  clean gap between air and tissue is split in two.
  """
  # Integer sums, so that an empty class is exactly empty.
  count = np.cumsum(hist.astype(np.int64))
  moment = np.cumsum(hist.astype(np.int64) * np.arange(hist.size))
  n = hist.size
  classes = ((count[:, None], moment[:, None]),
             (count[None, :] - count[:, None], moment[None, :] - moment[:, None]),
             (count[-1] - count[None, :], moment[-1] - moment[None, :]))
  spread = np.zeros((n, n))
  for c, m in classes:
    c, m = np.broadcast_to(c, (n, n)), np.broadcast_to(m, (n, n)).astype(np.float64)
    filled = c > 0
    spread[filled] += m[filled] ** 2 / c[filled]
  spread[np.tril_indices(n)] = -1.0  # The thresholds must satisfy t1 < t2.
  _, t2 = np.unravel_index(np.argmax(spread), spread.shape)
  best = np.flatnonzero(spread[:, t2] == spread.max())
  return int(best[(best.size - 1) // 2]), int(t2)


def _tissue_level(pixels: np.ndarray) -> int | None:
  """The uint16 value from which a pixel counts as tissue; None for a black image.

  The background ends at the lower three-class Otsu threshold: the classes are air, tissue and
  what is brighter (film edges, labels, muscle). Without a bright third class the split can
  fall inside the background, between fog and scanner bands, two classes far closer to each
  other than to the tissue; then the upper threshold is the tissue's. The level is halfway
  between the background's mean and that threshold: the threshold alone falls inside dim fat,
  and the skin line would be lost.
  """
  hist = np.bincount((pixels >> 8).ravel(), minlength=256)
  if not hist[1:].any():
    return None
  bins = np.arange(hist.size)

  def mean(lo, hi):
    return np.average(bins[lo:hi], weights=hist[lo:hi]) if hist[lo:hi].any() else None

  t1, t2 = _three_class_otsu(hist)
  means = mean(0, t1 + 1), mean(t1 + 1, t2 + 1), mean(t2 + 1, hist.size)
  t = t1
  if None not in means and means[1] - means[0] < (means[2] - means[1]) / 4:
    t = t2
  return round((mean(0, t + 1) + t + 1) / 2 * 256)


def _full_span(lo: int, hi: int, step: int, coarse: int, full: int) -> tuple[int, int]:
  """Coarse pixels [lo, hi) in full-resolution pixels; the last one takes the cut-off rest."""
  return lo * step, full if hi == coarse else hi * step


def _robust_box(pixels: np.ndarray, path, padding: int, work_size: int) -> BreastBox:
  h, w = pixels.shape
  step = max(1, -(-max(h, w) // work_size))
  small = pixels
  if step > 1:  # Block means: grain averages out, unlike in a strided copy.
    small = cv2.resize(np.ascontiguousarray(pixels), (w // step, h // step),
                       interpolation=cv2.INTER_AREA)
  level = _tissue_level(small)
  if level is None:
    raise BreastNotFoundError(path, "no breast found: the image is black (no pixel reaches"
                              " 1/256 of the full scale)")
  r = max(1, round(OPENING_FRACTION * min(h, w) / step))
  disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
  # Outside the image counts as background, so a strip along the border goes as a free one.
  mask = cv2.morphologyEx((small >= level).astype(np.uint8), cv2.MORPH_OPEN, disc,
                          borderType=cv2.BORDER_CONSTANT, borderValue=0)
  count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
  if count < 2:
    raise BreastNotFoundError(path, "no breast found: nothing but thin structures (film edges,"
                              " labels, bands) is brighter than the background")
  hs, ws = mask.shape
  areas = stats[1:, cv2.CC_STAT_AREA]
  left, top, width, height = (stats[1:, k] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP,
                                                     cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
  chest_left = mask[:, :ws // 2].sum() >= mask[:, ws - ws // 2:].sum()
  at_chest_wall = left == 0 if chest_left else left + width == ws
  # A film edge can survive the opening where it is thick; the breast holds the chest wall.
  candidates = (areas >= 0.5 * areas.max()) & at_chest_wall
  if not candidates.any():
    candidates = areas == areas.max()
  best = int(np.argmax(np.where(candidates, areas, -1)))

  m = _REFINE_MARGIN
  cx0, cy0 = max(0, left[best] - m), max(0, top[best] - m)
  cx1, cy1 = min(ws, left[best] + width[best] + m), min(hs, top[best] + height[best] + m)
  near = cv2.dilate((labels[cy0:cy1, cx0:cx1] == best + 1).astype(np.uint8),
                    np.ones((2 * m + 1, 2 * m + 1), np.uint8))
  fy0, fy1 = _full_span(cy0, cy1, step, hs, h)
  fx0, fx1 = _full_span(cx0, cx1, step, ws, w)
  near = np.repeat(np.repeat(near.astype(bool), step, axis=0), step, axis=1)
  near = np.pad(near, ((0, max(0, fy1 - fy0 - near.shape[0])),
                       (0, max(0, fx1 - fx0 - near.shape[1]))), mode="edge")
  fine = (pixels[fy0:fy1, fx0:fx1] >= level) & near[:fy1 - fy0, :fx1 - fx0]
  rows, cols = np.flatnonzero(fine.any(axis=1)), np.flatnonzero(fine.any(axis=0))
  return BreastBox(int(max(0, fx0 + cols[0] - padding)), int(max(0, fy0 + rows[0] - padding)),
                   int(min(w, fx0 + cols[-1] + 1 + padding)),
                   int(min(h, fy0 + rows[-1] + 1 + padding)))


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
