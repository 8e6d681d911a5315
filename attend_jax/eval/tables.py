"""The tables a classifier's predictions are written as, the same for evaluate and predict.

- ``predictions.csv``: one row per image, ``PREDICTION_COLUMNS``. evaluate fills ``label`` (the
  split's truth) and leaves ``path`` and ``rois`` empty; predict fills ``path`` (the DICOM) and
  ``rois`` (JSON: each RoI's box in original pixels, attention weight, detector score) and
  leaves ``label`` empty.
- ``breasts.csv`` and ``exams.csv`` (``breasts_and_exams``): the views of one breast combined
  (mean and max, ``metrics.aggregate``), and each exam's score, the max over its breasts.
"""

from __future__ import annotations

import collections
import csv
import json
import os
from collections.abc import Sequence

import numpy as np

from attend_jax.eval import metrics

PREDICTION_COLUMNS = ("image_id", "study_id", "laterality", "view", "label", "probability",
                      "path", "rois")
BREAST_COLUMNS = ("study_id", "laterality", "views", "probability_mean", "probability_max")
EXAM_COLUMNS = ("study_id", "breasts", "probability", "side")


class PredictionsCsv:
  """``predictions.csv``, written row by row and flushed after each, so that a crash keeps
  every row written so far."""

  def __init__(self, path: str | os.PathLike):
    self._file = open(path, "w", newline="")
    self._csv = csv.DictWriter(self._file, fieldnames=PREDICTION_COLUMNS, restval="")
    self._csv.writeheader()
    self._file.flush()

  def write(self, row: dict) -> None:
    """One image: its ids and ``probability``, and any of ``label``, ``path``, ``rois``."""
    unknown = set(row) - set(PREDICTION_COLUMNS)
    if unknown:
      raise ValueError(f"predictions.csv has no columns {sorted(unknown)}")
    out = dict(row, probability=f"{float(row['probability']):.6f}")
    if "rois" in row:
      out["rois"] = json.dumps(row["rois"], separators=(",", ":"))
    self._csv.writerow(out)
    self._file.flush()

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> PredictionsCsv:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def breasts_and_exams(images: Sequence[dict]) -> tuple[list[dict], list[dict]]:
  """Per breast (the views of one study and side: mean and max) and per exam (the max over its
  breasts of the breast mean, and that breast's side) from per-image ``study_id``,
  ``laterality`` and ``probability``. Images without a laterality stay out of both."""
  sided = [im for im in images if im["laterality"] in ("L", "R")]
  if not sided:
    return [], []
  keys = [(im["study_id"], im["laterality"]) for im in sided]
  breasts = sorted(set(keys))  # Group i of metrics.aggregate is breasts[i].
  number = {key: i for i, key in enumerate(breasts)}
  groups = [number[key] for key in keys]
  probs = np.array([im["probability"] for im in sided], np.float64)
  no_labels = np.zeros(len(sided), np.int64)  # Tables of predictions: no truth to combine.
  _, means, _ = metrics.aggregate(probs, no_labels, groups, how="mean")
  _, maxes, _ = metrics.aggregate(probs, no_labels, groups, how="max")
  views = collections.Counter(keys)
  breast_rows = [{"study_id": study, "laterality": side, "views": views[study, side],
                  "probability_mean": float(m), "probability_max": float(x)}
                 for (study, side), m, x in zip(breasts, means, maxes)]
  by_study: dict[str, list[dict]] = {}
  for row in breast_rows:
    by_study.setdefault(row["study_id"], []).append(row)
  exam_rows = []
  for study, rows in by_study.items():
    top = max(rows, key=lambda r: r["probability_mean"])
    exam_rows.append({"study_id": study, "breasts": len(rows),
                      "probability": top["probability_mean"], "side": top["laterality"]})
  return breast_rows, exam_rows
