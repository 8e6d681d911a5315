"""Where a stored image sits in its original DICOM, and boxes mapped between the two.

prepare crops the breast out of the DICOM, mirrors it so that the breast faces the same way
in every image (``flipped``), and downscales it (``scale`` stored pixels per original pixel).
Every record keeps those three facts (``crop_box``, ``flipped``, ``scale``), and a
``Placement`` made from them maps ``x0 y0 x1 y1`` boxes between four frames:

- original: pixels of the DICOM as read (what predict reports and a PACS viewer shows);
- crop: pixels of the breast crop at full resolution, unmirrored (the reference's proposal
  files, and tools/export_proposals.py's output);
- stored: pixels of the record's image (what the model sees);
- display: the stored image mirrored back to the DICOM's orientation (the overlays).

Boxes are host numpy, float64 out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from attend_jax import box_ops


@dataclasses.dataclass(frozen=True)
class Placement:
  crop_box: tuple[int, int, int, int]  # x0 y0 x1 y1 of the crop, in original pixels.
  flipped: bool  # The crop was mirrored left-right before scaling.
  scale: float  # Stored pixels per original pixel.

  def __post_init__(self):
    x0, y0, x1, y1 = (int(v) for v in self.crop_box)
    if x1 <= x0 or y1 <= y0 or not self.scale > 0:
      raise ValueError(f"an empty crop box {self.crop_box} or a scale {self.scale} <= 0")
    object.__setattr__(self, "crop_box", (x0, y0, x1, y1))
    object.__setattr__(self, "flipped", bool(self.flipped))
    object.__setattr__(self, "scale", float(self.scale))

  @classmethod
  def of(cls, record: Mapping) -> Placement:
    """A record's (or a prepared example's) own placement."""
    return cls(tuple(np.asarray(record["crop_box"]).tolist()), bool(record["flipped"]),
               float(record["scale"]))

  @property
  def width(self) -> int:
    """The crop's width in original pixels."""
    return self.crop_box[2] - self.crop_box[0]

  @property
  def height(self) -> int:
    return self.crop_box[3] - self.crop_box[1]

  def _offset(self) -> np.ndarray:
    x0, y0 = self.crop_box[:2]
    return np.array([x0, y0, x0, y0], np.float64)

  def original_to_crop(self, boxes, clip: bool = True) -> np.ndarray:
    """Original -> crop pixels; ``clip`` cuts boxes to the crop (lesions beyond its edge)."""
    out = _boxes(boxes) - self._offset()
    if clip:
      out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, self.width)
      out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, self.height)
    return out

  def crop_to_original(self, boxes) -> np.ndarray:
    return _boxes(boxes) + self._offset()

  def crop_to_stored(self, boxes) -> np.ndarray:
    """Mirrored as the crop was (across its full-resolution width), then scaled."""
    out = _boxes(boxes)
    if self.flipped:
      out = box_ops.flip(out, self.width)
    return out * self.scale

  def stored_to_crop(self, boxes) -> np.ndarray:
    out = _boxes(boxes) / self.scale
    return box_ops.flip(out, self.width) if self.flipped else out

  def to_stored(self, boxes, clip: bool = True) -> np.ndarray:
    """Original -> stored pixels, clipped to the crop unless ``clip=False``."""
    return self.crop_to_stored(self.original_to_crop(boxes, clip))

  def to_original(self, boxes) -> np.ndarray:
    """Stored -> original pixels: the inverse of ``to_stored`` for boxes inside the crop."""
    return self.crop_to_original(self.stored_to_crop(boxes))

  def original_to_display(self, boxes) -> np.ndarray:
    """Original pixels -> the stored image mirrored back to the DICOM's orientation."""
    return self.original_to_crop(boxes, clip=False) * self.scale

  def display(self, image: np.ndarray) -> np.ndarray:
    """The stored image in the DICOM's orientation (the frame of ``original_to_display``)."""
    return image[:, ::-1] if self.flipped else image


def _boxes(boxes: np.ndarray | Sequence) -> np.ndarray:
  return np.array(boxes, np.float64).reshape(-1, 4)
