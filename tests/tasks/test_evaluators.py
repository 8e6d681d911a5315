"""Each task's evaluator (``Task.write``), which train-time evaluation and ``attend_jax.evaluate``
both call: the metrics it writes, against values worked out by hand for small predictions, and
every file its report links."""

import csv
import json
import re

import numpy as np
import pytest

from attend_jax.eval import calibration, metrics
from attend_jax.tasks import classify, detect
from configs import demo

import helpers

SPLIT = "train"


@pytest.fixture(scope="module")
def data_dir(tiny_data):
  return tiny_data


def _config(data_dir, detector: bool = False):
  c = demo.get_config("smoke,detector" if detector else "smoke")
  c.data.dir, c.data.name = str(data_dir), "synthetic_96"
  return c


def _ids(n):
  return [{"image_id": f"im{i}", "study_id": f"s{i // 2}", "laterality": "LR"[i % 2],
           "view": "CC"} for i in range(n)]


def _report_links(out):
  text = (out / "report.md").read_text()
  links = re.findall(r"\]\(([^)]+)\)", text)
  for link in links:
    assert (out / link).is_file(), link
  return set(links)


# Four images: a lesion found by the best box (0.9), a lesion the only box misses (0.8), a
# normal image with a false mark (0.7) and a normal image with no box. Padding rows are invalid.
_LESION = [10.0, 10.0, 30.0, 30.0]
_OFF = [60.0, 60.0, 80.0, 80.0]


def _detector_pred():
  boxes = np.zeros((4, 3, 4))
  scores = np.zeros((4, 3))
  valid = np.zeros((4, 3), bool)
  boxes[0, :2], scores[0, :2], valid[0, :2] = [_OFF, _LESION], [0.2, 0.9], True
  boxes[1, 0], scores[1, 0], valid[1, 0] = _OFF, 0.8, True
  boxes[2, 0], scores[2, 0], valid[2, 0] = _OFF, 0.7, True
  lesions = np.zeros((4, 2, 4))
  lesions[:2, 0] = _LESION
  mask = np.zeros((4, 2), bool)
  mask[:2, 0] = True
  return {"boxes": boxes, "scores": scores, "valid": valid, "lesion_boxes": lesions,
          "lesion_mask": mask, "label": np.array([1, 1, 0, 0]), "index": np.arange(4),
          "ids": _ids(4)}


def test_the_detector_evaluator_writes_its_metrics_tables_curves_gallery_and_report(
    data_dir, tmp_path):
  task = detect.Detect(_config(data_dir, detector=True))
  summary = task.write(_detector_pred(), tmp_path, SPLIT, {"model": "m"}, gallery=2)
  assert json.loads((tmp_path / "metrics.json").read_text()) == summary
  assert (summary["num_images"], summary["num_lesions"], summary["num_detections"]) == (4, 2, 4)
  # One of two lesions is hit by its image's best box, and by nothing else.
  assert summary["recall@1_iou0.3"] == summary["recall@10_iou0.5"] == 0.5
  # At 1 false mark per image the 0.9 box has found its lesion (0.2, 0.8 and 0.7 are misses).
  assert summary["froc_sens@1fp"] == 0.5
  # Pooled by score: 0.9 hit, then 0.8, 0.7, 0.2 false: precision 1 up to recall 0.5, then
  # nothing more is found. AP samples 101 recall points; 51 of them (0 ... 0.5) score 1.
  assert summary["map50"] == pytest.approx(51 / 101)
  assert summary["split"] == SPLIT and summary["model"] == "m"
  with open(tmp_path / "detections.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(r["image_id"], r["rank"], r["score"]) for r in rows] == [
      ("im0", "0", "0.90000"), ("im0", "1", "0.20000"), ("im1", "0", "0.80000"),
      ("im2", "0", "0.70000")]
  assert _report_links(tmp_path) == {"froc.png", "pr.png", "gallery.png", "detections.csv",
                                     "metrics.json"}
  assert "| map50 | 0.505 |" in (tmp_path / "report.md").read_text()
  assert task.headline(summary).startswith("mAP@0.5 0.505, recall@3 (IoU 0.3) 0.500")


