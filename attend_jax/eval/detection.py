"""Lesion-detection metrics as pure numpy functions of per-image boxes, scores and lesions.

The image-level metrics in ``attend_jax.eval.metrics`` say whether a model flags the right
mammograms, not whether it points at the lesion. These answer that, in the three ways detection
results are usually reported:

* recall@k: the fraction of lesions hit by one of their image's k best boxes, i.e. what a reader
  shown only the top k marks per image would be pointed to;
* FROC: lesion sensitivity against false marks per image as the score threshold falls, the
  yardstick of computer-aided detection. Normal images count in "per image", since their false
  marks cost reading time too;
* average precision computed exactly as pycocotools' COCOeval does, so numbers compare with
  published detection results without pycocotools being needed at run time.

Every function takes a sequence over images of detections = (boxes (n, 4), scores (n,)) and a
matching sequence of lesions (m, 4), all boxes as ``x0 y0 x1 y1``. An image may have no lesions
(a normal image) or no detections. A box hits a lesion when their IoU is at least the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attend_jax import box_ops
from attend_jax.eval.metrics import MetricError

SUMMARY_FROC_POINTS = 200  # At most this many FROC points go into summary()'s JSON.
# COCOeval's recall thresholds 0, 0.01, ..., 1 at which precision is sampled.
_COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)

# One image after validation: detection boxes (n, 4), their scores (n,) and lesions (m, 4).
_Image = tuple[np.ndarray, np.ndarray, np.ndarray]


class DetectionError(MetricError):
  """Detections or lesions a detection metric cannot be computed from: bad shapes or values."""


def _check_boxes(boxes, what: str) -> np.ndarray:
  """Returns ``boxes`` as float64 of shape (n, 4); an empty sequence means no boxes."""
  boxes = np.asarray(boxes)
  if boxes.shape == (0,):
    boxes = boxes.reshape(0, 4)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise DetectionError(f"{what} must have shape (n, 4) as x0 y0 x1 y1, got {boxes.shape}")
  if not np.issubdtype(boxes.dtype, np.number):
    raise DetectionError(f"{what} must be numbers, got dtype {boxes.dtype}")
  boxes = boxes.astype(np.float64)
  if not np.isfinite(boxes).all():
    raise DetectionError(f"{what} hold {np.count_nonzero(~np.isfinite(boxes))} non-finite values")
  inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
  if inverted.any():
    raise DetectionError(f"{what} hold {np.count_nonzero(inverted)} boxes with x1 < x0 or "
                         f"y1 < y0, e.g. {boxes[np.argmax(inverted)].tolist()}; boxes must be "
                         "x0 y0 x1 y1")
  return boxes


def _check_images(detections, lesions) -> list[_Image]:
  """Validates per-image detections and lesions and pairs them up as float64 arrays."""
  # One image's arrays passed without a list around them would otherwise be read row by row.
  if isinstance(detections, np.ndarray) or (isinstance(lesions, np.ndarray) and lesions.ndim != 3):
    raise DetectionError("detections and lesions must be sequences over images, not one image's "
                         "arrays; wrap a single image in a list")
  detections, lesions = list(detections), list(lesions)
  if len(detections) != len(lesions):
    raise DetectionError(f"detections and lesions differ in number of images: "
                         f"{len(detections)} != {len(lesions)}")
  if not detections:
    raise DetectionError("detections and lesions hold no images")
  images = []
  for i, (pair, image_lesions) in enumerate(zip(detections, lesions)):
    try:
      boxes, scores = pair
    except (TypeError, ValueError):
      raise DetectionError(f"detections of image {i} must be a pair (boxes, scores), got "
                           f"{type(pair).__name__}") from None
    boxes = _check_boxes(boxes, f"detection boxes of image {i}")
    scores = np.asarray(scores)
    if scores.shape != (len(boxes),):
      raise DetectionError(f"scores of image {i} must have shape ({len(boxes)},) to match its "
                           f"{len(boxes)} boxes, got {scores.shape}")
    if not np.issubdtype(scores.dtype, np.number):
      raise DetectionError(f"scores of image {i} must be numbers, got dtype {scores.dtype}")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
      raise DetectionError(f"scores of image {i} hold {np.count_nonzero(~np.isfinite(scores))} "
                           "non-finite values")
    images.append((boxes, scores, _check_boxes(image_lesions, f"lesions of image {i}")))
  return images


def _check_iou(iou: float, name: str = "iou") -> float:
  if isinstance(iou, (bool, np.bool_)) or not isinstance(iou, (int, float, np.number)):
    raise DetectionError(f"{name} must be a number, got {iou!r}")
  if not 0 < iou <= 1:
    raise DetectionError(f"{name} must lie in (0, 1], got {iou}")
  return float(iou)


def _check_count(value: int, name: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise DetectionError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def _check_points(points: Sequence[float]) -> list[float]:
  checked = []
  for p in points:
    if (isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.number))
        or not (np.isfinite(p) and p >= 0)):
      raise DetectionError(f"FROC points must be false positives per image, finite and >= 0, "
                           f"got {p!r}")
    checked.append(float(p))
  return checked


def _num_lesions(images: list[_Image]) -> int:
  return sum(len(image_lesions) for _, _, image_lesions in images)


def _recall_at_k(images: list[_Image], ks: list[int], ious: list[float]
                 ) -> dict[str, float | None]:
  keys = [f"recall@{k}_iou{t:g}" for k in ks for t in ious]
  num_lesions = _num_lesions(images)
  if num_lesions == 0:
    return dict.fromkeys(keys)
  found = np.zeros((len(ks), len(ious)), dtype=np.int64)
  k_column = np.asarray(ks)[:, None]
  for boxes, scores, image_lesions in images:
    if not len(boxes) or not len(image_lesions):
      continue
    # Ties keep their input order, so the top k is well defined.
    order = np.argsort(-scores, kind="stable")
    overlap = box_ops.pairwise_iou(boxes[order], image_lesions)  # (rank, lesion)
    for j, t in enumerate(ious):
      hits = overlap >= t
      # Rank of the best-ranked detection hitting each lesion; infinite when none does.
      first_rank = np.where(hits.any(axis=0), np.argmax(hits, axis=0), np.inf)
      found[:, j] += np.count_nonzero(first_rank[None, :] < k_column, axis=1)
  recall = found / num_lesions
  return {f"recall@{k}_iou{t:g}": float(recall[i, j])
          for i, k in enumerate(ks) for j, t in enumerate(ious)}


def recall_at_k(detections: Sequence[tuple[np.ndarray, np.ndarray]], lesions: Sequence[np.ndarray],
                ks: Sequence[int] = (1, 3, 5, 10), ious: Sequence[float] = (0.3, 0.5)
                ) -> dict[str, float | None]:
  """Fraction of all lesions hit by one of their image's k highest-scoring detections.

  A lesion is found when any of the top k detections of its image (ties in score kept in input
  order) has IoU >= t with it. Keys are ``f"recall@{k}_iou{t:g}"``, e.g. "recall@5_iou0.3"; when
  no image has a lesion every value is None.
  """
  images = _check_images(detections, lesions)
  ks = [_check_count(k, "k") for k in ks]
  ious = [_check_iou(t) for t in ious]
  return _recall_at_k(images, ks, ious)


def _froc(images: list[_Image], iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  num_lesions = _num_lesions(images)
  if num_lesions == 0:
    raise DetectionError(f"froc needs lesions, but all {len(images)} images are normal")
  all_scores, false_positive, found_at = [], [], []
  for boxes, scores, image_lesions in images:
    hits = box_ops.pairwise_iou(boxes, image_lesions) >= iou
    all_scores.append(scores)
    false_positive.append(~hits.any(axis=1))
    # The highest score among the detections hitting each lesion: it is found from there down.
    found_at.append(np.max(np.where(hits, scores[:, None], -np.inf), axis=0, initial=-np.inf))
  scores = np.concatenate(all_scores)
  false_positive = np.concatenate(false_positive)
  found_at = np.sort(np.concatenate(found_at))
  false_positive_scores = np.sort(scores[false_positive])
  thresholds = np.unique(scores)[::-1]
  # Counts of scores >= each threshold, so tied detections enter together.
  num_false_positives = len(false_positive_scores) - np.searchsorted(
      false_positive_scores, thresholds, side="left")
  num_found = len(found_at) - np.searchsorted(found_at, thresholds, side="left")
  return (np.r_[0.0, num_false_positives / len(images)], np.r_[0.0, num_found / num_lesions],
          np.r_[np.inf, thresholds])


def froc(detections: Sequence[tuple[np.ndarray, np.ndarray]], lesions: Sequence[np.ndarray],
         iou: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fps_per_image, sensitivity, thresholds) at every distinct detection score, highest first,
  led by (0, 0) at threshold +inf.

  At threshold s only detections scoring >= s count. A detection with IoU >= ``iou`` to a lesion
  of its image hits it; a lesion is found when some counted detection hits it, however many do,
  and a detection that hits several lesions finds them all. A detection that hits no lesion is a
  false positive; extra hits on a found lesion are not. Sensitivity is found lesions over all
  lesions, and fps_per_image is false positives over all images, normal ones included.

  Raises:
    DetectionError: if no image has a lesion, for which sensitivity is undefined.
  """
  return _froc(_check_images(detections, lesions), _check_iou(iou))


