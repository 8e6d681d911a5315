"""attend_jax/box_ops.py: GIoU, pairwise IoU and box formats against hand values and a
plain-python IoU, and NMS against textbook greedy NMS."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attend_jax import box_ops


def test_giou_hand_values():
  a = jnp.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 4, 2]], jnp.float32)
  b = jnp.array([[0, 0, 2, 2], [2, 0, 3, 1], [1, 1, 3, 3], [2, 0, 6, 2]], jnp.float32)
  expected = [
      1.0,             # Identical.
      -1 / 3,          # Disjoint: IoU 0, union 2, hull (0, 0, 3, 1) of area 3: -(3 - 2) / 3.
      1 / 7 - 2 / 9,   # Overlap 1, union 4 + 4 - 1 = 7, hull 3 x 3 = 9.
      1 / 3,           # Overlap 2 x 2 = 4, union 12 = hull: the IoU.
  ]
  np.testing.assert_allclose(box_ops.giou(a, b), expected, rtol=1e-6)
  np.testing.assert_allclose(box_ops.giou(b, a), expected, rtol=1e-6)  # Symmetric.


def _iou(a, b):
  """Plain-python IoU of two ``x0 y0 x1 y1`` boxes."""
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _random_boxes(rng, shape, extent=60.0, sizes=(5.0, 30.0)):
  xy = rng.uniform(0, extent, shape + (2,))
  wh = rng.uniform(*sizes, shape + (2,))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def test_pairwise_iou_equals_reference():
  rng = np.random.default_rng(0)
  a, b = _random_boxes(rng, (2, 7)), _random_boxes(rng, (2, 5))
  b[0, 0] = a[0, 3]  # An identical pair: IoU 1.
  ours = np.asarray(box_ops.pairwise_iou(jnp.asarray(a), jnp.asarray(b)))
  assert ours.shape == (2, 7, 5)
  ref = np.array([[[_iou(p, q) for q in b[k]] for p in a[k]] for k in range(2)])
  assert (ref > 0).any() and (ref == 0).any()
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
  assert ours[0, 3, 0] == pytest.approx(1.0)


def test_xyxy_to_cxcywh():
  out = box_ops.to_cxcywh(jnp.array([[2.0, 4.0, 12.0, 10.0]]))
  np.testing.assert_allclose(out, [[7.0, 7.0, 10.0, 6.0]])


# ----------------------------------------------------------------------------------------------
# NMS.
# ----------------------------------------------------------------------------------------------


_nms = jax.jit(box_ops.nms, static_argnames=("iou_threshold", "max_out"))


def _greedy_nms(boxes, valid, threshold):
  """Indices kept by textbook greedy NMS of boxes in descending score order."""
  kept = []
  for i, box in enumerate(boxes):
    if valid[i] and all(_iou(box, boxes[j]) <= threshold for j in kept):
      kept.append(i)
  return kept


def _check_nms(boxes, scores, valid, threshold, max_out):
  out_boxes, out_scores, out_valid = map(np.asarray, _nms(
      jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), iou_threshold=threshold,
      max_out=max_out))
  assert out_boxes.shape == (max_out, 4) and out_scores.shape == out_valid.shape == (max_out,)
  kept = _greedy_nms(boxes, valid, threshold)[:max_out]
  k = len(kept)
  np.testing.assert_array_equal(out_boxes[:k], boxes[kept])
  np.testing.assert_array_equal(out_scores[:k], scores[kept])
  assert out_valid[:k].all() and not out_valid[k:].any()
  np.testing.assert_array_equal(out_scores[k:], 0.0)
  return kept


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_nms_equals_greedy_reference(seed, threshold):
  rng = np.random.default_rng(seed)
  n = 40
  boxes = _random_boxes(rng, (n,))
  scores = np.sort(rng.uniform(0.05, 1.0, n)).astype(np.float32)[::-1].copy()
  valid = rng.random(n) < 0.8
  kept = _check_nms(boxes, scores, valid, threshold, max_out=n)  # Room for every box: padding.
  assert 1 < len(kept) < valid.sum()  # Something was suppressed, something kept.
  assert all(valid[kept])
  _check_nms(boxes, scores, valid, threshold, max_out=5)  # Truncated to the best 5.


def test_nms_is_greedy_along_a_chain():
  # Each box overlaps the next by IoU 5 * 10 / (2 * 100 - 50) = 1/3 > 0.3 and none further
  # along. Greedy: 0 is kept and drops 1, so 2 (overlapping only the dropped 1) is kept, and so
  # on: 0, 2, 4, 6. Suppressing by every better box, kept or not, would keep only 0.
  boxes = np.array([[5 * i, 0, 5 * i + 10, 10] for i in range(8)], np.float32)
  scores = np.linspace(0.9, 0.2, 8).astype(np.float32)
  kept = _check_nms(boxes, scores, np.ones(8, bool), 0.3, max_out=6)
  assert kept == [0, 2, 4, 6]
  # The three-box version: A, B, C -> A and C.
  assert _check_nms(boxes[:3], scores[:3], np.ones(3, bool), 0.3, max_out=3) == [0, 2]


def test_nms_never_keeps_invalid_boxes():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  # The best box is invalid: it suppresses nothing, so its overlapping neighbour survives.
  assert _check_nms(boxes, scores, np.array([False, True, True]), 0.5, max_out=3) == [1, 2]
  assert _check_nms(boxes, scores, np.zeros(3, bool), 0.5, max_out=3) == []
