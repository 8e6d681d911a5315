"""python -m attend_jax.predict on DICOM folders: outputs, bad files, overlays, aggregation."""

import csv
import json
import pathlib

import numpy as np
import pytest

from attend_jax import inference
from attend_jax import run as run_lib

import helpers


@pytest.fixture(scope="module")
def run(trained_classifier):
  """A tiny model trained for a few steps on synthetic DICOMs with grid RoIs."""
  return trained_classifier


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_predict_cli_on_a_folder_with_a_corrupt_file(run, tmp_path):
  inputs = tmp_path / "in"
  (inputs / "nested").mkdir(parents=True)
  for i, src in enumerate(sorted((run / "dicom" / "images").rglob("*.dcm"))):
    (inputs / ("nested" if i % 2 else "") / src.name).write_bytes(src.read_bytes())
  (inputs / "broken.dcm").write_bytes(b"DICM" + bytes(200))
  out = tmp_path / "out"
  proc = helpers.run("-m", "attend_jax.predict", f"--workdir={run / 'work'}", inputs,
                     tmp_path / "missing.dcm", f"--out={out}", "--overlays", "--batch_size=4")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

  images = _rows(out / "predictions.csv")
  assert len(images) == 24  # 6 studies x 4 views; the corrupt file is not among them.
  assert all(0.0 <= float(r["probability"]) <= 1.0 for r in images)
  assert {(r["laterality"], r["view"]) for r in images} == {(l, v) for l in "LR"
                                                            for v in ("CC", "MLO")}
  rois = json.loads(images[0]["rois"])
  assert len(rois) == 5 and rois[0]["anchor"] and abs(sum(r["attention"] for r in rois) - 1) < 1e-4
  bad = {pathlib.Path(r["path"]).name: r["reason"] for r in _rows(out / "bad_files.csv")}
  assert set(bad) == {"broken.dcm", "missing.dcm"}
  assert bad["missing.dcm"] == "no such file or folder"
  assert len(list((out / "overlays").glob("*.png"))) == 24

  # Breast level: the mean and max of each side's views, from the per-image table.
  by_breast = {}
  for r in images:
    by_breast.setdefault((r["study_id"], r["laterality"]), []).append(float(r["probability"]))
  breasts = _rows(out / "breasts.csv")
  assert len(breasts) == 12
  for b in breasts:
    probs = by_breast[(b["study_id"], b["laterality"])]
    assert float(b["probability_mean"]) == pytest.approx(np.mean(probs), abs=1e-6)
    assert float(b["probability_max"]) == pytest.approx(max(probs), abs=1e-6)
  assert len(_rows(out / "exams.csv")) == 6

  # The same preprocessing and weights as the trainer's own test-split evaluation.
  trained = {r["image_id"]: float(r["probability"])
             for r in _rows(run / "work" / "eval" / "predictions.csv")}
  ours = {r["image_id"]: float(r["probability"]) for r in images}
  assert trained and all(ours[k] == pytest.approx(p, abs=1e-5) for k, p in trained.items())
  # One schema: evaluate's table fills label, predict's path and rois.
  header = lambda path: path.read_text().splitlines()[0].split(",")  # noqa: E731
  assert header(out / "predictions.csv") == header(run / "work" / "eval" / "predictions.csv") == [
      "image_id", "study_id", "laterality", "view", "label", "probability", "path", "rois"]
  assert {r["label"] for r in images} == {""} and all(r["path"] for r in images)
  evaluated = _rows(run / "work" / "eval" / "predictions.csv")
  assert {r["label"] for r in evaluated} <= {"0", "1"} and {r["rois"] for r in evaluated} == {""}


def test_predict_parses_each_file_once_into_the_record_prepare_makes(tmp_path, monkeypatch):
  """The header's ids and the pixels come from one read of the file, and the record is the one
  prepare's own path (which reads it itself) makes of the same example."""
  import pydicom

  from attend_jax.data import dicom, prepare, synthetic

  synthetic.generate(tmp_path / "dicom", 1, seed=3, size_range=(200, 260))  # One study.
  path = sorted((tmp_path / "dicom").rglob("*.dcm"))[0]
  opts = prepare.PrepareOptions(long_side=96)
  reads = []
  real = pydicom.dcmread
  monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
  record = inference.preprocess_file((path, opts, None, "one", dicom.MAX_PIXELS))
  assert [pathlib.Path(r) for r in reads] == [path]
  want = prepare.process_example(inference.example(path, image_id="one"), opts)
  assert len(reads) == 3  # The same example the long way: a header read, then the file.
  assert record.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(record[key], want[key], err_msg=key)


def test_clear_errors_for_a_folder_without_a_model(tmp_path):
  with pytest.raises(run_lib.ModelNotFoundError, match="config.json"):
    run_lib.load(tmp_path)
