"""The breast box by both rules, and the orientation flip."""

import cv2
import numpy as np
import pytest

from attend_jax import box_ops
from attend_jax.data import breast
from attend_jax.errors import BreastNotFoundError


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


# ---------------------------------------------------------------------------------------------
# The reference rule: the authors' crop, checked against their arithmetic written out here.


def _authors_crop(pixels, p=breast.PADDING):
  """The authors' crop, line by line: 8 bits, > 1, largest external contour, padded rect."""
  img8 = (pixels.astype(np.uint32) * 255 // 65535).astype(np.uint8)
  _, mask = cv2.threshold(img8, 1, 255, cv2.THRESH_BINARY)
  contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
  x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
  x = max(0, x - p)
  y = max(0, y - p)
  w = w + 2 * p
  h = h + 2 * p
  return pixels[y:y + h, x:x + w], (x, y)


def _assert_reference_parity(pixels):
  box = breast.find_breast(pixels, rule="reference")
  crop, corner = _authors_crop(pixels)
  ours = pixels[box.y0:box.y1, box.x0:box.x1]
  assert ours.shape == crop.shape and (box.x0, box.y0) == corner
  np.testing.assert_array_equal(ours, crop)
  return box


def _ellipse(h, w, cy, cx, ry, rx, value=30000):
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.zeros((h, w), np.uint16)
  img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = value
  return img


def _bbox(mask):
  ys, xs = np.nonzero(mask)
  return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_reference_near_edge_clipped_far_edge_moves_out_twice():
  img = _ellipse(200, 160, cy=0, cx=0, ry=70, rx=50)  # A quarter ellipse in the top-left corner.
  box = _assert_reference_parity(img)
  x0, y0, x1, y1 = _bbox(img > 0)
  assert (box.x0, box.y0) == (0, 0)
  # The size still grows by 2p, so the far edges move out by 2p, not p as the robust rule does.
  assert (box.x1, box.y1) == (x1 + 2 * breast.PADDING, y1 + 2 * breast.PADDING)
  robust = breast.find_breast(img)
  assert (robust.x1, robust.y1) == (x1 + breast.PADDING, y1 + breast.PADDING)


def test_reference_blob_in_the_middle_and_at_the_far_edges():
  img = _ellipse(200, 160, cy=100, cx=80, ry=40, rx=30)
  box = _assert_reference_parity(img)
  x0, y0, x1, y1 = _bbox(img > 0)
  p = breast.PADDING
  assert (box.x0, box.y0, box.x1, box.y1) == (x0 - p, y0 - p, x1 + p, y1 + p)
  corner = _ellipse(200, 160, cy=199, cx=159, ry=40, rx=30)  # Far edges clipped by slicing.
  box = _assert_reference_parity(corner)
  assert (box.x1, box.y1) == (160, 200)


def test_reference_largest_contour_wins():
  img = _ellipse(300, 240, cy=80, cx=70, ry=50, rx=40)
  img |= _ellipse(300, 240, cy=230, cx=170, ry=30, rx=25)
  box = _assert_reference_parity(img)
  x0, y0, x1, y1 = _bbox(_ellipse(300, 240, cy=80, cx=70, ry=50, rx=40) > 0)
  assert (box.x0, box.y0) == (x0 - breast.PADDING, y0 - breast.PADDING)


def test_reference_ranks_by_contour_area_not_by_pixels():
  img = np.zeros((300, 300), np.uint16)
  img[20:120, 20:120] = 30000
  img[24:116, 24:116] = 0  # A hollow square: a large contour around few pixels.
  img[170:250, 170:250] = 30000  # A solid square: more pixels, a smaller contour.
  assert (img[20:120, 20:120] > 0).sum() < (img[170:250, 170:250] > 0).sum()
  box = _assert_reference_parity(img)
  assert (box.x0, box.y0) == (20 - breast.PADDING, 20 - breast.PADDING)
  # The robust rule's opening removes the thin ring: the solid block is the breast.
  robust = breast.find_breast(img)
  assert (robust.x0, robust.y0) == (170 - breast.PADDING, 170 - breast.PADDING)


def test_reference_keeps_faint_tissue_the_old_threshold_dropped():
  img = _ellipse(200, 160, cy=100, cx=80, ry=40, rx=30)
  faint = _ellipse(200, 160, cy=100, cx=80, ry=60, rx=50) > 0
  img[faint & (img == 0)] = 5 * 257  # 5 in 8 bits: above the reference's 1, below the old 10.
  assert (img.astype(np.uint32) * 255 // 65535).max() > 10
  box = _assert_reference_parity(img)
  x0, y0, x1, y1 = _bbox(faint)
  p = breast.PADDING
  assert (box.x0, box.y0, box.x1, box.y1) == (x0 - p, y0 - p, x1 + p, y1 + p)
  old = _bbox(breast.foreground(img))  # The old fixed threshold, > 10.
  assert old == _bbox(img > 5 * 257) and old[0] > x0


def test_reference_black_image_is_a_typed_error():
  with pytest.raises(BreastNotFoundError, match="no breast found") as e:
    breast.find_breast(np.zeros((50, 40), np.uint16), "scan.dcm", rule="reference")
  assert e.value.path == "scan.dcm"
  # 1 in 8 bits is not tissue for the reference either.
  with pytest.raises(BreastNotFoundError):
    breast.find_breast(np.full((50, 40), 257, np.uint16), rule="reference")


def test_unknown_rule_names_the_choices():
  with pytest.raises(ValueError, match="robust.*reference"):
    breast.find_breast(_image(), rule="largest")


# ---------------------------------------------------------------------------------------------
# The robust rule on what digitised films carry.


def _film_like(rng, h=400, w=300):
  """A half-ellipse breast at the left edge on film fog with grain."""
  img = 0.05 + 0.005 * rng.standard_normal((h, w))
  yy, xx = np.mgrid[0:h, 0:w]
  tissue = ((yy - h / 2) / (0.38 * h)) ** 2 + (xx / (0.55 * w)) ** 2 < 1
  img[tissue] += 0.35
  return img, tissue


def _u16(img):
  return np.rint(np.clip(img, 0, 1) * 65535).astype(np.uint16)


def _padded(box):
  x0, y0, x1, y1 = box
  p = breast.PADDING
  return x0 - p, y0 - p, x1 + p, y1 + p


def _clip(box, shape):
  x0, y0, x1, y1 = box
  return max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)


def _tuple(box):
  return box.x0, box.y0, box.x1, box.y1


def _assert_near(box, expected, tol=1):
  """The opening rounds the corner where an outline meets the image edge by about a pixel."""
  assert np.abs(np.subtract(_tuple(box), expected)).max() <= tol, (box, expected)


def test_robust_film_edges_touching_the_breast_do_not_stretch_the_box():
  img, tissue = _film_like(np.random.default_rng(0))
  img[:8, :] = 0.9  # Film edges along the top and the chest wall, touching the breast,
  img[:, :6] = 0.9
  img[:, -7:] = 0.95  # and one on the far side.
  pixels = _u16(img)
  x0, y0, x1, y1 = _bbox(tissue)
  box = breast.find_breast(pixels)
  assert abs(box.y0 - (y0 - breast.PADDING)) <= 1 and abs(box.y1 - (y1 + breast.PADDING)) <= 1
  assert box.x0 == 0 and abs(box.x1 - (x1 + breast.PADDING)) <= 1
  # Every fixed threshold joins the edges to the breast: the reference takes the whole film.
  assert _tuple(breast.find_breast(pixels, rule="reference")) == (0, 0, 300, 400)


def test_robust_leaves_labels_and_markers_out():
  img, tissue = _film_like(np.random.default_rng(1))
  img[30:60, 230:236] = img[54:60, 230:250] = 1.0  # An "L".
  img[30:60, 256:262] = img[30:36, 256:276] = img[54:60, 256:276] = 1.0  # A "C".
  img[340:352, 250:262] = 0.9  # A marker.
  box = breast.find_breast(_u16(img))
  assert _tuple(box) == _clip(_padded(_bbox(tissue)), img.shape)
  assert box.x1 < 230


def test_robust_scanner_bands_stay_background():
  img, tissue = _film_like(np.random.default_rng(2))
  for y in (40, 150, 260, 380):
    img[y:y + 6] += 0.03  # Faint stripes across the whole film, breast included.
  pixels = _u16(img)
  assert breast.foreground(pixels).mean() > 0.9  # The old fixed threshold takes fog and bands.
  assert _tuple(breast.find_breast(pixels)) == _clip(_padded(_bbox(tissue)), img.shape)


def test_robust_prefers_the_large_component_at_the_chest_wall():
  h, w = 300, 400
  img = _ellipse(h, w, cy=150, cx=0, ry=110, rx=90)  # The breast, at the left edge.
  decoy = _ellipse(h, w, cy=150, cx=200, ry=95, rx=60)  # Larger, but off the chest wall.
  assert (decoy > 0).sum() > (img > 0).sum()
  img |= decoy
  img[:, 105:110] = 0  # Keep the two apart.
  _assert_near(breast.find_breast(img), _clip(_padded(_bbox(img[:, :105] > 0)), img.shape))
  assert breast.find_breast(img[:, ::-1]).x1 == w  # Mirrored: the chest wall is on the right.


def test_robust_small_images():
  img = _ellipse(60, 40, cy=30, cx=0, ry=20, rx=15)
  x0, y0, x1, y1 = _bbox(img > 0)
  assert _tuple(breast.find_breast(img, padding=2)) == (0, y0 - 2, x1 + 2, y1 + 2)