def test_the_detector_gallery_shows_found_and_missed_lesions_and_false_marks(data_dir):
  rows = detect.Detect(_config(data_dir, detector=True)).gallery(_detector_pred(), SPLIT, 2)
  found, missed, false_marks = rows.values()
  assert [t.caption for t in found] == ["top 0.90"]
  assert [t.caption for t in missed] == ["top 0.80"]
  assert [t.caption for t in false_marks] == ["top 0.70", "no box"]
  np.testing.assert_array_equal(found[0].boxes, [_LESION, _OFF])  # Best first.
  np.testing.assert_array_equal(found[0].truth, [_LESION])
  assert len(false_marks[1].truth) == 0


def test_a_split_without_lesions_is_reported_without_curves(data_dir, tmp_path):
  pred = _detector_pred()
  pred["lesion_mask"][:] = False
  summary = detect.Detect(_config(data_dir, detector=True)).write(pred, tmp_path, SPLIT, gallery=0)
  assert summary["map50"] is None and summary["froc"] is None
  assert _report_links(tmp_path) == {"detections.csv", "metrics.json"}
  assert "No lesion in this split" in (tmp_path / "report.md").read_text()


def _classifier_pred(n=8, k=3):
  labels = np.array([1, 0] * (n // 2))
  probs = np.linspace(0.95, 0.05, n)  # Cancers 0.95, 0.69, ...; normals 0.82, 0.56, ...
  rois = np.tile([[48.0, 48.0, 40.0, 40.0]], (n, k, 1))
  attention = np.tile(np.arange(1.0, k + 1), (n, 1))
  ids = _ids(n)
  return {"label": labels, "prob": probs, "index": np.arange(n), "ids": ids, "rois": rois,
          "attention": attention, "breast": [f"{i['study_id']}/{i['laterality']}" for i in ids]}


def _auc(labels, scores):
  """The probability that a random cancer outscores a random normal (ties count half)."""
  pos, neg = scores[labels == 1], scores[labels == 0]
  return float(np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])))


