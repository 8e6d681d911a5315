"""Breast box from the largest component, and the orientation flip."""

import numpy as np
import pytest

from attend_jax import box_ops
from attend_jax.data import breast
from attend_jax.data.errors import BreastNotFoundError


def _image(h=600, w=400, chest_left=True):
  img = np.zeros((h, w), np.uint16)
  yy, xx = np.mgrid[0:h, 0:w]
  half = ((yy - 300) / 220.0) ** 2 + (xx / 250.0) ** 2 < 1  # Half-ellipse on the left edge.
  img[half] = 30000
  img[20:30, 350:380] = 65535  # A bright burned-in label, smaller than the breast.
  return img if chest_left else img[:, ::-1]


def test_largest_component_box_with_padding():
  box = breast.find_breast(_image())
  assert (box.x0, box.x1) == (0, 250 + breast.PADDING)
  assert abs(box.y0 - (300 - 220 + 1 - breast.PADDING)) <= 1
  assert abs(box.y1 - (300 + 220 + breast.PADDING)) <= 1


def test_box_is_the_same_at_full_resolution_and_with_downsampled_search():
  img = _image()
  assert breast.find_breast(img, work_size=10_000) == breast.find_breast(img, work_size=128)


def test_orientation_flip_and_unflip():
  right = _image(chest_left=False)
  flipped, did_flip = breast.normalize_orientation(right)
  assert did_flip
  assert breast.find_breast(flipped) == breast.find_breast(_image())
  box = breast.find_breast(flipped)
  back = box_ops.flip([box.x0, box.y0, box.x1, box.y1], right.shape[1])
  direct = breast.find_breast(right)
  np.testing.assert_array_equal(back, [direct.x0, direct.y0, direct.x1, direct.y1])
  _, did_flip = breast.normalize_orientation(_image())
  assert not did_flip


def test_black_image_is_a_typed_error():
  with pytest.raises(BreastNotFoundError, match="no breast found") as e:
    breast.find_breast(np.zeros((50, 40), np.uint16), "scan.dcm")
  assert e.value.path == "scan.dcm"
