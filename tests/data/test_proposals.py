"""Proposal handling on the real Grounding-DINO files, against the reference's semantics."""


import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attend_jax import box_ops
from attend_jax.data import proposals as P
import helpers

SHARED = helpers.SHARED
FILES = sorted((SHARED / "proposals").glob("*/*_preds.txt"))


def _reference_iou(b1, b2):
  """The reference's calculate_iou, line by line in plain Python on float32 values."""
  x1, y1, w1, h1 = (np.float32(v) for v in b1[:4])
  x2, y2, w2, h2 = (np.float32(v) for v in b2[:4])
  x1 = x1 - w1 / 2
  y1 = y1 - h1 / 2
  x2 = x2 - w2 / 2
  y2 = y2 - h2 / 2
  xi, yi = max(x1, x2), max(y1, y2)
  wi = max(0, min(x1 + w1, x2 + w2) - xi)
  hi = max(0, min(y1 + h1, y2 + h2) - yi)
  inter = wi * hi
  denom = float(w1 * h1 + w2 * h2 - inter)
  if denom <= 0:
    return 0.0
  return float(min(max(inter / denom, 0.0), 1.0))


def _reference_nms(boxes, k, thr=0.5):
  """The reference's non_max_suppression: file order, drop if IoU > thr, stop at k."""
  selected = []
  for i in range(len(boxes)):
    if all(_reference_iou(boxes[i], boxes[j]) <= thr for j in selected):
      selected.append(i)
    if len(selected) >= k:
      break
  return boxes[selected]


@helpers.needs_shared
def test_every_real_file_reads_as_its_900_score_sorted_boxes_of_a_test_image():
  """What the tests below stand on: the shared folder holds the proposals of 128 images of the
  reference's test split, and read_proposals gives each file's 900 rows as they are written."""
  test_images = {row.split(",")[0].removesuffix(".dicom")
                 for row in (SHARED / "test.csv").read_text().splitlines()[1:]}
  named = {f"{f.parent.name}/{f.name.removesuffix('_preds.txt')}" for f in FILES}
  assert len(named) == 128 and named <= test_images, sorted(named - test_images)[:3]
  for path in FILES:
    boxes = P.read_proposals(path)
    assert boxes.shape == (900, 5), path
    np.testing.assert_array_equal(boxes, np.loadtxt(path, dtype=np.float32), err_msg=str(path))
    assert (np.diff(boxes[:, 4]) <= 0).all(), path  # So file order is the reference's order.


@helpers.needs_shared
@pytest.mark.parametrize("k", [5, 10])
def test_kept_boxes_equal_the_reference_on_every_real_file(k):
  for path in FILES:
    boxes = np.loadtxt(path, dtype=np.float32)
    expected = _reference_nms(boxes, k)
    kept, is_real = P.select_proposals(P.read_proposals(path), k)
    assert is_real.all(), path
    np.testing.assert_array_equal(kept, expected, err_msg=str(path))


@helpers.needs_shared
def test_fewer_than_k_survive_on_real_files():
  # NMS at IoU 0.5 leaves 236-371 of each file's 900 boxes, so k=400 is always short.
  k = 400
  for path in FILES[::16]:
    boxes = np.loadtxt(path, dtype=np.float32)
    expected = _reference_nms(boxes, k)
    assert len(expected) < k
    kept, is_real = P.select_proposals(P.read_proposals(path), k)
    assert is_real.sum() == len(expected)
    np.testing.assert_array_equal(kept[: len(expected)], expected)
    # Deterministic padding: the survivors again, in score order.
    np.testing.assert_array_equal(kept[len(expected):], expected[np.arange(k - len(expected)) % len(expected)])
    again, _ = P.select_proposals(P.read_proposals(path), k)
    np.testing.assert_array_equal(kept, again)


@helpers.needs_shared
def test_short_file_pads_and_empty_list_uses_the_whole_image():
  boxes = P.read_proposals(FILES[0])[:3]
  expected = _reference_nms(boxes, 5)
  kept, is_real = P.select_proposals(boxes, 5)
  assert is_real.tolist() == [True] * len(expected) + [False] * (5 - len(expected))
  np.testing.assert_array_equal(kept[: len(expected)], expected)
  kept, is_real = P.select_proposals(np.zeros((0, 5)), 3, image_hw=(300, 200))
  assert not is_real.any()
  np.testing.assert_array_equal(kept, [[100, 150, 200, 300, 0]] * 3)


