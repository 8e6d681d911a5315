"""Detection metrics: hand-computed cases, brute force, parity with pycocotools' COCOeval."""

import contextlib
import io
import json

import numpy as np
import pytest

from attend_jax import box_ops
from attend_jax.eval import detection


def _image(boxes, scores):
  return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)


_NONE = _image([], [])


# --- box_iou -----------------------------------------------------------------------------------

def test_box_iou_hand_computed():
  a = [[0, 0, 10, 10], [0, 0, 0, 0]]
  b = [[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]]
  expected = [[25 / 175, 1, 0, 0],  # Overlap 5 x 5 of two 10 x 10 boxes; disjoint; point inside.
              [0, 0, 0, 0]]  # A point: its union with another point is empty, so IoU 0.
  np.testing.assert_allclose(box_ops.pairwise_iou(np.asarray(a), np.asarray(b)), expected)
  assert box_ops.pairwise_iou(np.zeros((0, 4)), np.asarray(b)).shape == (0, 4)
  assert box_ops.pairwise_iou(np.asarray(a), np.zeros((0, 4))).shape == (2, 0)


# --- recall@k ----------------------------------------------------------------------------------

def _recall_case():
  """Four images: lesions and detections (boxes, scores) whose recall@k is worked out below."""
  lesions = [
      np.array([[0, 0, 10, 10], [20, 20, 30, 30]]),  # L1, L2.
      np.zeros((0, 4)),  # A normal image with a detection: it adds nothing to recall.
      np.array([[0, 0, 10, 10]]),  # L3, with no detection: never found.
      np.zeros((0, 4)),  # Neither lesions nor detections.
  ]
  detections = [
      _image([[50, 50, 60, 60],  # d0, 0.9: hits nothing.
              [0, 0, 10, 10],  # d1, 0.5: L1 exactly.
              [20, 20, 30, 30],  # d2, 0.5: L2 exactly, tied with d1 but after it.
              [20, 20, 30, 25]],  # d3, 0.7: half of L2, IoU 50 / 100 = 0.5.
             [0.9, 0.5, 0.5, 0.7]),
      _image([[0, 0, 10, 10]], [1.0]),
      _NONE,
      _NONE,
  ]
  return detections, lesions


def test_recall_at_k_hand_computed_with_ties_and_empty_images():
  detections, lesions = _recall_case()
  recall = detection.recall_at_k(detections, lesions, ks=(1, 2, 3, 4), ious=(0.5, 0.6))
  # Image 0 ranks d0, d3, d1, d2 (d1 before d2 by input order). Top 1: nothing. Top 2 adds d3,
  # which finds L2 at IoU 0.5 only. Top 3 adds d1: L1 at both. Top 4 adds d2: L2 at 0.6 too.
  # L3 is never found, so recall is out of 3 lesions.
  assert recall == pytest.approx({
      "recall@1_iou0.5": 0, "recall@1_iou0.6": 0,
      "recall@2_iou0.5": 1 / 3, "recall@2_iou0.6": 0,
      "recall@3_iou0.5": 2 / 3, "recall@3_iou0.6": 1 / 3,
      "recall@4_iou0.5": 2 / 3, "recall@4_iou0.6": 2 / 3,
  })
  assert list(recall) == [f"recall@{k}_iou{t}" for k in (1, 2, 3, 4) for t in (0.5, 0.6)]


def test_recall_at_k_breaks_score_ties_by_input_order():
  detections, lesions = _recall_case()
  boxes, scores = detections[0]
  detections[0] = boxes[[0, 2, 1, 3]], scores[[0, 2, 1, 3]]  # Now d2 precedes d1.
  recall = detection.recall_at_k(detections, lesions, ks=(3,), ious=(0.6,))
  # Top 3 is d0, d3, d2: L2 at IoU 1 instead of L1; still 1 of 3.
  assert recall == {"recall@3_iou0.6": pytest.approx(1 / 3)}
  assert detection.recall_at_k(detections, lesions, ks=(3,), ious=(0.5,)) == {
      "recall@3_iou0.5": pytest.approx(1 / 3)}  # d3 and d2 both find L2 only.


def test_recall_at_k_default_keys_and_no_lesions_gives_none():
  recall = detection.recall_at_k([_image([[0, 0, 1, 1]], [0.5]), _NONE], [[], []])
  assert list(recall) == [f"recall@{k}_iou{t}" for k in (1, 3, 5, 10) for t in (0.3, 0.5)]
  assert set(recall.values()) == {None}


