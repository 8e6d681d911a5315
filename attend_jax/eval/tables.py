"""The tables a classifier's predictions are written as, the same for evaluate and predict.

- ``predictions.csv``: one row per image, ``PREDICTION_COLUMNS``. evaluate fills ``label`` (the
  split's truth) and leaves ``path`` and ``rois`` empty; predict fills ``path`` (the DICOM) and
  ``rois`` (JSON: each RoI's box in original pixels, attention weight, detector score) and
  leaves ``label`` empty. ``marks`` (predict's) are what each image's header marks it as
  (``dicom.check_image_kind``), joined by ";": generated_2d, burned_in_annotation, cad_marks.
- ``breasts.csv`` and ``exams.csv`` (``breasts_and_exams``): the views of one breast combined
  (mean and max, ``metrics.aggregate``), and each exam's score, the max over its breasts, with
  the views it used and the standard views it lacks (``L-CC,L-MLO,R-CC`` and ``R-MLO``).

With a calibration (``attend_jax.eval.calibration``), every table also has the calibrated
probability and a flag (1/0) per operating point: in predictions.csv the image's own; in
breasts.csv the mean and max of its views' calibrated probabilities, and a flag where any of its
views is flagged; in exams.csv the calibrated mean of the breast that gives its ``probability``,
the max over its images, and a flag where any of its images is flagged. Without one (an old
run, a converted checkpoint) those columns are empty. As rows (``breasts_and_exams``, and
predict's predictions.json) the calibrated values are None where empty, and the flags one
``flags`` dict ({operating point: bool}, or None), as an image's are; ``csv_row`` writes it as
the ``flag_*`` columns.
"""

from __future__ import annotations

import collections
import csv
import json
import os
from collections.abc import Sequence

import numpy as np

from attend_jax.eval import calibration, metrics

FLAG_COLUMNS = tuple(f"flag_{name}" for name in calibration.FLAGS)
PREDICTION_COLUMNS = ("image_id", "study_id", "laterality", "view", "label", "probability",
                      "probability_calibrated", *FLAG_COLUMNS, "path", "rois", "marks")
BREAST_COLUMNS = ("study_id", "laterality", "views", "probability_mean", "probability_max",
                  "probability_calibrated_mean", "probability_calibrated_max", *FLAG_COLUMNS)
EXAM_COLUMNS = ("study_id", "breasts", "probability", "side", "views", "missing_views",
                "probability_calibrated", "probability_calibrated_max", *FLAG_COLUMNS)
# A screening exam's four views; exams.csv names those it lacks.
STANDARD_VIEWS = ("L-CC", "L-MLO", "R-CC", "R-MLO")


def read_marks(text: str | None) -> list[str]:
  """A ``marks`` cell of predictions.csv as a list (an older table without the column: [])."""
  return [m for m in (text or "").split(";") if m]


class PredictionsCsv:
  """``predictions.csv``, written row by row and flushed after each, so that a crash keeps
  every row written so far."""

  def __init__(self, path: str | os.PathLike):
    self._file = open(path, "w", newline="")
    self._csv = csv.DictWriter(self._file, fieldnames=PREDICTION_COLUMNS, restval="")
    self._csv.writeheader()
    self._file.flush()

  def write(self, row: dict) -> None:
    """One image: its ids and ``probability``, and any of ``label``, ``path``, ``rois``,
    ``probability_calibrated``, ``flags`` ({operating point: bool}); the last two may be
    None (no calibration); ``marks`` (a list, or None)."""
    row = dict(row)
    flags = row.pop("flags", None)
    unknown = set(row) - set(PREDICTION_COLUMNS)
    if unknown:
      raise ValueError(f"predictions.csv has no columns {sorted(unknown)}")
    out = dict(row, probability=f"{float(row['probability']):.6f}") | flag_cells(flags)
    if row.get("probability_calibrated") is not None:
      out["probability_calibrated"] = f"{float(row['probability_calibrated']):.6f}"
    if "rois" in row:
      out["rois"] = json.dumps(row["rois"], separators=(",", ":"))
    if row.get("marks") is not None:
      out["marks"] = ";".join(row["marks"])
    self._csv.writerow(out)
    self._file.flush()

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> PredictionsCsv:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def flag_cells(flags: dict[str, bool] | None) -> dict[str, str]:
  """A table's flag columns: 1 or 0 per operating point, empty without a calibration."""
  if flags is None:
    return dict.fromkeys(FLAG_COLUMNS, "")
  return {f"flag_{name}": int(bool(flags[name])) for name in calibration.FLAGS}


