"""python -m attend_jax.evaluate on a trained classifier and a trained detector: each writes its
task's evaluation, the files its report links, and one readable line."""

import csv
import json
import re

import numpy as np
import pytest

from attend_jax.data import records
from attend_jax.eval import calibration

import helpers

pytestmark = pytest.mark.slow  # Each test runs the command on a trained run.


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _evaluate(workdir, out, *extra):
  proc = helpers.run("-m", "attend_jax.evaluate", f"--workdir={workdir}", f"--out={out}", *extra)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  report = (out / "report.md").read_text()
  links = re.findall(r"\]\(([^)]+)\)", report)
  for link in links:
    assert (out / link).is_file(), link
  return json.loads((out / "metrics.json").read_text()), set(links), proc.stdout


def test_a_classifier_s_evaluation_writes_every_artefact(trained_classifier, tmp_path):
  """Of the validation split: the one the run's calibration and operating points come from."""
  out = tmp_path / "eval"
  metrics, links, printed = _evaluate(trained_classifier / "work", out, "--split=val",
                                      "--gallery=2")
  for key in ("auc", "auc_ci_low", "auc_ci_high", "best_f1", "sens_at_fpr_0.1",
              "sens_at_fpr_0.3", "sens_at_fpr_0.5", "num_examples", "num_positive", "breast",
              "confusion_at_best_f1"):
    assert key in metrics
  c = metrics["confusion_at_best_f1"]
  assert c["tp"] + c["fn"] == metrics["num_positive"]
  total = len(records.data_source(trained_classifier / "data", "synthetic_96", "val"))
  assert c["tp"] + c["fn"] + c["fp"] + c["tn"] == metrics["num_examples"] == total
  assert links == {"roc.png", "pr.png", "calibration.png", "gallery.png", "predictions.csv",
                   "metrics.json", "metarepository_image_level.csv"}
  rows = _rows(out / "predictions.csv")
  assert len(rows) == total
  assert f"val: AUC {metrics['auc']:.3f}" in printed

  # The thresholds in calibration.json are those of the validation predictions: each operating
  # point's sensitivity and specificity there, and its cut between two validation scores.
  fitted = calibration.read(trained_classifier / "work")
  labels = np.array([int(r["label"]) for r in rows])
  probs = np.array([float(r["probability"]) for r in rows])
  assert fitted.details["fitted_on"] == {"split": "val", "num_examples": total,
                                         "num_positive": int(labels.sum())}
  again = calibration.fit(labels, probs)
  for name in calibration.FLAGS:
    assert fitted.thresholds[name] == pytest.approx(again.thresholds[name], abs=2e-6)
    point = fitted.details["operating_points"][name]
    assert metrics["operating_points"][name]["recall"] == pytest.approx(point["sensitivity"])
    assert metrics["operating_points"][name]["specificity"] == pytest.approx(
        point["specificity"])
  assert fitted.temperature == pytest.approx(again.temperature, rel=1e-3)
  assert metrics["ece"] == pytest.approx(fitted.details["ece"]["before"], abs=1e-5)
  assert metrics["ece_calibrated"] == pytest.approx(fitted.details["ece"]["after"], abs=1e-5)
  # The run's own test evaluation used the same thresholds: not fitted again on the test split.
  tested = json.loads((trained_classifier / "work" / "eval" / "metrics.json").read_text())
  assert tested["split"] == "test"
  assert {n: p["threshold"] for n, p in tested["operating_points"].items()} == fitted.thresholds
  test_rows = _rows(trained_classifier / "work" / "eval" / "predictions.csv")
  on_test = calibration.fit([int(r["label"]) for r in test_rows],
                            [float(r["probability"]) for r in test_rows])
  assert on_test.thresholds != fitted.thresholds
  # calibration.png: the reliability diagram, raw (C0) and calibrated (C1) curves drawn.
  pixels = helpers.png_rgb(out / "calibration.png")
  assert pixels.shape[:2] == (780, 660)
  top = pixels[:round(0.7 * 780)]
  for colour in (helpers.C0, helpers.C1):
    assert (np.abs(top - np.array(colour)).max(axis=-1) < 0.08).sum() > 20, colour
  with open(out / "metarepository_image_level.csv", newline="") as f:
    meta = list(csv.reader(f))
  assert meta[0] == ["image_index", "malignant_pred", "malignant_label"]
  assert [m[0] for m in meta[1:]] == [r["image_id"] for r in rows]
  assert [(float(m[1]), int(m[2])) for m in meta[1:]] == [
      (pytest.approx(p, abs=1e-6), y) for p, y in zip(probs, labels)]

  proc = helpers.run("-m", "attend_jax.evaluate", f"--workdir={trained_classifier / 'work'}",
                     "--split=nope", f"--out={tmp_path / 'x'}")
  assert proc.returncode == 1 and "no 'nope' split" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_a_detector_s_evaluation_writes_recall_froc_ap_their_curves_and_a_gallery(
    trained_detector, tmp_path):
  out = tmp_path / "eval"
  metrics, links, printed = _evaluate(trained_detector / "work", out, "--split=train")
  train = records.data_source(trained_detector / "data", "synthetic_256", "train")
  assert metrics["num_images"] == len(train)
  assert metrics["num_lesions"] == sum(np.reshape(train[i]["lesion_boxes"], (-1, 4)).shape[0]
                                       for i in range(len(train)))
  for key in ("recall@1_iou0.3", "recall@10_iou0.5", "froc_sens@1fp", "map50"):
    assert 0.0 <= metrics[key] <= 1.0, key
  assert links == {"froc.png", "pr.png", "gallery.png", "detections.csv", "metrics.json"}
  rows = _rows(out / "detections.csv")
  assert len(rows) == metrics["num_detections"]
  for image_id in {r["image_id"] for r in rows}:  # Each image's boxes, best first.
    scores = [float(r["score"]) for r in rows if r["image_id"] == image_id]
    assert scores == sorted(scores, reverse=True)
  assert f"train: mAP@0.5 {metrics['map50']:.3f}" in printed
  # The same evaluation the run wrote of its test split at the end of training.
  trained = json.loads((trained_detector / "work" / "eval" / "metrics.json").read_text())
  assert trained.keys() | {"model"} == metrics.keys()
