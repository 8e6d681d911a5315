"""Binary classification metrics as pure numpy functions of (labels, scores).

Scores may be logits or probabilities: everything here except calibration depends only on
their order. A threshold ``t`` always means "predict positive when score >= t", and curves list
their operating points from the highest threshold down, starting at "nothing is positive".

Sensitivity is read off the ROC curve at a false-positive rate; it is not the recall at a fixed
score threshold, which would mean different things for logits and probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


SUMMARY_FPRS = (0.1, 0.3, 0.5)
_BOOTSTRAP_CELLS = 1 << 22  # Resamples x examples handled at once; bounds bootstrap memory.


class MetricError(ValueError):
  """Inputs a metric cannot be computed from: bad shapes, labels or scores."""


class SingleClassError(MetricError):
  """A metric that needs both classes was given only one."""


def check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  """Returns labels as bool and scores as float64, both 1-D and of the same length."""
  labels, scores = np.asarray(labels), np.asarray(scores)
  if labels.ndim != 1 or scores.ndim != 1:
    raise MetricError(f"labels and scores must be 1-D, got shapes {labels.shape} and "
                      f"{scores.shape}")
  if len(labels) != len(scores):
    raise MetricError(f"labels and scores differ in length: {len(labels)} != {len(scores)}")
  if len(labels) == 0:
    raise MetricError("labels and scores are empty")
  if labels.dtype != bool:
    if not np.issubdtype(labels.dtype, np.number) or not np.isin(labels, (0, 1)).all():
      raise MetricError(f"labels must be 0/1 or bool, got values {np.unique(labels)[:5]}")
    labels = labels == 1
  if scores.dtype != bool and not np.issubdtype(scores.dtype, np.number):
    raise MetricError(f"scores must be numbers, got dtype {scores.dtype}")
  scores = scores.astype(np.float64)
  if not np.isfinite(scores).all():
    raise MetricError(f"scores hold {np.count_nonzero(~np.isfinite(scores))} non-finite values")
  return labels, scores


def require_both_classes(labels: np.ndarray, metric: str) -> None:
  num_positive = int(labels.sum())
  if num_positive in (0, len(labels)):
    only = "positive" if num_positive else "negative"
    raise SingleClassError(f"{metric} needs positive and negative examples, but all "
                           f"{len(labels)} are {only}")


def _operating_points(labels: np.ndarray, scores: np.ndarray):
  """True and false positive counts at each distinct score used as a threshold, highest first."""
  order = np.argsort(-scores, kind="stable")
  scores, labels = scores[order], labels[order]
  # The last example of each run of equal scores: tied examples switch to positive together.
  last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]
  tps = np.cumsum(labels)[last]
  fps = last + 1 - tps
  return tps, fps, scores[last]


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds) at every distinct score, led by (0, 0) at threshold +inf.

  Matches sklearn's ``roc_curve(..., drop_intermediate=False)``.
  """
  labels, scores = check(labels, scores)
  require_both_classes(labels, "roc_curve")
  tps, fps, thresholds = _operating_points(labels, scores)
  tps, fps = np.r_[0, tps], np.r_[0, fps]
  return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def _average_ranks(scores: np.ndarray) -> np.ndarray:
  """1-based ranks of scores in ascending order, tied scores sharing their mean rank."""
  order = np.argsort(scores, kind="stable")
  ordered = scores[order]
  starts = np.r_[True, ordered[1:] != ordered[:-1]]
  first = np.flatnonzero(starts)
  sizes = np.diff(np.r_[first, len(scores)])
  ranks = np.empty(len(scores))
  ranks[order] = (first + (sizes + 1) / 2)[np.cumsum(starts) - 1]
  return ranks


def auc(labels, scores) -> float:
  """ROC AUC as the Mann-Whitney U statistic over average ranks, so ties count 1/2.

  Raises:
    SingleClassError: if the labels hold only one class.
  """
  labels, scores = check(labels, scores)
  require_both_classes(labels, "auc")
  num_positive = int(labels.sum())
  num_negative = len(labels) - num_positive
  u = _average_ranks(scores)[labels].sum() - num_positive * (num_positive + 1) / 2
  return float(u / (num_positive * num_negative))


