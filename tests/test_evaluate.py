"""python -m attend_jax.evaluate on a trained classifier and a trained detector: each writes its
task's evaluation, the files its report links, and one readable line."""

import csv
import json
import re

import numpy as np
import pytest

from attend_jax.data import records

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
  out = tmp_path / "eval"
  metrics, links, printed = _evaluate(trained_classifier / "work", out, "--split=train",
                                      "--gallery=2")
  for key in ("auc", "auc_ci_low", "auc_ci_high", "best_f1", "sens_at_fpr_0.1",
              "sens_at_fpr_0.3", "sens_at_fpr_0.5", "num_examples", "num_positive", "breast",
              "confusion_at_best_f1"):
    assert key in metrics
  c = metrics["confusion_at_best_f1"]
  assert c["tp"] + c["fn"] == metrics["num_positive"]
  total = len(records.data_source(trained_classifier / "data", "synthetic_96", "train"))
  assert c["tp"] + c["fn"] + c["fp"] + c["tn"] == metrics["num_examples"] == total
  assert links == {"roc.png", "pr.png", "calibration.png", "gallery.png", "predictions.csv",
                   "metrics.json"}
  assert len(_rows(out / "predictions.csv")) == total
  assert f"train: AUC {metrics['auc']:.3f}" in printed

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
