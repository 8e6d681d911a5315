"""eval.tables: the one predictions.csv schema, and breast and exam tables from image rows."""

import csv

import pytest

from attend_jax.eval import tables


def test_breasts_and_exams_on_a_hand_made_case():
  images = [
      {"study_id": "s1", "laterality": "L", "probability": 0.2},
      {"study_id": "s1", "laterality": "L", "probability": 0.6},
      {"study_id": "s1", "laterality": "R", "probability": 0.3},
      {"study_id": "P_1/20160720", "laterality": "R", "probability": 0.9},  # An exam id.
      {"study_id": "P_1/20160720", "laterality": "", "probability": 0.99},  # No side.
  ]
  breasts, exams = tables.breasts_and_exams(images)
  assert [(b["study_id"], b["laterality"], b["views"]) for b in breasts] == [
      ("P_1/20160720", "R", 1), ("s1", "L", 2), ("s1", "R", 1)]
  assert breasts[1]["probability_mean"] == pytest.approx(0.4)
  assert breasts[1]["probability_max"] == pytest.approx(0.6)
  assert [(e["study_id"], e["breasts"], e["side"]) for e in exams] == [
      ("P_1/20160720", 1, "R"), ("s1", 2, "L")]
  assert exams[0]["probability"] == pytest.approx(0.9)  # The side-less 0.99 is left out.
  assert exams[1]["probability"] == pytest.approx(0.4)
  assert tables.breasts_and_exams([{"study_id": "s", "laterality": "", "probability": 1}]) == (
      [], [])


def test_predictions_csv_takes_the_schema_s_columns_only_and_keeps_rows_as_written(tmp_path):
  path = tmp_path / "predictions.csv"
  table = tables.PredictionsCsv(path)
  table.write({"image_id": "a", "study_id": "s", "laterality": "L", "view": "CC", "label": 1,
               "probability": 0.25})
  with open(path, newline="") as f:  # Flushed before close: a crash keeps the row.
    [row] = list(csv.DictReader(f))
  assert row == {"image_id": "a", "study_id": "s", "laterality": "L", "view": "CC",
                 "label": "1", "probability": "0.250000", "path": "", "rois": ""}
  with pytest.raises(ValueError, match="no columns \\['score'\\]"):
    table.write({"image_id": "b", "probability": 0.5, "score": 1})
  table.close()
