"""Temperature scaling and operating points (attend_jax/eval/calibration.py): worked by hand,
on an over-confident model, from the validation split only, and on the cases that cannot be
fitted."""

import json

import numpy as np
import pytest

from attend_jax.eval import calibration, metrics


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def _data(n, seed, positive_fraction=0.5, shift=1.0):
  """Labels and well-calibrated logits: the logit of each example is its true log-odds."""
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < positive_fraction).astype(np.int64)
  # Two Gaussian classes of equal spread: the log-odds are linear in the score.
  scores = rng.normal(np.where(labels == 1, shift, -shift), 1.0)
  log_odds = 2 * shift * scores + np.log(positive_fraction / (1 - positive_fraction))
  return labels, log_odds


def test_ece_and_the_scaling_worked_by_hand():
  # Ten bins, one example in each used one: the gaps are 0.1, 0.3, 0.4 and 0.1.
  labels, probs = [0, 0, 1, 1], [0.15, 0.35, 0.65, 0.85]
  assert metrics.expected_calibration_error(labels, probs) == pytest.approx(
      (0.15 + 0.35 + 0.35 + 0.15) / 4)
  # logit(0.9) = ln 9; halved, ln 3; sigmoid(ln 3) = 3 / 4. And 0.5 stays 0.5 at any T.
  np.testing.assert_allclose(calibration.scale([0.9, 0.5, 0.1], 2.0), [0.75, 0.5, 0.25])


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model():
  labels, log_odds = _data(2000, seed=0)
  confident = _sigmoid(5 * log_odds)  # Logits scaled up x5: right order, far too sure.
  fitted = calibration.fit(labels, confident, split="val")
  assert 4.0 < fitted.temperature < 6.5  # It undoes the x5.
  ece, nll = fitted.details["ece"], fitted.details["nll"]
  assert ece["after"] < 0.5 * ece["before"] and ece["after"] < 0.05
  assert nll["after"] < nll["before"]
  # On fresh examples of the same model, too.
  labels, log_odds = _data(2000, seed=1)
  confident = _sigmoid(5 * log_odds)
  assert (metrics.expected_calibration_error(labels, fitted.calibrated(confident))
          < 0.5 * metrics.expected_calibration_error(labels, confident))
  assert not fitted.details["temperature_at_search_limit"]
  # The scaling keeps the order (saturated scores, clipped, may tie).
  order = np.argsort(confident, kind="stable")
  assert np.all(np.diff(fitted.calibrated(confident)[order]) >= 0)


def _by_brute_force(labels, scores, specificity):
  """Of every cut between two sorted distinct scores (and above them all), the one of highest
  sensitivity whose specificity reaches ``specificity``: (threshold, sensitivity)."""
  labels, scores = np.asarray(labels) == 1, np.asarray(scores)
  distinct = np.unique(scores)
  cuts = [(a + b) / 2 for a, b in zip(distinct[:-1], distinct[1:])] + [distinct[0]]
  best = (np.inf, 0.0)
  for t in cuts:
    flagged = scores >= t
    spec = np.mean(~flagged[~labels])
    sens = np.mean(flagged[labels])
    if spec >= specificity and (sens, t) > (best[1], best[0]):
      best = (t, sens)
  return best


def test_the_thresholds_are_the_validation_s_never_the_test_s():
  val_labels, val_log_odds = _data(300, seed=2, positive_fraction=0.5)
  test_labels, test_log_odds = _data(300, seed=3, positive_fraction=0.1, shift=0.5)
  val, test = _sigmoid(val_log_odds), _sigmoid(test_log_odds)
  fitted = calibration.fit(val_labels, val, split="val")
  for name, target in calibration.SPECIFICITIES.items():
    threshold, sensitivity = _by_brute_force(val_labels, val, target)
    assert fitted.thresholds[name] == pytest.approx(threshold, abs=1e-12)
    point = fitted.details["operating_points"][name]
    assert point["sensitivity"] == pytest.approx(sensitivity)
    assert point["specificity"] >= target
    assert fitted.thresholds[name] != pytest.approx(_by_brute_force(test_labels, test, target)[0])
  # Best F1: the validation's own F1 at the stored threshold, and not the test's threshold.
  f1, _ = metrics.best_f1(val_labels, val)
  at = metrics.confusion_at(val_labels, val, fitted.thresholds["best_f1"])
  assert 2 * at["tp"] / (2 * at["tp"] + at["fp"] + at["fn"]) == pytest.approx(f1)
  assert not np.any(val == fitted.thresholds["best_f1"])  # No validation image sits on it.
  assert fitted.details["fitted_on"] == {"split": "val", "num_examples": 300,
                                         "num_positive": int(val_labels.sum())}


def test_probabilities_of_exactly_0_and_1_give_a_finite_temperature():
  labels = np.array([0, 0, 1, 1, 0, 1])
  probs = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.2], np.float32)  # Saturated float32 sigmoids.
  fitted = calibration.fit(labels, probs)
  assert np.isfinite(fitted.temperature) and fitted.temperature > 1
  calibrated = fitted.calibrated(probs)
  assert np.all(np.isfinite(calibrated)) and 0 < calibrated.min() < calibrated.max() < 1
  json.dumps(fitted.to_json(), allow_nan=False)  # Every number is one JSON can hold.


def test_a_single_class_validation_split_is_a_clear_error():
  with pytest.raises(metrics.SingleClassError,
                     match="temperature scaling needs positive and negative examples, but all 4"
                           " are negative"):
    calibration.fit([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.9])


def test_specificity_reached_only_by_flagging_nothing():
  # The highest score is a negative: any flag costs 1 of 2 negatives, specificity 0.5.
  fitted = calibration.fit([0, 1, 0], [0.9, 0.8, 0.1])
  assert fitted.thresholds["spec90"] > 0.9 and fitted.flags(0.9)["spec90"] is False
  assert fitted.details["operating_points"]["spec90"]["sensitivity"] == 0.0


def test_a_calibration_file_round_trips_and_a_bad_one_is_named(tmp_path):
  labels, log_odds = _data(200, seed=4)
  fitted = calibration.fit(labels, _sigmoid(3 * log_odds))
  calibration.write(tmp_path, fitted)
  data = json.loads((tmp_path / calibration.FILE).read_text())
  assert data["thresholds_on"].startswith("probability (raw)")
  for name in calibration.FLAGS:
    point = data["operating_points"][name]
    assert point["threshold_calibrated"] == pytest.approx(
        float(fitted.calibrated([point["threshold"]])[0]))
  again = calibration.read(tmp_path)
  assert again == fitted and again.details == data
  assert calibration.read(tmp_path / "none") is None

  (tmp_path / calibration.FILE).write_text('{"temperature": 2.0}')
  with pytest.raises(calibration.CalibrationError, match=f"{calibration.FILE}: not a calibration"):
    calibration.read(tmp_path)
  (tmp_path / calibration.FILE).write_text("{")
  with pytest.raises(calibration.CalibrationError, match="not JSON"):
    calibration.read(tmp_path)
  data["temperature"] = -1
  (tmp_path / calibration.FILE).write_text(json.dumps(data))
  with pytest.raises(calibration.CalibrationError, match="not a positive number"):
    calibration.read(tmp_path)


def test_a_perfectly_separated_split_says_its_temperature_is_at_the_search_limit():
  # Every cancer scores above every normal: the NLL falls the lower T goes.
  fitted = calibration.fit([0, 0, 1, 1], [0.3, 0.4, 0.6, 0.7])
  assert fitted.temperature == pytest.approx(0.01, rel=1e-2)
  assert fitted.details["temperature_at_search_limit"]
