"""Evaluation metrics: brute-force and hand-computed checks, ties, single-class inputs."""

import json

import numpy as np
import pytest

from attend_jax.eval import metrics


def _tied_data(seed: int, n: int = 200):
  """Random labels and coarsely rounded scores, so ties are common."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  return labels, np.round(rng.normal(size=n) + labels, 1)


def _pairwise_auc(labels, scores):
  pos, neg = scores[labels == 1], scores[labels == 0]
  diff = pos[:, None] - neg[None, :]
  return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed):
  labels, scores = _tied_data(seed)
  assert metrics.auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


@pytest.mark.parametrize("labels, scores, expected", [
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
    ([0, 1], [0.5, 0.5], 0.5),
    ([1, 0, 1, 0], [3, 2, 2, 1], 7 / 8),  # One tied pair of four counts 1/2.
    ([True, False], [0.0, 1.0], 0.0),
])
def test_auc_small_cases(labels, scores, expected):
  assert metrics.auc(labels, scores) == pytest.approx(expected)


@pytest.mark.parametrize("labels, only", [([1, 1, 1], "positive"), ([0, 0], "negative")])
def test_auc_single_class_raises(labels, only):
  message = f"needs positive and negative.*all {len(labels)} are {only}"
  with pytest.raises(ValueError, match=message):
    metrics.auc(labels, np.arange(len(labels)))


@pytest.mark.parametrize("labels, scores, match", [
    ([0, 1, 2], [0.1, 0.2, 0.3], "0/1"),
    ([0, 1], [0.1], "differ in length"),
    ([0, 1], [0.1, np.nan], "non-finite"),
    ([[0, 1]], [[0.1, 0.2]], "1-D"),
])
def test_bad_inputs_raise_metric_error(labels, scores, match):
  with pytest.raises(metrics.MetricError, match=match):
    metrics.auc(labels, scores)


def test_roc_curve_hand_computed_with_a_tie():
  fpr, tpr, thresholds = metrics.roc_curve([0, 1, 0, 1, 1], [0.1, 0.4, 0.4, 0.8, 0.2])
  np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.4, 0.2, 0.1])
  np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
  np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])


def test_sensitivity_at_fpr_interpolates_along_the_roc():
  # ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1) from scores 4 > 3 > 2 > 1.
  labels, scores = [1, 0, 1, 0], [4, 3, 2, 1]
  assert metrics.sensitivity_at_fpr(labels, scores, 0.0) == 0.5  # Top of the vertical segment.
  assert metrics.sensitivity_at_fpr(labels, scores, 0.25) == 0.5
  assert metrics.sensitivity_at_fpr(labels, scores, 0.5) == 1.0
  # A diagonal segment, from a tie between a positive and a negative: (0,0) -> (1,1).
  assert metrics.sensitivity_at_fpr([1, 0], [1, 1], 0.3) == pytest.approx(0.3)
  # (0,0) (0,1/3) (1/2,2/3) (1/2,1) (1,1): FPR 0.25 is halfway along the tied segment.
  assert metrics.sensitivity_at_fpr([0, 1, 0, 1, 1], [0.1, 0.4, 0.4, 0.8, 0.2], 0.25) == (
      pytest.approx(0.5))
  with pytest.raises(metrics.MetricError, match="fpr_target"):
    metrics.sensitivity_at_fpr(labels, scores, 1.5)


@pytest.mark.parametrize("seed", range(5))
def test_best_f1_matches_brute_force(seed):
  labels, scores = _tied_data(seed, n=120)
  expected = []
  for threshold in np.unique(scores):
    c = metrics.confusion_at(labels, scores, threshold)
    expected.append((2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"]), threshold))
  f1, threshold = metrics.best_f1(labels, scores)
  best = max(f for f, _ in expected)
  assert f1 == pytest.approx(best)
  assert threshold == max(t for f, t in expected if f == pytest.approx(best))


def test_confusion_at():
  c = metrics.confusion_at([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5], 0.5)
  assert c == {"tp": 2, "fp": 1, "tn": 1, "fn": 1, "precision": pytest.approx(2 / 3),
               "recall": pytest.approx(2 / 3), "specificity": 0.5}
  assert metrics.confusion_at([0, 1], [0.1, 0.2], 0.5)["precision"] is None


def test_resampled_aucs_match_auc_of_each_resample():
  labels, scores = _tied_data(7, n=60)
  labels = labels.astype(bool)
  _, groups = np.unique(scores, return_inverse=True)
  indices = np.random.default_rng(0).integers(0, 60, size=(20, 60))
  indices[0] = np.flatnonzero(labels)[0]  # One positive drawn 60 times: no AUC.
  got = metrics._resampled_aucs(labels, groups, int(groups.max()) + 1, indices)
  assert np.isnan(got[0])
  for row, value in zip(indices[1:], got[1:]):
    assert value == pytest.approx(metrics.auc(labels[row], scores[row]), abs=1e-12)


def test_bootstrap_ci_contains_auc_narrows_and_is_deterministic():
  small, large = _tied_data(0, n=100), _tied_data(0, n=2000)
  low, high = metrics.bootstrap_auc_ci(*small, num_samples=500)
  assert low < metrics.auc(*small) < high
  large_low, large_high = metrics.bootstrap_auc_ci(*large, num_samples=500)
  assert large_low < metrics.auc(*large) < large_high
  assert large_high - large_low < (high - low) / 2
  assert metrics.bootstrap_auc_ci(*small, num_samples=500) == (low, high)
  assert metrics.bootstrap_auc_ci(*small, num_samples=500, seed=1) != (low, high)


def test_bootstrap_redraws_single_class_resamples():
  # Most resamples of one positive in three examples miss it; they must be redrawn, not kept.
  low, high = metrics.bootstrap_auc_ci([1, 0, 0], [0.9, 0.1, 0.5], num_samples=200)
  assert (low, high) == (1.0, 1.0)


def test_bootstrap_resamples_in_a_few_vectorised_batches(monkeypatch):
  """1000 resamples of 4000 examples in a handful of array passes, none sorted one by one (the
  speed that makes a CI at every evaluation affordable), counted rather than timed."""
  labels, scores = _tied_data(0, n=4000)
  batches = []
  resampled = metrics._resampled_aucs
  monkeypatch.setattr(metrics, "_resampled_aucs",
                      lambda *a: batches.append(len(a[3])) or resampled(*a))
  monkeypatch.setattr(metrics, "auc", lambda *a: pytest.fail("auc of a single resample"))
  metrics.bootstrap_auc_ci(labels, scores, num_samples=1000)
  assert sum(batches) >= 1000 and len(batches) <= 4


def test_aggregate_breast_from_cc_and_mlo():
  groups = ["s1/L", "s1/L", "s1/R", "s1/R", "s2/L"]  # CC and MLO per breast; s2/L has one view.
  scores = [0.2, 0.6, 0.1, 0.3, 0.9]
  labels = [0, 1, 0, 0, 1]  # A lesion seen in only one view still makes the breast positive.
  ids, mean_scores, breast_labels = metrics.aggregate(scores, labels, groups, how="mean")
  np.testing.assert_array_equal(ids, ["s1/L", "s1/R", "s2/L"])
  np.testing.assert_allclose(mean_scores, [0.4, 0.2, 0.9])
  np.testing.assert_array_equal(breast_labels, [1, 0, 1])
  _, max_scores, _ = metrics.aggregate(scores, labels, groups, how="max")
  np.testing.assert_allclose(max_scores, [0.6, 0.3, 0.9])
  with pytest.raises(metrics.MetricError, match="how"):
    metrics.aggregate(scores, labels, groups, how="median")


def test_average_precision_hand_computed():
  # Ranked: + - + -  -> precision 1 at recall 1/2, 2/3 at recall 1.
  assert metrics.average_precision([1, 0, 1, 0], [4, 3, 2, 1]) == pytest.approx(0.5 + 1 / 3)


def test_calibration_bins_and_ece():
  labels, probabilities = [0, 1, 1, 1], [0.05, 0.15, 0.95, 1.0]
  mean, fraction, counts = metrics.calibration_bins(labels, probabilities, bins=2)
  np.testing.assert_array_equal(counts, [2, 2])
  np.testing.assert_allclose(mean, [0.1, 0.975])
  np.testing.assert_allclose(fraction, [0.5, 1.0])
  assert metrics.expected_calibration_error(labels, probabilities, bins=2) == pytest.approx(
      (2 * 0.4 + 2 * 0.025) / 4)
  with pytest.raises(metrics.MetricError, match="logits"):
    metrics.calibration_bins([0, 1], [-2.0, 3.0])


_KEYS = {"auc", "auc_ci_low", "auc_ci_high", "best_f1", "best_f1_threshold", "sens_at_fpr_0.1",
         "sens_at_fpr_0.3", "sens_at_fpr_0.5", "num_examples", "num_positive"}


def test_summary_is_json_ready_with_breast_level():
  labels, scores = _tied_data(3, n=40)
  groups = [f"study{i // 4}/{'LR'[i // 2 % 2]}" for i in range(40)]
  summary = metrics.summary(labels, scores, groups=groups, num_bootstrap=100)
  assert _KEYS <= summary.keys() and _KEYS <= summary["breast"].keys()
  assert summary["breast"]["num_examples"] == 20
  assert summary["auc"] == metrics.auc(labels, scores)
  assert json.loads(json.dumps(summary)) == summary
  for value in [*summary.values(), *summary["breast"].values()]:
    assert type(value) in (int, float, dict)


def test_summary_single_class_gives_none():
  summary = metrics.summary([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], groups=["a", "a", "b", "b"])
  json.dumps(summary)
  assert summary["num_examples"] == 4 and summary["num_positive"] == 0
  assert all(summary[key] is None for key in _KEYS - {"num_examples", "num_positive"})
  assert summary["breast"]["auc"] is None


def test_summary_breast_level_can_be_single_class_alone():
  # Both classes among images, but every breast holds a positive view.
  summary = metrics.summary([0, 1, 1, 0], [0.1, 0.2, 0.3, 0.4], groups=["a", "a", "b", "b"],
                            num_bootstrap=10)
  assert summary["auc"] is not None and summary["breast"]["auc"] is None


# ---------------------------------------------------------------------------------------------
# Against scikit-learn, on random data with many ties.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_scikit_learn(seed):
  from sklearn import metrics as sk

  labels, scores = _tied_data(seed, n=300)
  assert metrics.auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)

  fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
  sk_fpr, sk_tpr, sk_thr = sk.roc_curve(labels, scores, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  np.testing.assert_array_equal(thresholds[1:], sk_thr[1:])  # sklearn >= 1.3 leads with inf too.

  # Best F1 over thresholds: sklearn's precision-recall curve holds the same operating points.
  precision, recall, pr_thr = sk.precision_recall_curve(labels, scores)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  f1_value, f1_threshold = metrics.best_f1(labels, scores)
  assert f1_value == pytest.approx(f1[:-1].max(), abs=1e-12)
  best = pr_thr[np.flatnonzero(np.isclose(f1[:-1], f1[:-1].max(), atol=1e-12))]
  assert f1_threshold == best.max()
  assert f1_value == pytest.approx(sk.f1_score(labels, scores >= f1_threshold), abs=1e-12)

  # Sensitivity at an FPR that is an operating point is the TPR sklearn gives there.
  for k in (len(sk_fpr) // 4, len(sk_fpr) // 2):
    assert metrics.sensitivity_at_fpr(labels, scores, sk_fpr[k]) == pytest.approx(
        sk_tpr[sk_fpr == sk_fpr[k]].max())
  # Between operating points it follows the segment joining sklearn's neighbouring points.
  for target in (0.1, 0.3, 0.5):
    i = np.searchsorted(sk_fpr, target, side="right") - 1
    if sk_fpr[i] == target:
      continue
    expected = sk_tpr[i] + (target - sk_fpr[i]) * (sk_tpr[i + 1] - sk_tpr[i]) / (
        sk_fpr[i + 1] - sk_fpr[i])
    assert metrics.sensitivity_at_fpr(labels, scores, target) == pytest.approx(expected)
