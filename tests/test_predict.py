"""python -m attend_jax.predict on DICOM folders: outputs, bad files, overlays, aggregation."""

import csv
import json
import pathlib

import numpy as np
import pytest

from attend_jax import inference
from attend_jax import run as run_lib
from attend_jax.eval import calibration, tables

from dicom_fixtures import MARKED, REFUSED, reading_room
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
  # Each overlay draws its image's RoIs, each in the colour of its attention weight relative to
  # the largest (the anchor's dashed thin line is left out: its pixels are blended).
  from matplotlib import colormaps
  for row in images[:2]:
    pixels = helpers.png_rgb(out / "overlays" / f"{row['image_id'].replace('/', '__')}.png")
    rois = json.loads(row["rois"])
    top = max(roi["attention"] for roi in rois)
    for roi in (r for r in rois if not r["anchor"]):
      colour = colormaps["plasma"](roi["attention"] / top)[:3]
      assert helpers.has_colour(pixels, colour, tol=0.03), (row["image_id"], roi)

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
      "image_id", "study_id", "laterality", "view", "label", "probability",
      "probability_calibrated", "flag_spec90", "flag_spec80", "flag_best_f1", "path", "rois",
      "marks"]
  assert {r["label"] for r in images} == {""} and all(r["path"] for r in images)
  evaluated = _rows(run / "work" / "eval" / "predictions.csv")
  assert {r["label"] for r in evaluated} <= {"0", "1"} and {r["rois"] for r in evaluated} == {""}
  # The run's calibration (fitted on its validation split at the end of training).
  assert "no calibration" not in proc.stderr
  _assert_calibrated(images, run / "work")
  assert all(e["probability_calibrated"] != "" and e["flag_spec80"] in ("0", "1")
             for e in _rows(out / "exams.csv"))
  for b in breasts:
    views = [r for r in images if (r["study_id"], r["laterality"]) == (b["study_id"],
                                                                      b["laterality"])]
    assert float(b["probability_calibrated_max"]) == pytest.approx(
        max(float(r["probability_calibrated"]) for r in views), abs=1e-6)
    assert b["flag_spec90"] == str(max(int(r["flag_spec90"]) for r in views))


def _assert_calibrated(rows, folder):
  """predictions.csv ``rows`` hold the calibrated probability and the flags of ``folder``'s
  calibration.json."""
  data = json.loads((folder / calibration.FILE).read_text())
  for r in rows:
    p = float(r["probability"])
    assert float(r["probability_calibrated"]) == pytest.approx(
        float(calibration.scale([p], data["temperature"])[0]), abs=2e-6)
    for name in calibration.FLAGS:
      threshold = data["operating_points"][name]["threshold"]
      if abs(p - threshold) > 1e-6:  # The table holds 6 decimals.
        assert r[f"flag_{name}"] == str(int(p >= threshold)), (name, p, threshold)


@pytest.mark.slow
def test_predict_refuses_marks_and_groups_as_a_reading_room_would(run, tmp_path):
  """A study of one file per header case: FOR PROCESSING and tomosynthesis are bad files with
  their reasons, the synthesised 2-D view, burned-in text and CAD marks are predicted and
  marked, and the exam, its R-MLO refused, says which views it used."""
  paths = reading_room(tmp_path / "in")
  out = tmp_path / "out"
  proc = helpers.run("-m", "attend_jax.predict", f"--workdir={run / 'work'}", tmp_path / "in",
                     f"--out={out}", "--batch_size=4")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  bad = {r["path"]: r["reason"] for r in _rows(out / "bad_files.csv")}
  assert set(bad) == {str(paths[name]) for name in REFUSED}
  for name, start in REFUSED.items():
    assert bad[str(paths[name])].startswith(start), bad
  images = {pathlib.Path(r["path"]).stem: r for r in _rows(out / "predictions.csv")}
  assert {name: images[name]["marks"].split(";") for name in images} == MARKED
  assert all(0.0 <= float(r["probability"]) <= 1.0 for r in images.values())
  summary = json.loads((out / "predictions.json").read_text())
  assert {pathlib.Path(im["path"]).stem: im["marks"] for im in summary["images"]} == MARKED
  [exam] = _rows(out / "exams.csv")
  assert (exam["study_id"], exam["breasts"]) == ("RR/20240102", "2")
  assert (exam["views"], exam["missing_views"]) == ("L-CC,L-MLO,R-CC", "R-MLO")
  assert "2 burned_in_annotation, 1 cad_marks, 1 generated_2d" in proc.stderr
  assert "2 files could not be used" in proc.stderr


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