def sensitivity_at_fps(fps, sens, points: Sequence[float] = (0.5, 1.0, 2.0)) -> dict[float, float]:
  """The highest sensitivity a FROC curve reaches with at most ``point`` false positives per
  image, for each point (as a float key); 0 where no operating point is that sparse."""
  fps, sens = np.asarray(fps, dtype=np.float64), np.asarray(sens, dtype=np.float64)
  if fps.ndim != 1 or fps.shape != sens.shape:
    raise DetectionError(f"fps and sens must be 1-D of the same length, got shapes {fps.shape} "
                         f"and {sens.shape}")
  result = {}
  for point in _check_points(points):
    reached = sens[fps <= point]
    result[point] = float(reached.max()) if reached.size else 0.0
  return result


def _precision_recall(images: list[_Image], iou: float, max_dets: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  num_lesions = _num_lesions(images)
  # COCOeval caps the threshold so that IoU 1 still matches boxes equal up to round-off.
  threshold = min(iou, 1 - 1e-10)
  all_scores, all_matched = [], []
  for boxes, scores, image_lesions in images:
    order = np.argsort(-scores, kind="mergesort")[:max_dets]
    boxes, scores = boxes[order], scores[order]
    matched = np.zeros(len(boxes), dtype=bool)
    if len(boxes) and len(image_lesions):
      overlap = box_ops.pairwise_iou(boxes, image_lesions)
      taken = np.zeros(len(image_lesions), dtype=bool)
      for d in range(len(boxes)):  # Greedy, best detection first.
        candidates = np.where(taken, -np.inf, overlap[d])
        # Of equally good lesions COCOeval keeps the last, as its loop replaces on ">=".
        best = len(candidates) - 1 - int(np.argmax(candidates[::-1]))
        if candidates[best] >= threshold:
          taken[best] = matched[d] = True
    all_scores.append(scores)
    all_matched.append(matched)
  # Images stay in input order and each is already sorted, so a stable sort of the concatenation
  # breaks ties across images exactly as COCOeval's mergesort does.
  order = np.argsort(-np.concatenate(all_scores), kind="mergesort")
  true_positive = np.concatenate(all_matched)[order]
  tp = np.cumsum(true_positive).astype(np.float64)
  fp = np.cumsum(~true_positive).astype(np.float64)
  recall = tp / num_lesions
  precision = tp / (fp + tp + np.spacing(1))
  return recall, np.maximum.accumulate(precision[::-1])[::-1]  # Best at >= this recall.


def precision_recall(detections: Sequence[tuple[np.ndarray, np.ndarray]],
                     lesions: Sequence[np.ndarray], iou: float = 0.5, max_dets: int = 100
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(recall, precision) after each detection, pooled over images in descending score, with
  the matching ``average_precision`` uses; precision is made monotone (the best precision at
  this recall or more), as AP samples it.

  Raises:
    DetectionError: if no image has a lesion, for which recall is undefined.
  """
  images = _check_images(detections, lesions)
  if _num_lesions(images) == 0:
    raise DetectionError(f"precision_recall needs lesions, but all {len(images)} images are"
                         " normal")
  return _precision_recall(images, _check_iou(iou), _check_count(max_dets, "max_dets"))


def _average_precision(images: list[_Image], iou: float, max_dets: int) -> float | None:
  if _num_lesions(images) == 0:
    return None
  recall, precision = _precision_recall(images, iou, max_dets)
  index = np.searchsorted(recall, _COCO_RECALL_THRESHOLDS, side="left")
  reached = index < len(precision)
  sampled = np.zeros(len(_COCO_RECALL_THRESHOLDS))
  sampled[reached] = precision[index[reached]]
  return float(np.mean(sampled))


def average_precision(detections: Sequence[tuple[np.ndarray, np.ndarray]],
                      lesions: Sequence[np.ndarray], iou: float = 0.5, max_dets: int = 100
                      ) -> float | None:
  """Single-class AP at one IoU threshold, as COCOeval computes it for area "all" and
  maxDets = ``max_dets``.

  Per image the ``max_dets`` highest-scoring detections are kept and matched greedily, best
  first, each to the unmatched lesion of highest IoU >= ``iou`` (the last of ties). Pooled over
  images in descending score, precision is made monotone and sampled at the 101 recall points
  0, 0.01, ..., 1 (0 beyond the recall reached); AP is their mean. Unlike COCOeval this does not
  ignore boxes larger than 1e10 pixels. None when no image has a lesion.
  """
  images = _check_images(detections, lesions)
  return _average_precision(images, _check_iou(iou), _check_count(max_dets, "max_dets"))


def _subsample(n: int, limit: int) -> np.ndarray:
  """At most ``limit`` evenly spread indices of range(n), first and last included."""
  return np.unique(np.round(np.linspace(0, n - 1, min(n, limit))).astype(np.int64))


def summary(detections: Sequence[tuple[np.ndarray, np.ndarray]], lesions: Sequence[np.ndarray],
            ks: Sequence[int] = (1, 3, 5, 10), ious: Sequence[float] = (0.3, 0.5),
            froc_iou: float = 0.3, fps_points: Sequence[float] = (0.5, 1, 2)) -> dict:
  """Headline detection metrics as a JSON-ready dict of Python numbers.

  Keys: num_images, num_lesions, num_detections, the ``recall_at_k`` keys, "froc_sens@{p:g}fp"
  (``sensitivity_at_fps`` of the FROC at ``froc_iou``) for each of ``fps_points``, "map50"
  (``average_precision`` at IoU 0.5, 100 detections per image) and "froc": {"fps_per_image",
  "sensitivity"}, the curve thinned to at most ``SUMMARY_FROC_POINTS`` points for plotting. When
  no image has a lesion every metric other than the counts is None rather than an error, so a
  summary of any split can be written.
  """
  images = _check_images(detections, lesions)
  ks = [_check_count(k, "k") for k in ks]
  ious = [_check_iou(t) for t in ious]
  froc_iou = _check_iou(froc_iou, "froc_iou")
  fps_points = _check_points(fps_points)
  num_lesions = _num_lesions(images)
  result = {"num_images": len(images), "num_lesions": num_lesions,
            "num_detections": sum(len(boxes) for boxes, _, _ in images)}
  result |= _recall_at_k(images, ks, ious)
  froc_keys = [f"froc_sens@{p:g}fp" for p in fps_points]
  if num_lesions == 0:
    return result | dict.fromkeys(froc_keys) | {"map50": None, "froc": None}
  fps, sens, _ = _froc(images, froc_iou)
  at = sensitivity_at_fps(fps, sens, fps_points)
  result |= {key: at[p] for key, p in zip(froc_keys, fps_points)}
  result["map50"] = _average_precision(images, 0.5, 100)
  keep = _subsample(len(fps), SUMMARY_FROC_POINTS)
  result["froc"] = {"fps_per_image": fps[keep].tolist(), "sensitivity": sens[keep].tolist()}
  return result
