"""geometry.Placement: boxes between original, crop, stored and display pixels.

The oracle is the pixels themselves: a bright rectangle drawn in an "original" image is cropped,
mirrored and downscaled the way prepare does it, and found again in each frame.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attend_jax import geometry

_FACTORS = (1, 2, 4)  # Whole-number downscales: the block mean keeps edges on pixel lines.


@st.composite
def _scenes(draw):
  """(original image with one bright rectangle, its box, placement, factor)."""
  factor = draw(st.sampled_from(_FACTORS))
  cw, ch = (factor * draw(st.integers(4, 24)) for _ in range(2))
  x0, y0 = draw(st.integers(0, 30)), draw(st.integers(0, 30))
  bx0 = draw(st.integers(0, cw // factor - 1)) * factor
  by0 = draw(st.integers(0, ch // factor - 1)) * factor
  bx1 = bx0 + factor * draw(st.integers(1, (cw - bx0) // factor))
  by1 = by0 + factor * draw(st.integers(1, (ch - by0) // factor))
  image = np.zeros((y0 + ch + 7, x0 + cw + 5), np.float32)
  box = (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1)
  image[box[1]:box[3], box[0]:box[2]] = 1.0
  placement = geometry.Placement((x0, y0, x0 + cw, y0 + ch), draw(st.booleans()), 1 / factor)
  return image, np.array(box, np.float64), placement, factor


def _prepare(image, placement, factor):
  """What prepare does to the pixels: crop, mirror, downscale (here a block mean)."""
  x0, y0, x1, y1 = placement.crop_box
  crop = image[y0:y1, x0:x1]
  if placement.flipped:
    crop = crop[:, ::-1]
  h, w = crop.shape
  return crop.reshape(h // factor, factor, w // factor, factor).mean((1, 3))


def _bright_box(pixels):
  ys, xs = np.nonzero(pixels > 0.5)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


@settings(max_examples=60, deadline=None)
@given(_scenes())
def test_a_box_lands_where_its_pixels_land_and_comes_back(scene):
  image, box, placement, factor = scene
  stored = _prepare(image, placement, factor)
  np.testing.assert_allclose(placement.to_stored(box)[0], _bright_box(stored))
  np.testing.assert_allclose(placement.to_original(placement.to_stored(box))[0], box, atol=1e-9)
  # The display frame is the stored image mirrored back.
  np.testing.assert_allclose(placement.original_to_display(box)[0],
                             _bright_box(placement.display(stored)))
  # The crop frame: full resolution, unmirrored.
  crop = image[placement.crop_box[1]:placement.crop_box[3],
               placement.crop_box[0]:placement.crop_box[2]]
  np.testing.assert_allclose(placement.original_to_crop(box)[0], _bright_box(crop))
  np.testing.assert_allclose(placement.stored_to_crop(placement.to_stored(box))[0],
                             _bright_box(crop), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=4, max_size=4), st.booleans(),
       st.floats(0.05, 1.0), st.integers(0, 500), st.integers(0, 500))
def test_stored_to_original_and_back_is_the_identity(corners, flipped, scale, x0, y0):
  placement = geometry.Placement((x0, y0, x0 + 400, y0 + 300), flipped, scale)
  u0, u1 = sorted(corners[:2])
  v0, v1 = sorted(corners[2:])
  stored = np.array([[u0 * 400 * scale, v0 * 300 * scale, u1 * 400 * scale, v1 * 300 * scale]])
  back = placement.to_stored(placement.to_original(stored))
  np.testing.assert_allclose(back, stored, atol=1e-9 * 400)


def test_a_lesion_past_the_crop_is_clipped_to_it_unless_asked_not_to():
  placement = geometry.Placement((100, 50, 300, 250), False, 0.5)
  np.testing.assert_allclose(placement.to_stored([[80, 40, 150, 400]]), [[0, 0, 25, 100]])
  np.testing.assert_allclose(placement.to_stored([[80, 40, 150, 400]], clip=False),
                             [[-10, -5, 25, 175]])


def test_a_record_s_own_fields_make_its_placement_and_an_empty_crop_is_refused():
  record = {"crop_box": np.array([3, 4, 13, 24], np.int32), "flipped": np.bool_(True),
            "scale": np.float32(0.25)}
  placement = geometry.Placement.of(record)
  assert placement == geometry.Placement((3, 4, 13, 24), True, 0.25)
  assert (placement.width, placement.height) == (10, 20)
  with pytest.raises(ValueError, match="empty crop box"):
    geometry.Placement((5, 5, 5, 9), False, 1.0)
  with pytest.raises(ValueError, match="scale"):
    geometry.Placement((0, 0, 5, 9), False, 0.0)