@pytest.mark.slow
def test_the_calibration_travels_with_an_export(run, tmp_path):
  loaded = run_lib.load(run / "work")
  assert loaded.calibration == calibration.read(run / "work") is not None
  export = tmp_path / "export"
  run_lib.save_export(export, loaded.model, loaded.config, loaded.calibration)
  exported = run_lib.load(export)  # What predict --checkpoint=EXPORT loads.
  assert exported.calibration == loaded.calibration
  files = sorted((run / "dicom" / "images").rglob("*.dcm"))[:2]
  images, bad = inference.predict(exported, files, batch_size=2, workers=1)
  assert len(images) == 2 and not bad
  fitted = loaded.calibration
  for im in images:
    assert im["probability_calibrated"] == pytest.approx(
        float(fitted.calibrated([im["probability"]])[0]))
    assert im["flags"] == {name: im["probability"] >= t for name, t in fitted.thresholds.items()}
  # Without calibration.json (a converted checkpoint): None, and the tables leave them empty.
  (export / calibration.FILE).unlink()
  [image], _ = inference.predict(run_lib.load(export), files[:1], batch_size=2, workers=1)
  assert image["probability_calibrated"] is None and image["flags"] is None
  assert image["probability"] == pytest.approx(images[0]["probability"], abs=1e-6)


def test_clear_errors_for_a_folder_without_a_model(tmp_path):
  with pytest.raises(run_lib.ModelNotFoundError, match="config.json"):
    run_lib.load(tmp_path)