def _random_images(seed: int, num_images: int = 20, integer: bool = True):
  """Random lesions and detections, half of the detections jittered lesions so that hits, near
  misses and duplicates are common. Some images are normal, some have no detections; scores are
  rounded so that they tie. Integer boxes make IoUs exact, so IoU ties occur too."""
  rng = np.random.default_rng(seed)
  jitter = 3

  def boxes_of(n):
    corner = rng.uniform(0, 40, (n, 2))
    size = rng.uniform(2, 20, (n, 2))
    boxes = np.c_[corner, corner + size]
    return np.round(boxes) if integer else boxes

  detections, lesions = [], []
  for _ in range(num_images):
    image_lesions = boxes_of(int(rng.choice([0, 0, 1, 2, 3])))
    n = 0 if rng.random() < 0.2 else int(rng.integers(1, 9))
    boxes = boxes_of(n)
    for j in range(n):
      if len(image_lesions) and rng.random() < 0.5:
        moved = image_lesions[rng.integers(len(image_lesions))] + rng.uniform(-jitter, jitter, 4)
        boxes[j] = np.round(moved) if integer else moved
    boxes = np.c_[np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])]
    detections.append((boxes, np.round(rng.random(n), 1)))
    lesions.append(image_lesions)
  return detections, lesions


@pytest.mark.parametrize("seed", range(5))
def test_recall_at_k_matches_brute_force(seed):
  detections, lesions = _random_images(seed)
  ks, ious = (1, 2, 3, 10), (0.3, 0.5)
  recall = detection.recall_at_k(detections, lesions, ks, ious)
  total = sum(map(len, lesions))
  for k in ks:
    for t in ious:
      found = 0
      for (boxes, scores), image_lesions in zip(detections, lesions):
        top = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]  # sorted() is stable.
        for lesion in image_lesions:
          found += any(box_ops.pairwise_iou(boxes[i:i + 1], lesion[None])[0, 0] >= t for i in top)
      assert recall[f"recall@{k}_iou{t:g}"] == found / total


# --- FROC --------------------------------------------------------------------------------------

def _froc_case():
  """Three images, three lesions, six detections, one score shared by three of them."""
  lesions = [
      np.array([[0, 0, 10, 10], [20, 20, 30, 30]]),  # L1, L2 (L2 is never hit).
      np.array([[0, 0, 10, 10]]),  # L3.
      np.zeros((0, 4)),  # A normal image.
  ]
  detections = [
      _image([[0, 0, 10, 10],  # a1, 0.9: L1 (IoU 1).
              [1, 1, 10, 10],  # a2, 0.6: L1 again (IoU 81 / 100): a duplicate, not an FP.
              [50, 50, 60, 60]],  # a3, 0.6: FP.
             [0.9, 0.6, 0.6]),
      _image([[40, 40, 50, 50],  # b1, 0.8: FP.
              [0, 0, 10, 5]],  # b2, 0.3: L3 at IoU 50 / 100 = 0.5.
             [0.8, 0.3]),
      _image([[0, 0, 5, 5]], [0.6]),  # c1, 0.6: FP on the normal image.
  ]
  return detections, lesions


def test_froc_hand_computed_with_tied_scores():
  fps, sens, thresholds = detection.froc(*_froc_case(), iou=0.3)
  # Threshold 0.9: a1 finds L1. 0.8: b1 is an FP. 0.6: a2, a3 and c1 enter together; a2 repeats
  # L1, a3 and c1 are FPs (3 in all). 0.3: b2 finds L3. Per image means over all 3 images.
  np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.6, 0.3])
  np.testing.assert_allclose(fps, [0, 0, 1 / 3, 1, 1], rtol=0, atol=1e-15)
  np.testing.assert_allclose(sens, [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3], rtol=0, atol=1e-15)


def test_froc_iou_threshold_turns_a_weak_hit_into_a_false_positive():
  fps, sens, _ = detection.froc(*_froc_case(), iou=0.6)
  # b2 overlaps L3 with IoU 0.5 < 0.6: a fourth FP, and L3 stays missed.
  np.testing.assert_allclose(fps, [0, 0, 1 / 3, 1, 4 / 3], rtol=0, atol=1e-15)
  np.testing.assert_allclose(sens, [0, 1 / 3, 1 / 3, 1 / 3, 1 / 3], rtol=0, atol=1e-15)