def read_flags(row: dict) -> dict[str, bool] | None:
  """The flags of a predictions.csv row; None where its flag columns are empty or absent (no
  calibration, a table of before calibration)."""
  cells = [row.get(column) or "" for column in FLAG_COLUMNS]
  if not all(cells):
    return None
  return {name: cell == "1" for name, cell in zip(calibration.FLAGS, cells)}


def csv_row(row: dict) -> dict:
  """A breast or exam row as its table's columns: its ``flags`` as ``flag_*``."""
  return {k: v for k, v in row.items() if k != "flags"} | flag_cells(row.get("flags"))


def breasts_and_exams(images: Sequence[dict]) -> tuple[list[dict], list[dict]]:
  """Per breast (the views of one study and side: mean and max) and per exam (the max over its
  breasts of the breast mean, and that breast's side) from per-image ``study_id``,
  ``laterality``, ``probability`` and ``view``; with every image's ``probability_calibrated``
  and ``flags``, their columns too (the module's docstring). Images without a laterality stay
  out of both. An exam with views missing is still one row: ``views`` names the side and view
  of the images it used (``L-?`` for one without a view), ``missing_views`` the standard views
  it lacks."""
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
  seen: dict[str, set[str]] = {}
  for im in sided:
    seen.setdefault(im["study_id"], set()).add(f"{im['laterality']}-{im.get('view') or '?'}")
  exam_rows = []
  for study, rows in by_study.items():
    top = max(rows, key=lambda r: r["probability_mean"])
    exam_rows.append({"study_id": study, "breasts": len(rows),
                      "probability": top["probability_mean"], "side": top["laterality"],
                      "views": ",".join(sorted(seen[study])),
                      "missing_views": ",".join(v for v in STANDARD_VIEWS
                                                if v not in seen[study])})
  _add_calibrated(sided, keys, breast_rows, exam_rows)
  return breast_rows, exam_rows


def _add_calibrated(sided: Sequence[dict], keys: Sequence[tuple], breast_rows: list[dict],
                    exam_rows: list[dict]) -> None:
  """The calibrated values and flags of the breast and exam rows, in place: None unless every
  image of the breast or exam has a calibrated probability and flags."""
  by_breast: dict[tuple, list[dict]] = collections.defaultdict(list)
  for im, key in zip(sided, keys):
    by_breast[key].append(im)

  def columns(images: list[dict]) -> dict:
    if any(im.get("probability_calibrated") is None or im.get("flags") is None
           for im in images):
      return {"mean": None, "max": None, "flags": None}
    values = [float(im["probability_calibrated"]) for im in images]
    return {"mean": float(np.mean(values)), "max": max(values),
            "flags": {name: any(im["flags"][name] for im in images)
                      for name in calibration.FLAGS}}

  for row in breast_rows:
    got = columns(by_breast[row["study_id"], row["laterality"]])
    row.update(probability_calibrated_mean=got["mean"], probability_calibrated_max=got["max"],
               flags=got["flags"])
  for row in exam_rows:
    study = row["study_id"]
    got = columns([im for (s, _), ims in by_breast.items() if s == study for im in ims])
    side = columns(by_breast[study, row["side"]])
    row.update(probability_calibrated=side["mean"], probability_calibrated_max=got["max"],
               flags=got["flags"])


# The image-level table of the NYU screening-mammography meta-repository
# (github.com/nyukat/mammography_metarepository, README "How do I add my own model?": a CSV with
# columns image_index, malignant_pred, malignant_label; its evaluation/score.py reads it with
# pandas). One dot in the name: score.py names its figures after the part before the first.
METAREPOSITORY_FILE = "metarepository_image_level.csv"
METAREPOSITORY_COLUMNS = ("image_index", "malignant_pred", "malignant_label")


def write_metarepository(path: str | os.PathLike, image_ids: Sequence[str], probabilities,
                         labels) -> None:
  """One row per image: its id, its raw probability of cancer and its 0/1 label."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(METAREPOSITORY_COLUMNS)
    w.writerows((image_id, f"{float(p):.6f}", int(y))
                for image_id, p, y in zip(image_ids, probabilities, labels, strict=True))