def _two_hosts(*args) -> list[str]:
  """``python -m attend_jax.predict ARGS`` as two processes under jax.distributed on localhost,
  as the trainer's two-host test starts them; their outputs."""
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [helpers.start("-m", "attend_jax.predict", *args, extra_env={
      "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [helpers.finish(p) for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def _assert_same_images(rows, want, atol=1e-5, path=lambda p: p):
  """The same images in the same order (``want``'s paths moved by ``path``), with the same ids,
  RoIs, and probabilities and attention weights within ``atol``."""
  assert [r["path"] for r in rows] == [path(r["path"]) for r in want]
  for r, w in zip(rows, want):
    assert {k: r[k] for k in ("image_id", "study_id", "laterality", "view")} == {
        k: w[k] for k in ("image_id", "study_id", "laterality", "view")}
    assert float(r["probability"]) == pytest.approx(float(w["probability"]), abs=atol)
    rois, wanted = json.loads(r["rois"]), json.loads(w["rois"])
    assert [x["box_xyxy"] for x in rois] == [x["box_xyxy"] for x in wanted]
    np.testing.assert_allclose([x["attention"] for x in rois],
                               [x["attention"] for x in wanted], atol=atol)


@pytest.mark.slow
def test_predict_on_two_hosts_and_its_resume_match_one_host(run, tmp_path):
  """Two processes under jax.distributed predict half the files, then, rerun on all of them with
  the same --out, only the rest: the tables are those of one process on all the files, and
  every host's bad files are listed."""
  inputs = tmp_path / "in"
  for i, src in enumerate(sorted((run / "dicom" / "images").rglob("*.dcm"))):
    folder = inputs / ("a" if i < 13 else "b")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / src.name).write_bytes(src.read_bytes())
  for half in "ab":
    (inputs / half / f"broken_{half}.dcm").write_bytes(b"DICM" + bytes(200))
  args = (f"--workdir={run / 'work'}", "--batch_size=2", "--workers=1", "--overlays")
  proc = helpers.run("-m", "attend_jax.predict", *args, inputs, f"--out={tmp_path / 'one'}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  one = {name: _rows(tmp_path / "one" / name)
         for name in ("predictions.csv", "breasts.csv", "exams.csv", "bad_files.csv")}
  assert len(one["predictions.csv"]) == 24 and len(one["bad_files.csv"]) == 2

  hosts = tmp_path / "hosts"
  _two_hosts(*args, inputs / "a", f"--out={hosts}")
  # 14 files, 7 per host: one has 7 images (4 steps of 2), the other 6, and pads the 4th step.
  _assert_same_images(_rows(hosts / "predictions.csv"), one["predictions.csv"][:13])
  assert [pathlib.Path(r["path"]).name for r in _rows(hosts / "bad_files.csv")] == ["broken_a.dcm"]

  outs = _two_hosts(*args, inputs, f"--out={hosts}")
  assert "resuming: 13 of the 26 files are in" in outs[0] and "resuming" not in outs[1]
  _assert_same_images(_rows(hosts / "predictions.csv"), one["predictions.csv"])
  assert _rows(hosts / "bad_files.csv") == one["bad_files.csv"]
  for name, key in (("breasts.csv", "probability_mean"), ("exams.csv", "probability")):
    rows = _rows(hosts / name)
    assert [{k: v for k, v in r.items() if k.startswith("prob") is False} for r in rows] == [
        {k: v for k, v in r.items() if k.startswith("prob") is False} for r in one[name]]
    np.testing.assert_allclose([float(r[key]) for r in rows],
                               [float(r[key]) for r in one[name]], atol=1e-5)
  assert ({p.name for p in (hosts / "overlays").iterdir()}
          == {p.name for p in (tmp_path / "one" / "overlays").iterdir()})


def test_a_rerun_keeps_the_rows_of_the_first_and_drops_a_row_cut_short(tmp_path):
  rows = [{"path": f"/x/{i}.dcm", "image_id": str(i), "study_id": "s", "laterality": "L",
           "view": "CC", "probability": 0.25 * i, "rois": [{"box_xyxy": [0, 0, 1, 1]}],
           "marks": ["generated_2d", "burned_in_annotation"][:i]} for i in range(3)]
  writer = inference.OutputWriter(tmp_path)
  writer.rows(rows)
  with open(tmp_path / "predictions.csv", "a") as f:
    f.write("x,s,L,CC,,0.5,0.4,1,1,1,/x/cut.dcm,[{\"box")  # A kill while the row was written.
  done = inference.read_predictions(tmp_path)
  assert done == [dict(r, probability_calibrated=None, flags=None) for r in rows]
  more = dict(rows[0], path="/x/3.dcm", image_id="3")
  writer = inference.OutputWriter(tmp_path, done=done)
  writer.rows([more])
  assert [r["image_id"] for r in _rows(tmp_path / "predictions.csv")] == ["0", "1", "2", "3"]
  summary = writer.finish(inference.ordered(done + [more], [pathlib.Path("/x/3.dcm")]), [], "m")
  assert [r["image_id"] for r in _rows(tmp_path / "predictions.csv")] == ["3", "0", "1", "2"]
  assert len(summary["images"]) == 4 and not (tmp_path / "predictions.csv.partial").exists()


def test_rows_reach_a_bucket_out_while_predict_runs(gcs, tmp_path):
  """On a bucket --out, host 0 uploads predictions.csv as it grows: a lost VM's resume reads it
  there."""
  import gcs as gcs_emulator

  remote = gcs.path("preds")
  rows = [{"path": f"/x/{i}.dcm", "image_id": str(i), "study_id": "s", "laterality": "R",
           "view": "MLO", "probability": 0.5, "probability_calibrated": 0.25,
           "flags": {"spec90": False, "spec80": True, "best_f1": True}, "rois": [],
           "marks": []}
          for i in range(2)]
  writer = inference.OutputWriter(tmp_path, remote=remote, every_s=0)
  writer.rows(rows[:1])
  gcs_emulator.fresh_listings()
  assert inference.read_predictions(remote) == rows[:1]
  writer.rows(rows[1:])
  gcs_emulator.fresh_listings()
  assert inference.read_predictions(remote) == rows


@pytest.mark.slow
def test_predict_reads_dicoms_on_a_bucket_as_the_same_files_on_disk(run, gcs, tmp_path):
  """``predict gs://b/folder/ gs://b/one.dcm``: the files are read from the bucket, with no
  mount, and give the rows of the same files on disk, naming the gs:// URLs; a missing object is
  a bad file, and a rerun on the same --out resumes from predictions.csv."""
  from attend_jax import paths

  local = tmp_path / "in"
  sources = sorted((run / "dicom" / "images").rglob("*.dcm"))[:5]
  for i, src in enumerate(sources[:4]):
    (local / "folder" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
    (local / "folder" / "ab"[i % 2] / src.name).write_bytes(src.read_bytes())
  # A name twice (as CBIS-DDSM's 1-1.dcm): the ids are the paths from the folder.
  (local / "folder" / "b" / sources[0].name).write_bytes(sources[0].read_bytes())
  (local / "one.dcm").write_bytes(sources[4].read_bytes())
  bucket = paths.path(gcs.path("dicoms"))
  paths.upload(local, bucket)
  args = ("-m", "attend_jax.predict", f"--workdir={run / 'work'}", "--batch_size=2",
          "--workers=1")
  proc = helpers.run(*args, local / "folder", local / "one.dcm", f"--out={tmp_path / 'disk'}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  remote = (f"{bucket}/folder/", f"{bucket}/one.dcm", f"{bucket}/missing.dcm")
  proc = helpers.run(*args, *remote, f"--out={tmp_path / 'bucket'}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert f"warning: {bucket}/missing.dcm: no such file or folder" in proc.stderr

  want, rows = (_rows(tmp_path / out / "predictions.csv") for out in ("disk", "bucket"))
  assert len(want) == 6 and {r["image_id"] for r in want} >= {
      f"folder/a/{sources[0].stem}", f"folder/b/{sources[0].stem}"}
  _assert_same_images(rows, want, atol=1e-6,
                      path=lambda p: p.replace(str(local), str(bucket)))
  assert _rows(tmp_path / "bucket" / "bad_files.csv") == [
      {"path": f"{bucket}/missing.dcm", "reason": "no such file or folder"}]

  proc = helpers.run(*args, *remote[:2], f"--out={tmp_path / 'bucket'}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "resuming: 6 of the 6 files are in" in proc.stderr
  assert _rows(tmp_path / "bucket" / "predictions.csv") == rows


def test_a_bucket_input_that_is_gone_or_unreachable_names_it(gcs, monkeypatch):
  """An object missing when its turn comes is that file's reason; a storage service that does
  not answer is one error naming the input, within seconds."""
  import socket

  from attend_jax import paths
  from attend_jax.data import dicom
  from attend_jax.errors import DicomError

  gone = f"{gcs.path('dicoms')}/gone.dcm"
  with pytest.raises(DicomError, match="no such file") as e:
    dicom.read_dicom(gone)
  assert str(e.value.path) == gone
  monkeypatch.setattr(paths, "PROBE_TIMEOUT_S", 0.2)
  monkeypatch.setattr(paths, "PROBE_PAUSE_S", 0.0)
  with socket.socket() as bound:  # Bound, not listening: the connection is refused.
    bound.bind(("127.0.0.1", 0))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{bound.getsockname()[1]}")
    with pytest.raises(paths.UnreachableError, match="refused") as e:
      inference.find_dicoms(["gs://attend-jax-test/archive/"])
  assert str(e.value).startswith("gs://attend-jax-test/archive/: ")


def test_predict_finds_each_image_s_proposal_file_in_a_bucket_folder(gcs, tmp_path):
  """--proposals=gs://...: the file beside the image's name, or in a folder named as the image's
  folder, as for a local --proposals; one that is in neither is named."""
  from attend_jax import paths
  from attend_jax.data import dicom
  from attend_jax.errors import DataError

  bucket = paths.path(gcs.path("props"))
  (bucket / "study1").mkdir(parents=True)
  (bucket / "study1" / "a_preds.txt").write_text("10 10 4 4 0.9\n")
  (bucket / "b_preds.txt").write_text("10 10 4 4 0.8\n")
  who = dicom.Identity(patient_id="p", study_date="20260101", study_uid="1.2", sop_uid="1.2.3",
                       laterality="L", view="CC")
  a = inference.example(tmp_path / "study1" / "a.dcm", str(bucket), who=who)
  b = inference.example(tmp_path / "study2" / "b.dcm", str(bucket), who=who)
  assert (a.proposals_path, b.proposals_path) == (f"{bucket}/study1/a_preds.txt",
                                                  f"{bucket}/b_preds.txt")
  with pytest.raises(DataError, match="no proposal file c_preds.txt"):
    inference.example(tmp_path / "study1" / "c.dcm", str(bucket), who=who)


def test_a_resume_reads_a_predictions_csv_of_before_calibration(tmp_path):
  old = ["image_id,study_id,laterality,view,label,probability,path,rois",
         'a,s,L,CC,,0.250000,/x/a.dcm,"[{""box_xyxy"":[0,0,1,1]}]"']
  (tmp_path / "predictions.csv").write_text("\n".join(old) + "\n")
  [image] = inference.read_predictions(tmp_path)
  assert image == {"path": "/x/a.dcm", "image_id": "a", "study_id": "s", "laterality": "L",
                   "view": "CC", "probability": 0.25, "probability_calibrated": None,
                   "flags": None, "rois": [{"box_xyxy": [0, 0, 1, 1]}], "marks": []}
  # Rewritten in today's columns, the calibrated ones empty; an image predicted now with a
  # calibration beside it keeps its own.
  now = dict(image, path="/x/b.dcm", image_id="b", probability_calibrated=0.125,
             flags={"spec90": True, "spec80": True, "best_f1": False})
  writer = inference.OutputWriter(tmp_path, done=[image])
  writer.rows([now])
  writer.finish([image, now], [], "m")
  rows = _rows(tmp_path / "predictions.csv")
  assert list(rows[0]) == list(tables.PREDICTION_COLUMNS)
  assert (rows[0]["probability_calibrated"], rows[0]["flag_spec90"]) == ("", "")
  assert (rows[1]["probability_calibrated"], rows[1]["flag_spec90"]) == ("0.125000", "1")
  assert inference.read_predictions(tmp_path) == [image, now]
  # The breast of both images has one without calibration: its calibrated columns are empty.
  [breast] = _rows(tmp_path / "breasts.csv")
  assert breast["probability_calibrated_max"] == "" and breast["flag_spec90"] == ""