def test_froc_duplicates_on_one_lesion_are_not_false_positives():
  lesions = [np.array([[0, 0, 10, 10]]), np.zeros((0, 4))]
  detections = [_image([[0, 0, 10, 10], [0, 0, 10, 9], [1, 0, 10, 10]], [0.9, 0.8, 0.7]), _NONE]
  fps, sens, thresholds = detection.froc(detections, lesions, iou=0.5)
  np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.7])
  np.testing.assert_array_equal(fps, [0, 0, 0, 0])
  np.testing.assert_array_equal(sens, [0, 1, 1, 1])


def test_froc_one_detection_finds_every_lesion_it_hits():
  lesions = [np.array([[0, 0, 10, 10], [0, 0, 10, 12]])]
  # IoU 100 / 110 and 110 / 120 with the two lesions.
  fps, sens, _ = detection.froc([_image([[0, 0, 10, 11]], [0.5])], lesions, iou=0.5)
  np.testing.assert_array_equal(fps, [0, 0])
  np.testing.assert_array_equal(sens, [0, 1])


def test_froc_without_detections_is_a_single_point():
  fps, sens, thresholds = detection.froc([_NONE], [[[0, 0, 1, 1]]])
  np.testing.assert_array_equal(fps, [0])
  np.testing.assert_array_equal(sens, [0])
  np.testing.assert_array_equal(thresholds, [np.inf])


def test_froc_without_lesions_raises():
  with pytest.raises(detection.DetectionError, match="needs lesions.*all 2 images are normal"):
    detection.froc([_NONE, _NONE], [[], []])


@pytest.mark.parametrize("seed", range(5))
def test_froc_matches_brute_force(seed):
  detections, lesions = _random_images(seed)
  fps, sens, thresholds = detection.froc(detections, lesions, iou=0.3)
  assert fps[0] == sens[0] == 0 and thresholds[0] == np.inf
  total = sum(map(len, lesions))
  for threshold, fp_rate, sensitivity in zip(thresholds[1:], fps[1:], sens[1:]):
    false_positives = found = 0
    for (boxes, scores), image_lesions in zip(detections, lesions):
      hits = box_ops.pairwise_iou(boxes[scores >= threshold], image_lesions) >= 0.3
      false_positives += np.count_nonzero(~hits.any(axis=1))
      found += np.count_nonzero(hits.any(axis=0))
    assert fp_rate == false_positives / len(detections)
    assert sensitivity == found / total


def test_sensitivity_at_fps():
  fps, sens, _ = detection.froc(*_froc_case(), iou=0.3)
  # fps [0, 0, 1/3, 1, 1], sens [0, 1/3, 1/3, 1/3, 2/3]: up to 0.5 FP/image the best is 1/3,
  # from 1 on the tied-FP-rate point with 2/3.
  assert detection.sensitivity_at_fps(fps, sens, (0, 0.5, 0.99, 1, 2)) == pytest.approx(
      {0.0: 1 / 3, 0.5: 1 / 3, 0.99: 1 / 3, 1.0: 2 / 3, 2.0: 2 / 3})
  assert list(detection.sensitivity_at_fps(fps, sens)) == [0.5, 1.0, 2.0]
  # No operating point is as sparse as 0.25 FP/image.
  assert detection.sensitivity_at_fps([0.5, 1.0], [0.2, 0.4], (0.25, 0.75)) == {0.25: 0.0,
                                                                                0.75: 0.2}


# --- Average precision -------------------------------------------------------------------------

def _coco_ap(detections, lesions, iou: float, max_dets: int) -> float | None:
  """AP read from COCOeval's accumulated precision, one category and the "all" area range."""
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  def xywh(box):
    x0, y0, x1, y1 = map(float, box)
    return [x0, y0, x1 - x0, y1 - y0]

  annotations, results = [], []
  for image_id, ((boxes, scores), image_lesions) in enumerate(zip(detections, lesions), start=1):
    for lesion in np.asarray(image_lesions, dtype=np.float64).reshape(-1, 4):
      bbox = xywh(lesion)
      # Ids from 1: COCOeval takes a match with annotation id 0 for no match.
      annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                          "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    results += [{"image_id": image_id, "category_id": 1, "bbox": xywh(box), "score": float(score)}
                for box, score in zip(boxes, scores)]
  gt = COCO()
  # Every image is listed, normal ones included; COCOeval skips an image with neither lesions
  # nor detections, which adds nothing to AP in either implementation.
  gt.dataset = {"images": [{"id": i} for i in range(1, len(lesions) + 1)],
                "annotations": annotations, "categories": [{"id": 1, "name": "lesion"}]}
  with contextlib.redirect_stdout(io.StringIO()):
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")  # loadRes needs a detection.
    evaluator.params.iouThrs = np.array([iou])
    evaluator.params.maxDets = [max_dets]
    evaluator.params.areaRng = [[0, 1e10]]
    evaluator.params.areaRngLbl = ["all"]
    evaluator.evaluate()
    evaluator.accumulate()
  precision = evaluator.eval["precision"][0, :, 0, 0, 0]  # IoU, recall, category, area, maxDets.
  precision = precision[precision > -1]
  return float(np.mean(precision)) if precision.size else None


