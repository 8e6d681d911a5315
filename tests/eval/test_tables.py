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


def test_an_exam_with_missing_views_is_one_row_that_names_the_views_it_used():
  images = [
      {"study_id": "s1", "laterality": "L", "view": "CC", "probability": 0.2},
      {"study_id": "s1", "laterality": "L", "view": "MLO", "probability": 0.4},
      {"study_id": "s1", "laterality": "R", "view": "CC", "probability": 0.9},  # No R-MLO.
      {"study_id": "s1", "laterality": "", "view": "MLO", "probability": 0.9},  # No side: out.
      {"study_id": "s2", "laterality": "R", "view": "", "probability": 0.5},  # No view.
      {"study_id": "s3", "laterality": "L", "view": "CC", "probability": 0.1},
      {"study_id": "s3", "laterality": "L", "view": "MLO", "probability": 0.1},
      {"study_id": "s3", "laterality": "R", "view": "CC", "probability": 0.1},
      {"study_id": "s3", "laterality": "R", "view": "MLO", "probability": 0.1},
  ]
  _, exams = tables.breasts_and_exams(images)
  assert [(e["study_id"], e["breasts"], e["views"], e["missing_views"]) for e in exams] == [
      ("s1", 2, "L-CC,L-MLO,R-CC", "R-MLO"),
      ("s2", 1, "R-?", "L-CC,L-MLO,R-CC,R-MLO"),
      ("s3", 2, "L-CC,L-MLO,R-CC,R-MLO", "")]
  assert exams[0]["probability"] == pytest.approx(0.9) and exams[0]["side"] == "R"
  assert set(tables.csv_row(exams[0])) == set(tables.EXAM_COLUMNS)


def test_marks_are_written_joined_and_read_back_as_a_list(tmp_path):
  path = tmp_path / "predictions.csv"
  with tables.PredictionsCsv(path) as table:
    table.write({"image_id": "a", "study_id": "s", "laterality": "L", "view": "CC",
                 "probability": 0.5, "marks": ["generated_2d", "burned_in_annotation"]})
    table.write({"image_id": "b", "study_id": "s", "laterality": "L", "view": "MLO",
                 "probability": 0.5, "marks": []})
  with open(path, newline="") as f:
    cells = [row["marks"] for row in csv.DictReader(f)]
  assert cells == ["generated_2d;burned_in_annotation", ""]
  assert [tables.read_marks(c) for c in cells] == [["generated_2d", "burned_in_annotation"], []]
  assert tables.read_marks(None) == []  # A table written before the column.


def test_predictions_csv_takes_the_schema_s_columns_only_and_keeps_rows_as_written(tmp_path):
  path = tmp_path / "predictions.csv"
  table = tables.PredictionsCsv(path)
  table.write({"image_id": "a", "study_id": "s", "laterality": "L", "view": "CC", "label": 1,
               "probability": 0.25})
  with open(path, newline="") as f:  # Flushed before close: a crash keeps the row.
    [row] = list(csv.DictReader(f))
  assert row == {"image_id": "a", "study_id": "s", "laterality": "L", "view": "CC",
                 "label": "1", "probability": "0.250000", "probability_calibrated": "",
                 "flag_spec90": "", "flag_spec80": "", "flag_best_f1": "", "path": "",
                 "rois": "", "marks": ""}
  assert tables.read_flags(row) is None
  table.write({"image_id": "c", "study_id": "s", "laterality": "R", "view": "CC",
               "probability": 0.5, "probability_calibrated": 0.375,
               "flags": {"spec90": False, "spec80": True, "best_f1": True}})
  with open(path, newline="") as f:
    row = list(csv.DictReader(f))[1]
  assert (row["probability_calibrated"], row["flag_spec90"], row["flag_spec80"],
          row["flag_best_f1"]) == ("0.375000", "0", "1", "1")
  assert tables.read_flags(row) == {"spec90": False, "spec80": True, "best_f1": True}
  with pytest.raises(ValueError, match="no columns \\['score'\\]"):
    table.write({"image_id": "b", "probability": 0.5, "score": 1})
  table.close()


def _calibrated(study, side, p, flags=(False, False, False)):
  return {"study_id": study, "laterality": side, "probability": p,
          "probability_calibrated": p / 2, "flags": dict(zip(("spec90", "spec80", "best_f1"),
                                                             flags))}


def test_breasts_and_exams_carry_the_calibrated_probability_and_the_flags():
  images = [_calibrated("s1", "L", 0.2), _calibrated("s1", "L", 0.6, (False, True, True)),
            _calibrated("s1", "R", 0.3), _calibrated("s2", "R", 0.1),
            dict(_calibrated("s2", "L", 0.3), probability_calibrated=None, flags=None)]
  breasts, exams = tables.breasts_and_exams(images)
  by = {(b["study_id"], b["laterality"]): b for b in breasts}
  left = by["s1", "L"]
  assert left["probability_calibrated_mean"] == pytest.approx(0.2)
  assert left["probability_calibrated_max"] == pytest.approx(0.3)
  assert left["flags"] == {"spec90": False, "spec80": True, "best_f1": True}
  assert by["s1", "R"]["flags"]["spec80"] is False
  # A breast with an image of no calibration: no calibrated values, no flags.
  assert by["s2", "L"]["probability_calibrated_max"] is None and by["s2", "L"]["flags"] is None
  assert by["s2", "R"]["probability_calibrated_max"] == pytest.approx(0.05)
  s1, s2 = exams
  assert s1["side"] == "L" and s1["probability_calibrated"] == pytest.approx(0.2)
  assert s1["probability_calibrated_max"] == pytest.approx(0.3)
  assert s1["flags"] == {"spec90": False, "spec80": True, "best_f1": True}
  assert s2["side"] == "L" and s2["probability_calibrated"] is None and s2["flags"] is None
  # As table rows: the flags as 1/0 columns, empty without calibration.
  assert list(tables.csv_row(left)) == list(tables.BREAST_COLUMNS)
  assert list(tables.csv_row(s1)) == list(tables.EXAM_COLUMNS)
  assert [tables.csv_row(s1)[c] for c in tables.FLAG_COLUMNS] == [0, 1, 1]
  assert [tables.csv_row(s2)[c] for c in tables.FLAG_COLUMNS] == ["", "", ""]


def test_the_metarepository_table(tmp_path):
  path = tmp_path / tables.METAREPOSITORY_FILE
  tables.write_metarepository(path, ["0_L-CC", "0_R-CC"], [0.0081, 0.99104], [0, 1])
  assert path.read_text().splitlines() == ["image_index,malignant_pred,malignant_label",
                                           "0_L-CC,0.008100,0", "0_R-CC,0.991040,1"]