def _resampled_aucs(labels: np.ndarray, score_groups: np.ndarray, num_groups: int,
                    indices: np.ndarray) -> np.ndarray:
  """AUC of each row of ``indices`` (a resample of examples); NaN for single-class rows.

  A resample is a multiset, so instead of sorting each one this counts, per row and distinct
  score, how many positives and examples it drew; average ranks follow from cumulative counts.
  """
  rows = len(indices)
  cells = (np.arange(rows)[:, None] * num_groups + score_groups[indices]).ravel()
  positives = np.bincount(cells, weights=labels[indices].ravel(), minlength=rows * num_groups)
  counts = np.bincount(cells, minlength=rows * num_groups).astype(np.float64)
  positives = positives.reshape(rows, num_groups)
  counts = counts.reshape(rows, num_groups)
  ranks = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2
  num_positive = positives.sum(axis=1)
  num_negative = indices.shape[1] - num_positive
  u = (positives * ranks).sum(axis=1) - num_positive * (num_positive + 1) / 2
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where((num_positive > 0) & (num_negative > 0), u / (num_positive * num_negative),
                    np.nan)


def bootstrap_auc_ci(labels, scores, num_samples: int = 1000, alpha: float = 0.05,
                     seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap (1 - alpha) confidence interval of the AUC.

  Resamples that draw a single class have no AUC; they are dropped and more are drawn from the
  same seeded stream until ``num_samples`` remain, so the result depends only on the inputs.
  """
  labels, scores = check(labels, scores)
  require_both_classes(labels, "bootstrap_auc_ci")
  if not (isinstance(num_samples, (int, np.integer)) and num_samples >= 1):
    raise MetricError(f"num_samples must be a positive integer, got {num_samples!r}")
  if not 0 < alpha < 1:
    raise MetricError(f"alpha must lie in (0, 1), got {alpha}")
  _, score_groups = np.unique(scores, return_inverse=True)
  num_groups = int(score_groups.max()) + 1
  n = len(labels)
  rng = np.random.default_rng(seed)
  chunk = max(1, _BOOTSTRAP_CELLS // n)
  aucs, kept = [], 0
  # With both classes present, at least half of all resamples keep both, so this ends quickly.
  while kept < num_samples:
    indices = rng.integers(0, n, size=(min(chunk, num_samples - kept), n))
    chunk_aucs = _resampled_aucs(labels, score_groups, num_groups, indices)
    chunk_aucs = chunk_aucs[~np.isnan(chunk_aucs)]
    aucs.append(chunk_aucs)
    kept += len(chunk_aucs)
  low, high = np.quantile(np.concatenate(aucs)[:num_samples], [alpha / 2, 1 - alpha / 2])
  return float(low), float(high)


def sensitivity_at_fpr(labels, scores, fpr_target: float) -> float:
  """TPR of the ROC curve at false-positive rate ``fpr_target``.

  The ROC curve is the polyline through the operating points of ``roc_curve``. Where it is
  vertical at exactly ``fpr_target`` (several thresholds share that FPR) this returns the top of
  the segment, the best sensitivity reachable at that FPR; between two FPRs it interpolates
  linearly along the segment joining them, which a randomised threshold would achieve.
  """
  if not 0 <= fpr_target <= 1:
    raise MetricError(f"fpr_target must lie in [0, 1], got {fpr_target}")
  fpr, tpr, _ = roc_curve(labels, scores)
  k = np.searchsorted(fpr, fpr_target, side="right") - 1  # Last point with fpr <= target.
  if fpr[k] == fpr_target:
    return float(tpr[k])
  step = (fpr_target - fpr[k]) / (fpr[k + 1] - fpr[k])
  return float(tpr[k] + step * (tpr[k + 1] - tpr[k]))


def best_f1(labels, scores) -> tuple[float, float]:
  """(F1, threshold) maximising F1 over all distinct score thresholds.

  Of thresholds with equal F1 the highest is returned.

  Raises:
    MetricError: if there are no positives, for which F1 is 0 at every threshold.
  """
  labels, scores = check(labels, scores)
  num_positive = int(labels.sum())
  if num_positive == 0:
    raise MetricError(f"best_f1 needs positive examples, but all {len(labels)} are negative")
  tps, fps, thresholds = _operating_points(labels, scores)
  f1 = 2 * tps / (tps + fps + num_positive)  # 2TP / (2TP + FP + FN).
  best = int(np.argmax(f1))
  return float(f1[best]), float(thresholds[best])


def _ratio(numerator: int, denominator: int) -> float | None:
  return numerator / denominator if denominator else None


def confusion_at(labels, scores, threshold: float) -> dict[str, int | float | None]:
  """Counts tp/fp/tn/fn for "positive when score >= threshold", with precision, recall and
  specificity; a ratio whose denominator is 0 is None."""
  labels, scores = check(labels, scores)
  predicted = scores >= threshold
  tp = int(np.count_nonzero(predicted & labels))
  fp = int(np.count_nonzero(predicted & ~labels))
  fn = int(np.count_nonzero(~predicted & labels))
  tn = len(labels) - tp - fp - fn
  return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "precision": _ratio(tp, tp + fp),
          "recall": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp)}


def precision_recall_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(precision, recall, thresholds) at every distinct score, led by (1, 0) at threshold +inf.

  Points run from the highest threshold down, the reverse of sklearn's order, and do not stop at
  full recall.

  Raises:
    MetricError: if there are no positives, for which recall is undefined.
  """
  labels, scores = check(labels, scores)
  num_positive = int(labels.sum())
  if num_positive == 0:
    raise MetricError(f"precision_recall_curve needs positive examples, but all {len(labels)} "
                      "are negative")
  tps, fps, thresholds = _operating_points(labels, scores)
  return np.r_[1.0, tps / (tps + fps)], np.r_[0.0, tps / num_positive], np.r_[np.inf, thresholds]


def average_precision(labels, scores) -> float:
  """Sum over thresholds of precision times the recall gained, as sklearn computes it."""
  precision, recall, _ = precision_recall_curve(labels, scores)
  return float(np.sum(np.diff(recall) * precision[1:]))


def calibration_bins(labels, probabilities, bins: int = 10):
  """(mean probability, fraction positive, count) in each of ``bins`` equal-width bins of [0, 1].

  Empty bins have NaN means. The last bin includes 1.

  Raises:
    MetricError: if a probability lies outside [0, 1], e.g. a logit passed by mistake.
  """
  labels, probabilities = check(labels, probabilities)
  if not (isinstance(bins, (int, np.integer)) and bins >= 1):
    raise MetricError(f"bins must be a positive integer, got {bins!r}")
  if probabilities.min() < 0 or probabilities.max() > 1:
    raise MetricError(f"probabilities must lie in [0, 1], got range [{probabilities.min():g}, "
                      f"{probabilities.max():g}]; logits need a sigmoid first")
  which = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
  counts = np.bincount(which, minlength=bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_probability = np.bincount(which, weights=probabilities, minlength=bins) / counts
    fraction_positive = np.bincount(which, weights=labels, minlength=bins) / counts
  return mean_probability, fraction_positive, counts


def expected_calibration_error(labels, probabilities, bins: int = 10) -> float:
  """Count-weighted mean gap between confidence and accuracy over ``calibration_bins``."""
  mean_probability, fraction_positive, counts = calibration_bins(labels, probabilities, bins)
  gaps = np.abs(fraction_positive - mean_probability)
  filled = counts > 0
  return float(np.sum(counts[filled] * gaps[filled]) / counts.sum())


def aggregate(scores, labels, groups: Sequence, how: str = "mean"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Combines per-image predictions into one per group, e.g. a breast ("study/laterality").

  Returns (group ids in sorted order, group scores, group labels). A group's score is the mean or
  max of its scores; its label is the max of its labels, so a breast is positive when any of its
  views is.
  """
  labels, scores = check(labels, scores)
  groups = np.asarray(groups)
  if groups.shape != scores.shape:
    raise MetricError(f"groups must match scores in shape, got {groups.shape} and {scores.shape}")
  if how not in ("mean", "max"):
    raise MetricError(f"how must be 'mean' or 'max', got {how!r}")
  group_ids, inverse = np.unique(groups, return_inverse=True)
  order = np.argsort(inverse, kind="stable")
  starts = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
  group_labels = np.maximum.reduceat(labels[order], starts).astype(np.int64)
  if how == "mean":
    group_scores = np.bincount(inverse, weights=scores) / np.bincount(inverse)
  else:
    group_scores = np.maximum.reduceat(scores[order], starts)
  return group_ids, group_scores, group_labels


def _level_summary(labels: np.ndarray, scores: np.ndarray, num_bootstrap: int, seed: int
                   ) -> dict[str, float | int | None]:
  num_positive = int(labels.sum())
  result = {"num_examples": len(labels), "num_positive": num_positive}
  keys = ["auc", "auc_ci_low", "auc_ci_high", "best_f1", "best_f1_threshold",
          *(f"sens_at_fpr_{fpr}" for fpr in SUMMARY_FPRS)]
  if num_positive in (0, len(labels)):
    return result | dict.fromkeys(keys)
  result["auc"] = auc(labels, scores)
  result["auc_ci_low"], result["auc_ci_high"] = (
      bootstrap_auc_ci(labels, scores, num_bootstrap, seed=seed) if num_bootstrap else (None, None))
  result["best_f1"], result["best_f1_threshold"] = best_f1(labels, scores)
  for fpr in SUMMARY_FPRS:
    result[f"sens_at_fpr_{fpr}"] = sensitivity_at_fpr(labels, scores, fpr)
  return result


def summary(labels, scores, groups: Sequence | None = None, num_bootstrap: int = 1000,
            seed: int = 0) -> dict:
  """Headline metrics as a JSON-ready dict of Python numbers.

  Keys: num_examples, num_positive, auc, auc_ci_low, auc_ci_high (95% percentile bootstrap over
  ``num_bootstrap`` resamples; None when ``num_bootstrap`` is 0), best_f1, best_f1_threshold,
  and sens_at_fpr_{0.1,0.3,0.5}. With ``groups``, the same metrics for the mean-aggregated groups
  sit under "breast". When the labels hold a single class, every metric other than the counts is
  None rather than an error, so a summary of any split can be written.
  """
  labels, scores = check(labels, scores)
  result = _level_summary(labels, scores, num_bootstrap, seed)
  if groups is not None:
    _, group_scores, group_labels = aggregate(scores, labels, groups, how="mean")
    result["breast"] = _level_summary(group_labels.astype(bool), group_scores, num_bootstrap,
                                      seed)
  return result


def paired_difference(labels, scores_a, scores_b, metric=None, num_samples: int = 2000,
                      alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
  """The mean over seeds of ``metric(a) - metric(b)``, with a percentile bootstrap CI over seeds
  and examples, paired by example.

  ``scores_a`` and ``scores_b`` are (seeds, examples): seed s of a against seed s of b, on the
  same examples with ``labels``. Each resample draws seeds with replacement and examples with
  replacement, the same examples for both (the pairing that cancels what is hard about the
  examples themselves), and resamples with a single class are drawn again. ``metric(labels,
  scores)`` defaults to the AUC.
  """
  metric = metric or auc
  labels = np.asarray(labels).astype(bool)
  a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
  if a.ndim != 2 or a.shape != b.shape or a.shape[1] != len(labels):
    raise MetricError(f"scores must both be (seeds, {len(labels)}), got {a.shape} and {b.shape}")
  require_both_classes(labels, "paired_difference")
  if not 0 < alpha < 1:
    raise MetricError(f"alpha must lie in (0, 1), got {alpha}")
  seeds, n = a.shape
  diff = float(np.mean([metric(labels, a[s]) - metric(labels, b[s]) for s in range(seeds)]))
  rng = np.random.default_rng(seed)
  samples = []
  while len(samples) < num_samples:
    rows, idx = rng.integers(0, seeds, seeds), rng.integers(0, n, n)
    y = labels[idx]
    if y.all() or not y.any():
      continue
    samples.append(np.mean([metric(y, a[s, idx]) - metric(y, b[s, idx]) for s in rows]))
  low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
  return {"mean": diff, "ci_low": float(low), "ci_high": float(high)}