def test_average_precision_hand_computed():
  lesions = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]]), np.array([[0, 0, 10, 10]])]
  detections = [_image([[0, 0, 10, 10], [20, 0, 30, 10]], [0.9, 0.7]),  # Hits at 0.9 and 0.7.
                _image([[50, 50, 60, 60]], [0.8])]  # A false positive at 0.8; the lesion missed.
  # In score order: hit, FP, hit. Recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3, made monotone
  # 1, 2/3, 2/3. Recall points 0..0.33 (34) get 1, 0.34..0.66 (33) get 2/3, 0.67..1 (34) get 0.
  expected = (34 + 33 * 2 / 3) / 101
  assert detection.average_precision(detections, lesions) == pytest.approx(expected, abs=1e-12)
  assert _coco_ap(detections, lesions, 0.5, 100) == pytest.approx(expected, abs=1e-12)
  # With one detection per image the 0.7 hit is dropped: recall 1/3 at precision 1 only.
  assert detection.average_precision(detections, lesions, max_dets=1) == pytest.approx(34 / 101)


def test_average_precision_greedy_matching_keeps_the_last_of_tied_lesions():
  lesions = [np.array([[0, 0, 10, 10], [6, 0, 16, 10]])]
  # The first detection overlaps both lesions by 70 / 130; COCOeval gives it the second, so the
  # second detection, which only fits the second lesion (IoU 1, vs 40 / 160 with the first),
  # finds it taken and is a false positive. Hit then FP: recall 0.5 at precision 1, so recall
  # points 0..0.5 (51 of 101) get 1.
  detections = [_image([[3, 0, 13, 10], [6, 0, 16, 10]], [0.9, 0.8])]
  assert detection.average_precision(detections, lesions) == pytest.approx(51 / 101, abs=1e-12)
  assert _coco_ap(detections, lesions, 0.5, 100) == pytest.approx(51 / 101, abs=1e-12)


def test_average_precision_none_without_lesions_and_zero_without_detections():
  assert detection.average_precision([_image([[0, 0, 1, 1]], [0.5])], [[]]) is None
  assert _coco_ap([_image([[0, 0, 1, 1]], [0.5])], [[]], 0.5, 100) is None
  assert detection.average_precision([_NONE, _NONE], [[[0, 0, 1, 1]], []]) == 0.0


@pytest.mark.parametrize("integer", [True, False], ids=["integer_boxes", "float_boxes"])
@pytest.mark.parametrize("iou, max_dets", [(0.5, 100), (0.5, 3), (0.3, 100), (0.75, 2)])
@pytest.mark.parametrize("seed", range(4))
def test_average_precision_matches_pycocotools(seed, iou, max_dets, integer):
  detections, lesions = _random_images(seed, num_images=20, integer=integer)
  num_detections = [len(scores) for _, scores in detections]
  assert sum(num_detections) and sum(map(len, lesions))  # COCOeval needs both.
  assert 0 in num_detections and 0 in map(len, lesions)  # Both kinds of empty image occur.
  ours = detection.average_precision(detections, lesions, iou=iou, max_dets=max_dets)
  assert ours == pytest.approx(_coco_ap(detections, lesions, iou, max_dets), rel=0, abs=1e-9)


# --- Summary -----------------------------------------------------------------------------------

