"""A classifier's calibration and operating points, fitted on its validation split.

Temperature scaling (Guo et al. 2017): one scalar ``T`` divides the logit of the model's
probability, ``p_calibrated = sigmoid(logit(p) / T)``, chosen to minimise the negative
log-likelihood of the validation labels. It keeps the order of the scores (the AUC is the same)
and only moves them towards what the validation split's frequencies say.

Operating points, also from the validation split alone: the threshold whose specificity is at
least 0.9 (``spec90``) and 0.8 (``spec80``) with the highest sensitivity, and the best-F1
threshold (``best_f1``). Thresholds are on the **raw** probability (an image is flagged when
``probability >= threshold``): a flag then repeats exactly the decision measured on validation.
Each lies midway between the lowest flagged and the highest unflagged validation score, so that
no validation image sits on it (a score that moves in its last digits, another batch or
machine, flips no flag). Each point also gives ``threshold_calibrated``, the same cut on the
calibrated scale (the scaling keeps order, so the two flag the same images).

A run keeps both in ``calibration.json`` beside its config (``read``, ``write``); predict and
evaluate report the calibrated probability and a flag per operating point from it.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from scipy import optimize, special

from attend_jax import paths
from attend_jax.eval import metrics

FILE = "calibration.json"
SPECIFICITIES = {"spec90": 0.9, "spec80": 0.8}
FLAGS = (*SPECIFICITIES, "best_f1")  # The operating points, in the order of the tables.
# Probabilities are clipped to [EPS, 1 - EPS] (logits of +-27.6) before their logit: a float32
# sigmoid gives exact 0 and 1 from logits beyond about +-17, whose logit would be infinite.
EPS = 1e-12
_LOG_T_BOUNDS = (np.log(1e-2), np.log(1e2))  # Temperatures searched, from 0.01 to 100.
BINS = 10  # Of the expected calibration error.


class CalibrationError(ValueError):
  """A calibration that cannot be fitted (one class only) or read (a malformed file)."""


def logit(probabilities) -> np.ndarray:
  p = np.clip(np.asarray(probabilities, np.float64), EPS, 1 - EPS)
  return special.logit(p)


def scale(probabilities, temperature: float) -> np.ndarray:
  """``sigmoid(logit(p) / temperature)``."""
  return special.expit(logit(probabilities) / temperature)


def _nll(labels: np.ndarray, logits: np.ndarray) -> float:
  """Mean binary cross-entropy of ``logits``, stable for large ones."""
  return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def fit_temperature(labels, probabilities) -> float:
  """The temperature minimising the validation NLL (scipy's bounded Brent search over log T).

  Raises:
    metrics.SingleClassError: if ``labels`` hold one class (the NLL then falls without end as
      the scores are pushed towards that class).
  """
  labels, probabilities = metrics.check(labels, probabilities)
  metrics.require_both_classes(labels, "temperature scaling")
  y, z = labels.astype(np.float64), logit(probabilities)
  found = optimize.minimize_scalar(lambda log_t: _nll(y, z / np.exp(log_t)),
                                   bounds=_LOG_T_BOUNDS, method="bounded")
  return float(np.exp(found.x))


def at_search_limit(temperature: float) -> bool:
  """Whether the fitted temperature sits at an end of the searched range (0.01 to 100): the
  validation split's scores are all alike or perfectly separated, and the NLL kept falling."""
  return bool(np.min(np.abs(np.log(temperature) - np.array(_LOG_T_BOUNDS))) < 1e-3)


def cut_below(scores, score: float) -> float:
  """A threshold that flags the same ``scores`` as ``score`` does: midway between ``score`` and
  the next lower of ``scores`` (``score`` itself where there is none); just above the highest
  score for ``score`` = inf (flag nothing)."""
  scores = np.asarray(scores, np.float64)
  if not np.isfinite(score):
    return float(np.nextafter(scores.max(), np.inf))
  lower = scores[scores < score]
  return float((score + lower.max()) / 2) if len(lower) else float(score)


def threshold_at_specificity(labels, scores, target: float) -> dict:
  """The threshold with the highest sensitivity whose specificity is at least ``target``, of
  those the one of highest specificity (``cut_below`` the lowest score it flags), with the
  sensitivity and specificity reached there. Where only flagging nothing reaches it, the
  threshold lies just above the highest score."""
  fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
  allowed = fpr <= 1 - target + 1e-12
  k = int(np.flatnonzero(allowed & (tpr == tpr[allowed].max()))[0])
  return {"target_specificity": target, "threshold": cut_below(scores, thresholds[k]),
          "sensitivity": float(tpr[k]), "specificity": float(1 - fpr[k])}


@dataclasses.dataclass(frozen=True)
class Calibration:
  """A temperature and the raw-probability thresholds of ``FLAGS``; ``details`` is the rest of
  calibration.json (where it was fitted, ECE and NLL before and after, each point's rates)."""

  temperature: float
  thresholds: dict[str, float]
  details: dict = dataclasses.field(default_factory=dict, compare=False)

  def calibrated(self, probabilities) -> np.ndarray:
    return scale(probabilities, self.temperature)

  def flags(self, probability: float) -> dict[str, bool]:
    """One image's flag per operating point."""
    return {name: bool(probability >= t) for name, t in self.thresholds.items()}

  def to_json(self) -> dict:
    points = self.details.get("operating_points", {})
    rest = {k: v for k, v in self.details.items() if k not in ("temperature", "operating_points")}
    return {"temperature": self.temperature, **rest,
            "operating_points": {name: {**points.get(name, {}), "threshold": t,
                                        "threshold_calibrated": float(self.calibrated([t])[0])}
                                 for name, t in self.thresholds.items()}}

  @classmethod
  def from_json(cls, data: dict, where: str = FILE) -> Calibration:
    try:
      temperature = float(data["temperature"])
      thresholds = {name: float(data["operating_points"][name]["threshold"]) for name in FLAGS}
    except (KeyError, TypeError, ValueError) as e:
      raise CalibrationError(f"{where}: not a calibration file ({type(e).__name__}: {e});"
                             " delete it to predict without calibration.") from None
    if not (np.isfinite(temperature) and temperature > 0):
      raise CalibrationError(f"{where}: temperature {temperature} is not a positive number.")
    return cls(temperature, thresholds, data)


def fit(labels, probabilities, split: str = "val", bins: int = BINS) -> Calibration:
  """The temperature and operating points of one split's labels and raw probabilities.

  Raises:
    metrics.SingleClassError: if the split holds one class only.
  """
  labels, probabilities = metrics.check(labels, probabilities)
  temperature = fit_temperature(labels, probabilities)
  calibrated = scale(probabilities, temperature)
  z, y = logit(probabilities), labels.astype(np.float64)
  points = {name: threshold_at_specificity(labels, probabilities, target)
            for name, target in SPECIFICITIES.items()}
  f1, score = metrics.best_f1(labels, probabilities)
  at = metrics.confusion_at(labels, probabilities, score)
  points["best_f1"] = {"threshold": cut_below(probabilities, score), "f1": f1,
                       "sensitivity": at["recall"], "specificity": at["specificity"]}
  details = {
      "method": "temperature scaling: probability_calibrated = sigmoid(logit(probability) /"
                " temperature), temperature fitted by minimising the NLL on fitted_on's split",
      "thresholds_on": "probability (raw): an image is flagged at an operating point when its"
                       " probability >= threshold; threshold_calibrated is the same cut on"
                       " probability_calibrated",
      "fitted_on": {"split": split, "num_examples": len(labels),
                    "num_positive": int(labels.sum())},
      "temperature_at_search_limit": at_search_limit(temperature),
      "nll": {"before": _nll(y, z), "after": _nll(y, z / temperature)},
      "ece": {"before": metrics.expected_calibration_error(labels, probabilities, bins),
              "after": metrics.expected_calibration_error(labels, calibrated, bins),
              "bins": bins},
      "operating_points": points}
  return Calibration(temperature, {name: points[name]["threshold"] for name in FLAGS}, details)


def write(directory: str | os.PathLike, calibration: Calibration) -> None:
  path = paths.path(directory) / FILE
  path.write_text(json.dumps(calibration.to_json(), indent=2) + "\n")


def read(directory: str | os.PathLike) -> Calibration | None:
  """``DIR/calibration.json``, or None where there is none (a run of before calibration, a
  converted checkpoint, a validation split of one class).

  Raises:
    CalibrationError: if the file is there but not a calibration.
  """
  path = paths.path(directory) / FILE
  if not path.exists():
    return None
  try:
    data = json.loads(path.read_text())
  except ValueError as e:
    raise CalibrationError(f"{path}: not JSON ({e}); delete it to predict without"
                           " calibration.") from None
  return Calibration.from_json(data, str(path))