def test_the_classifier_evaluator_writes_its_metrics_table_curves_gallery_and_report(
    data_dir, tmp_path):
  pred = _classifier_pred()
  task = classify.Classify(_config(data_dir))
  summary = task.write(pred, tmp_path, SPLIT, {"model": "m"}, gallery=2)
  assert json.loads((tmp_path / "metrics.json").read_text()) == summary
  assert summary["auc"] == pytest.approx(_auc(pred["label"], pred["prob"]))
  c = summary["confusion_at_best_f1"]
  assert c["tp"] + c["fn"] == 4 and c["fp"] + c["tn"] == 4
  with open(tmp_path / "predictions.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["image_id"] for r in rows] == [i["image_id"] for i in pred["ids"]]
  assert [int(r["label"]) for r in rows] == pred["label"].tolist()
  # No calibration: its columns are empty, and report.md says so.
  assert {r["probability_calibrated"] + r["flag_spec90"] for r in rows} == {""}
  assert "ece_calibrated" not in summary
  assert "no calibration" in (tmp_path / "report.md").read_text()
  assert summary["ece"] == pytest.approx(metrics.expected_calibration_error(pred["label"],
                                                                            pred["prob"]))
  assert _report_links(tmp_path) == {"roc.png", "pr.png", "calibration.png", "gallery.png",
                                     "predictions.csv", "metrics.json",
                                     "metarepository_image_level.csv"}
  assert task.headline(summary).startswith(f"AUC {summary['auc']:.3f} (breast ")
  rows = task.gallery(pred, SPLIT, 2)
  true_pos, false_pos, false_neg = rows.values()
  assert [t.caption for t in true_pos] == ["p=0.95", "p=0.69"]
  assert [t.caption for t in false_pos] == ["p=0.82", "p=0.56"]
  assert [t.caption for t in false_neg] == ["p=0.18", "p=0.44"]
  # RoIs cx cy w h -> x0 y0 x1 y1; attention scaled so the most attended RoI is 1.
  np.testing.assert_allclose(true_pos[0].boxes, [[28, 28, 68, 68]] * 3)
  np.testing.assert_allclose(true_pos[0].weights, [1 / 3, 2 / 3, 1])


def test_a_one_class_split_is_reported_without_curves(data_dir, tmp_path):
  pred = _classifier_pred()
  pred["label"][:] = 0
  summary = classify.Classify(_config(data_dir)).write(pred, tmp_path, SPLIT)
  assert summary["auc"] is None and "confusion_at_best_f1" not in summary
  assert _report_links(tmp_path) == {"predictions.csv", "metrics.json",
                                     "metarepository_image_level.csv"}


def test_the_classifier_evaluator_reports_the_calibrated_probability_flags_and_ece(
    data_dir, tmp_path):
  pred = _classifier_pred()
  # Fitted on other (validation) predictions: over-confident ones, so that T > 1.
  val_labels = np.array([1, 0, 1, 0, 1, 0, 0, 1])
  val = np.array([0.99, 0.98, 0.97, 0.02, 0.96, 0.03, 0.01, 0.04])
  fitted = calibration.fit(val_labels, val, split="val")
  summary = classify.Classify(_config(data_dir)).write(pred, tmp_path, SPLIT, gallery=0,
                                                       calibration=fitted)
  want = fitted.calibrated(pred["prob"])
  assert summary["ece"] == pytest.approx(metrics.expected_calibration_error(pred["label"],
                                                                            pred["prob"]))
  assert summary["ece_calibrated"] == pytest.approx(
      metrics.expected_calibration_error(pred["label"], want))
  assert summary["calibration"] == {"temperature": fitted.temperature,
                                    "fitted_on": {"split": "val", "num_examples": 8,
                                                  "num_positive": 4}}
  for name, point in summary["operating_points"].items():  # The validation's thresholds.
    assert point["threshold"] == fitted.thresholds[name]
    assert point == {"threshold": fitted.thresholds[name],
                     **metrics.confusion_at(pred["label"], pred["prob"], point["threshold"])}
  with open(tmp_path / "predictions.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  np.testing.assert_allclose([float(r["probability_calibrated"]) for r in rows], want, atol=1e-6)
  for name in calibration.FLAGS:
    assert [r[f"flag_{name}"] for r in rows] == [
        str(int(p >= fitted.thresholds[name])) for p in pred["prob"]]
  with open(tmp_path / "metarepository_image_level.csv", newline="") as f:
    meta = list(csv.reader(f))
  assert meta[0] == ["image_index", "malignant_pred", "malignant_label"]
  assert [(r[0], float(r[1]), int(r[2])) for r in meta[1:]] == [
      (i["image_id"], pytest.approx(p, abs=1e-6), y)
      for i, p, y in zip(pred["ids"], pred["prob"], pred["label"])]
  text = (tmp_path / "report.md").read_text()
  assert f"{summary['ece']:.3f} raw, {summary['ece_calibrated']:.3f} calibrated" in text
  assert "| spec90 |" in text and "| best_f1 |" in text
  pixels = helpers.png_rgb(tmp_path / "calibration.png")
  assert pixels.shape[:2] == (780, 660)
  assert helpers.has_colour(pixels[:round(0.7 * 780)], helpers.C1)  # The calibrated curve.


def test_fit_calibration_on_a_one_class_split_says_so_and_gives_none(data_dir, capsys):
  pred = _classifier_pred()
  pred["label"][:] = 0
  assert classify.Classify(_config(data_dir)).fit_calibration(pred, "val") is None
  assert ("The val split holds one class only (8 images, 0 cancers): no calibration"
          in capsys.readouterr().out)
  pred["label"][:2] = 1
  assert classify.Classify(_config(data_dir)).fit_calibration(pred, "val") is not None
  assert detect.Detect(_config(data_dir, detector=True)).fit_calibration(pred, "val") is None