@helpers.needs_shared
def test_unsorted_input_is_taken_in_score_order():
  boxes = P.read_proposals(FILES[1])
  shuffled = boxes[np.random.default_rng(0).permutation(len(boxes))]
  np.testing.assert_array_equal(P.select_proposals(shuffled, 5)[0], P.select_proposals(boxes, 5)[0])


@helpers.needs_shared
def test_breast_anchor_is_box_zero_and_suppresses_its_duplicate():
  boxes = P.read_proposals(FILES[2])
  anchor = boxes[0, :4] + np.float32(3.0)  # The mask box nearly equals the detector's box 0.
  kept, is_real = P.select_proposals(boxes, 5, anchor=anchor)
  assert is_real.all()
  np.testing.assert_array_equal(kept[0], np.append(anchor, 1.0).astype(np.float32))
  assert not any(np.array_equal(row, boxes[0]) for row in kept[1:])
  assert (box_ops.pairwise_iou(kept[:1], kept[1:], "cxcywh") <= 0.5).all()


def test_square_crop_boxes_truncate_toward_zero_like_python_int():
  boxes = np.array([[10.7, 30.2, 15.0, 40.9], [100.0, 100.0, 10.0, 5.0]])
  x0, y0, size = box_ops.square_crop(boxes)
  crops = np.stack([x0, y0, size, size], -1)
  for (cx, cy, w, h), crop in zip(boxes, crops):
    side = max(w, h)
    assert crop.tolist() == [int(cx - side / 2 - 20), int(cy - side / 2 - 20), int(side + 40),
                             int(side + 40)]
  assert crops[0, 0] == -29  # int(-29.75) is -29; floor would give -30.


def test_proposal_path_follows_the_reference_naming(tmp_path):
  assert P.proposal_path(tmp_path, "s1/img.dicom") == tmp_path / "s1" / "img_preds.txt"


@pytest.mark.parametrize("content,reason", [
    ("1 2 3 4 0.5\n1 2 nan 4 0.4\n", "line 2 holds NaN"),
    ("1 2 3 4 0.5\n1 2 3\n", "line 2 has 3 values"),
    ("1 2 3 4 x\n", "line 1: not a number"),
    ("", "is empty"),
    ("\n\n", "is empty"),
    ("1 2 -3 4 0.5\n", "negative width"),
])
def test_bad_files_name_the_file_and_the_reason(tmp_path, content, reason):
  path = tmp_path / "a_preds.txt"
  path.write_text(content)
  with pytest.raises(P.ProposalError, match=reason) as e:
    P.read_proposals(path)
  assert str(path) in str(e.value)


def test_missing_file(tmp_path):
  with pytest.raises(P.ProposalError, match="no such proposal file"):
    P.read_proposals(tmp_path / "nope_preds.txt")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(alphabet="0123456789.-e naif\n\t", max_size=300))
def test_fuzzed_files_raise_only_the_typed_error(tmp_path_factory, data):
  path = tmp_path_factory.mktemp("fuzz") / "f_preds.txt"
  path.write_bytes(data if isinstance(data, bytes) else data.encode())
  try:
    boxes = P.read_proposals(path)
  except P.ProposalError:
    return
  assert boxes.dtype == np.float32 and boxes.shape[1] == 5 and np.isfinite(boxes).all()
  kept, _ = P.select_proposals(boxes, 5)
  assert kept.shape == (5, 5)


def test_a_proposal_file_on_a_bucket_reads_as_on_disk_and_a_missing_one_is_named(gcs, tmp_path):
  from attend_jax import paths

  bucket = paths.path(gcs.path("proposals"))
  local = FILES[0]
  (bucket / local.name).write_text(local.read_text())
  np.testing.assert_array_equal(P.read_proposals(f"{bucket}/{local.name}"),
                                P.read_proposals(local))
  with pytest.raises(P.ProposalError, match="no such proposal file") as e:
    P.read_proposals(f"{bucket}/gone_preds.txt")
  assert f"{bucket}/gone_preds.txt" in str(e.value)