def test_summary_is_json_ready():
  detections, lesions = _froc_case()
  summary = detection.summary(detections, lesions, ks=(1, 5), ious=(0.3,))
  assert json.loads(json.dumps(summary)) == summary
  assert summary["num_images"] == 3 and summary["num_lesions"] == 3
  assert summary["num_detections"] == 6
  assert summary["recall@1_iou0.3"] == pytest.approx(1 / 3)  # a1 leads; b1 outscores b2.
  assert summary["recall@5_iou0.3"] == pytest.approx(2 / 3)
  assert summary["froc_sens@0.5fp"] == pytest.approx(1 / 3)
  assert summary["froc_sens@1fp"] == summary["froc_sens@2fp"] == pytest.approx(2 / 3)
  assert summary["map50"] == detection.average_precision(detections, lesions, iou=0.5)
  assert summary["froc"] == {"fps_per_image": pytest.approx([0, 0, 1 / 3, 1, 1]),
                             "sensitivity": pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 2 / 3])}


def test_summary_thins_a_long_froc_curve():
  rng = np.random.default_rng(0)
  boxes = rng.uniform(0, 100, (1000, 2))
  detections = [(np.c_[boxes, boxes + 10], rng.random(1000))]
  summary = detection.summary(detections, [np.array([[0, 0, 10, 10]])])
  fps, sens, _ = detection.froc(detections, [np.array([[0, 0, 10, 10]])])
  curve = summary["froc"]
  assert len(curve["fps_per_image"]) == len(curve["sensitivity"]) <= 200
  assert curve["fps_per_image"][0] == 0 and curve["fps_per_image"][-1] == fps[-1]
  assert curve["sensitivity"][-1] == sens[-1]


def test_summary_without_lesions_gives_none():
  summary = detection.summary([_image([[0, 0, 1, 1]], [0.5])], [[]])
  json.dumps(summary)
  assert (summary["num_images"], summary["num_lesions"], summary["num_detections"]) == (1, 0, 1)
  counts = {"num_images", "num_lesions", "num_detections"}
  assert {key for key, value in summary.items() if value is not None} == counts
  assert {"froc", "map50", "froc_sens@1fp", "recall@10_iou0.5"} <= set(summary)


# --- Bad inputs --------------------------------------------------------------------------------

_BOX = [[0, 0, 1, 1]]


@pytest.mark.parametrize("detections, lesions, match", [
    ([_image(_BOX, [0.5])], [_BOX, _BOX], "differ in number of images: 1 != 2"),
    ([], [], "hold no images"),
    (np.zeros((1, 2)), [_BOX], "sequences over images"),
    ([_image(_BOX, [0.5])], np.array(_BOX), "sequences over images"),  # One image, unwrapped.
    ([np.zeros((1, 4))], [_BOX], "image 0 must be a pair"),
    ([(np.zeros(4), [0.5])], [_BOX], r"shape \(n, 4\).*got \(4,\)"),
    ([_image(_BOX, [0.5]), (np.zeros((2, 4)), [0.5])], [_BOX, _BOX],
     r"scores of image 1 must have shape \(2,\)"),
    ([_image(_BOX, [np.nan])], [_BOX], "non-finite"),
    ([_image(_BOX, [0.5])], [[[0, 0, 1, np.inf]]], "lesions of image 0 hold 1 non-finite"),
    ([_image([[2, 0, 1, 1]], [0.5])], [_BOX], "x1 < x0"),
    ([(_BOX, ["a"])], [_BOX], "must be numbers"),
    ([_image(_BOX, [0.5])], [[[0, 0, 1]]], r"lesions of image 0 must have shape \(n, 4\)"),
])
def test_bad_inputs_raise_value_error(detections, lesions, match):
  for metric in (detection.recall_at_k, detection.froc, detection.average_precision,
                 detection.summary):
    with pytest.raises(ValueError, match=match):
      metric(detections, lesions)


def test_bad_parameters_raise_value_error():
  detections, lesions = _froc_case()
  with pytest.raises(ValueError, match=r"iou must lie in \(0, 1\]"):
    detection.froc(detections, lesions, iou=0)
  with pytest.raises(ValueError, match=r"iou must lie in \(0, 1\]"):
    detection.recall_at_k(detections, lesions, ious=(0.5, 1.5))
  with pytest.raises(ValueError, match="k must be a positive integer"):
    detection.recall_at_k(detections, lesions, ks=(0,))
  with pytest.raises(ValueError, match="max_dets must be a positive integer"):
    detection.average_precision(detections, lesions, max_dets=2.5)
  with pytest.raises(ValueError, match="FROC points"):
    detection.sensitivity_at_fps([0, 1], [0, 1], (-1,))
  with pytest.raises(ValueError, match="same length"):
    detection.sensitivity_at_fps([0, 1], [0, 1, 1])
  with pytest.raises(ValueError, match="froc_iou"):
    detection.summary(detections, lesions, froc_iou=2)
