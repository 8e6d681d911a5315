"""A stand-in for the lesion detector: proposals around the true lesions, and false positives."""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from attend_jax.data.synthetic.base import SEED_TAG


def simulate_detector(lesion_boxes: Sequence[Sequence[float]], width: int, height: int,
                      laterality: str, *, count: int = 6, key: str = "") -> np.ndarray:
  """(count, 5) proposals ``x0 y0 x1 y1 score`` in original pixels, seeded by ``key``.

  What a lesion detector gives the classifier, until one is trained: every lesion box, shifted
  and rescaled a little, with a high score, then false positives in the breast, with lower
  scores, up to ``count`` boxes. False positives have the lesions' size range and every image
  gets the same number of boxes, so neither count nor size gives the label away: the
  classifier has to look at the pixels.
  """
  rng = np.random.default_rng([SEED_TAG, 4, zlib.crc32(key.encode())])
  boxes = []
  for x0, y0, x1, y1 in list(lesion_boxes)[:count]:
    side = np.array([x1 - x0, y1 - y0], np.float64) * rng.uniform(0.9, 1.3)
    centre = np.array([x0 + x1, y0 + y1], np.float64) / 2 + rng.normal(0, 0.1, 2) * side
    boxes.append([*(centre - side / 2), *(centre + side / 2), rng.uniform(0.45, 0.95)])
  for _ in range(count - len(boxes)):
    side = height * rng.uniform(0.04, 0.11) * np.array([1.0, rng.uniform(0.8, 1.25)])
    # Glandular tissue: away from the chest wall and the skin, where detectors misfire.
    cx, cy = width * rng.uniform(0.08, 0.55), height * rng.uniform(0.25, 0.75)
    if laterality == "L":
      cx = width - cx
    boxes.append([cx - side[0] / 2, cy - side[1] / 2, cx + side[0] / 2, cy + side[1] / 2,
                  rng.uniform(0.05, 0.75)])
  out = np.array(boxes, np.float64).reshape(-1, 5)
  out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
  out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
  return out[np.argsort(-out[:, 4], kind="stable")]
