"""predict's DICOM outputs (attend_jax.dicom_out): GSPS, SR and Secondary Capture of hand-made
predictions over synthetic studies, read back with pydicom and highdicom (its ``srread`` for the
SR; highdicom has no reader for presentation states, so pydicom reads those), every reference
checked, and each file checked by dciodvfy (dicom3tools), the IOD validator."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from attend_jax import dicom_out
from attend_jax.data import dicom
from attend_jax.errors import DataError
from attend_jax.eval import tables

import dicom_fixtures
import helpers

GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """One synthetic four-view study (small images)."""
  from attend_jax.data import synthetic

  root = tmp_path_factory.mktemp("dicom-out-study")
  synthetic.generate(root, 1, seed=3, size_range=(200, 260), workers=1)
  return sorted(root.rglob("*.dcm"))


def _predictions(files, calibrated: bool) -> list[dict]:
  """Hand-made predictions of ``files``: an anchor RoI over the whole image and two boxes, one
  of them past the image's edge; with ``calibrated``, item 1's calibrated probability and
  operating-point flags."""
  images = []
  for i, path in enumerate(files):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    who = dicom.identity(ds, path)
    w, h = int(ds.Columns), int(ds.Rows)
    image = {"path": str(path), "image_id": path.stem, "study_id": who.exam,
             "patient_id": who.patient_id, "laterality": who.laterality, "view": who.view,
             "probability": round(0.15 + 0.2 * i, 6),
             "rois": [{"box_xyxy": [0.0, 0.0, float(w), float(h)], "detector_score": None,
                       "attention": 0.2, "anchor": True},
                      {"box_xyxy": [10.5, 20.0, 60.0, 70.5], "detector_score": 0.75,
                       "attention": 0.5, "anchor": False},
                      {"box_xyxy": [w - 30.0, h - 20.0, w + 15.0, h + 5.0],
                       "detector_score": 0.25, "attention": 0.3, "anchor": False}]}
    if calibrated:
      image["probability_calibrated"] = round(image["probability"] / 2, 6)
      image["flags"] = {"spec90": i == 3, "spec80": i >= 2, "best_f1": i >= 1}
    images.append(image)
  return images


def _write(files, out, calibrated=True, overlays=None):
  images = _predictions(files, calibrated)
  breasts, exams = tables.breasts_and_exams(images)
  return images, breasts, exams, dicom_out.write(images, breasts, exams, out, overlays)


def _valid(path: pathlib.Path) -> str:
  """dciodvfy's report of ``path``, asserting it found no error."""
  tool = pathlib.Path(sys.executable).parent / "dciodvfy"
  proc = subprocess.run([str(tool), str(path)], capture_output=True, text=True, check=False)
  report = proc.stdout + proc.stderr
  errors = [line for line in report.splitlines() if line.startswith("Error")]
  assert not errors, f"{path.name}:\n" + "\n".join(errors)
  return report


def _ref(item) -> tuple[str, str]:
  return str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)


def _boxes(polylines) -> list[list[float]]:
  """(x0, y0, x1, y1) of each polyline, (n, 2) points."""
  return [[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] for p in polylines]


def test_a_gsps_per_image_references_it_and_draws_its_rois(study, tmp_path):
  images, _, _, result = _write(study, tmp_path)
  assert not result.failed
  by_source = {w.source: w for w in result.written if w.kind == "GSPS"}
  assert set(by_source) == {im["path"] for im in images}
  for image in images:
    source = pydicom.dcmread(image["path"], stop_before_pixels=True)
    written = by_source[image["path"]]
    assert written.path.parent == tmp_path / str(source.StudyInstanceUID)
    ds = pydicom.dcmread(written.path)
    _valid(written.path)
    assert ds.SOPClassUID == GSPS_CLASS and ds.Modality == "PR"
    # The patient and study of the image; new series and instance UIDs.
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate",
                    "AccessionNumber", "StudyID"):
      assert ds[keyword].value == source[keyword].value, keyword
    assert ds.SOPInstanceUID not in (source.SOPInstanceUID, written.study_uid)
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID == written.sop_uid and written.references == (source.SOPInstanceUID,)
    assert "RESEARCH USE ONLY" in ds.SeriesDescription and "RESEARCH" in ds.ContentDescription
    assert ds.Manufacturer == "attend_jax" and ds.SoftwareVersions
    assert ds.Laterality == image["laterality"]
    # Presentation State Relationship: the source image, by series, instance and class.
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert [_ref(i) for i in series.ReferencedImageSequence] == [
        (source.SOPClassUID, source.SOPInstanceUID)]
    # The image's window, and its look: MONOCHROME2 here (MONOCHROME1 below).
    assert ds.PresentationLUTShape == "IDENTITY"
    if "WindowCenter" in source:
      (voi,) = ds.SoftcopyVOILUTSequence
      assert (voi.WindowCenter, voi.WindowWidth) == (source.WindowCenter, source.WindowWidth)
    layers = {a.GraphicLayer: a for a in ds.GraphicAnnotationSequence}
    assert set(layers) == {"ROIS", "ANCHOR", "TEXT"}
    for annotation in layers.values():
      assert [_ref(i) for i in annotation.ReferencedImageSequence] == [
          (source.SOPClassUID, source.SOPInstanceUID)]
    # Each RoI a closed rectangle inside the image; only the anchor dashed.
    w, h = float(source.Columns), float(source.Rows)
    drawn = {a: [np.reshape(g.GraphicData, (-1, 2)) for g in layers[a].GraphicObjectSequence]
             for a in ("ROIS", "ANCHOR")}
    want = [np.clip(r["box_xyxy"], 0, [w, h, w, h]) for r in image["rois"]]
    np.testing.assert_allclose(_boxes(drawn["ANCHOR"]), want[:1], atol=1e-3)
    np.testing.assert_allclose(_boxes(drawn["ROIS"]), want[1:], atol=1e-3)
    assert all(np.array_equal(p[0], p[-1]) for p in drawn["ROIS"] + drawn["ANCHOR"])
    styles = {a: [g.LineStyleSequence[0].LineDashingStyle for g in
                  layers[a].GraphicObjectSequence] for a in ("ROIS", "ANCHOR")}
    assert styles == {"ROIS": ["SOLID", "SOLID"], "ANCHOR": ["DASHED"]}
    texts = [t.UnformattedTextValue for t in layers["TEXT"].TextObjectSequence]
    assert f"p(cancer) = {image['probability']:.3f}" in texts
    assert f"calibrated p = {image['probability_calibrated']:.3f}" in texts
    assert "anchor 0.20" in texts and "0.50" in texts and "0.30" in texts
    assert any(t.startswith("flagged at: ") for t in texts)


def test_a_monochrome1_image_gets_an_inverse_presentation_lut(tmp_path):
  """The GSPS pipeline ends in the presentation LUT, not in the image's photometric
  interpretation: a MONOCHROME1 image is shown as its own look only with INVERSE. (And a model
  without an anchor RoI, on detector boxes alone, gets no ANCHOR layer.)"""
  path = dicom_fixtures.write_mg(
      dicom_fixtures.phantom(), tmp_path, "m1.dcm", photometric="MONOCHROME1",
      StudyInstanceUID="1.2.3.10", SeriesInstanceUID="1.2.3.11", PatientID="P1")
  images = _predictions([path], calibrated=False)
  images[0]["rois"] = images[0]["rois"][1:]
  result = dicom_out.write(images, [], [], tmp_path / "out")
  assert not result.failed
  (gsps,) = [w for w in result.written if w.kind == "GSPS"]
  _valid(gsps.path)
  ds = pydicom.dcmread(gsps.path)
  assert ds.PresentationLUTShape == "INVERSE"
  assert [layer.GraphicLayer for layer in ds.GraphicLayerSequence] == ["ROIS", "TEXT"]


def _groups_by_name(sr):
  report = sr.content
  return report.get_image_measurement_groups(), report.get_planar_roi_measurement_groups()


def _values(group) -> dict[str, float]:
  return {m.name.meaning: m.value for m in group.get_measurements()}


def _evaluations(group) -> dict[str, str]:
  return {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}


@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "uncalibrated"])
def test_an_sr_per_study_holds_every_score_and_roi(study, tmp_path, calibrated):
  images, breasts, exams, result = _write(study, tmp_path, calibrated=calibrated)
  assert not result.failed
  (written,) = [w for w in result.written if w.kind == "SR"]
  _valid(written.path)
  sources = {im["image_id"]: pydicom.dcmread(im["path"], stop_before_pixels=True)
             for im in images}
  first = next(iter(sources.values()))
  sr = hd.sr.srread(written.path)
  assert isinstance(sr, hd.sr.ComprehensiveSR)
  assert sr.StudyInstanceUID == first.StudyInstanceUID == written.study_uid
  assert sr.PatientID == first.PatientID and sr.PatientName == first.PatientName
  assert "RESEARCH USE ONLY" in sr.SeriesDescription and sr.Manufacturer == "attend_jax"
  assert sr.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurementReport.value
  # Every image is evidence, by class and instance.
  evidence = [_ref(i) for s in sr.CurrentRequestedProcedureEvidenceSequence
              for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence]
  assert sorted(evidence) == sorted((s.SOPClassUID, s.SOPInstanceUID) for s in sources.values())
  groups, rois = _groups_by_name(sr)
  by_id = {g.tracking_identifier: g for g in groups}

  for image in images:
    ds = sources[image["image_id"]]
    group = by_id[f"image {image['image_id']}"]
    values = _values(group)
    assert values["Probability of cancer"] == pytest.approx(image["probability"])
    (measured,) = [m for m in group.get_measurements() if m.name == codes.DCM.ProbabilityOfCancer]
    assert [_ref(r.ReferencedSOPSequence[0]) for r in measured.referenced_images] == [
        (ds.SOPClassUID, ds.SOPInstanceUID)]
    assert [_ref(s.ReferencedSOPSequence[0]) for s in group.source_images] == [
        (ds.SOPClassUID, ds.SOPInstanceUID)]
    side = {"L": "Left breast", "R": "Right breast"}[image["laterality"]]
    assert [s.value.meaning for s in group.finding_sites] == [side]
    if calibrated:
      assert values["Calibrated probability of cancer"] == pytest.approx(
          image["probability_calibrated"])
      assert _evaluations(group) == {f"Above the {k} operating point": "Yes" if v else "No"
                                     for k, v in image["flags"].items()}
    else:
      assert set(values) == {"Probability of cancer"} and not _evaluations(group)

    # Each RoI an image region on its image, with its attention weight and detector score.
    mine = [g for g in rois if g.tracking_identifier.startswith(f"image {image['image_id']} RoI")]
    assert len(mine) == len(image["rois"])
    for group, roi in zip(sorted(mine, key=lambda g: g.tracking_identifier), image["rois"]):
      region = group.roi
      assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
      ref = region.ContentSequence[0].ReferencedSOPSequence[0]
      assert _ref(ref) == (ds.SOPClassUID, ds.SOPInstanceUID)
      w, h = float(ds.Columns), float(ds.Rows)
      np.testing.assert_allclose(_boxes([region.value]),
                                 [np.clip(roi["box_xyxy"], 0, [w, h, w, h])], atol=1e-3)
      values = _values(group)
      assert values["Attention weight"] == pytest.approx(roi["attention"])
      if roi["detector_score"] is None:
        assert "Detector score" not in values
      else:
        assert values["Detector score"] == pytest.approx(roi["detector_score"])
      assert _evaluations(group) == {"Anchor RoI": "Yes" if roi["anchor"] else "No"}

  # Breasts: mean and max of their views, referencing those views; the exam: its max.
  assert len(breasts) == 2 and len(exams) == 1
  for row in breasts:
    views = {(sources[im["image_id"]].SOPClassUID, sources[im["image_id"]].SOPInstanceUID)
             for im in images if im["laterality"] == row["laterality"]}
    for stat in ("mean", "max"):
      group = by_id[f"breast {row['study_id']} {row['laterality']} {stat}"]
      assert _values(group)["Probability of cancer"] == pytest.approx(
          row[f"probability_{stat}"])
      assert {_ref(s.ReferencedSOPSequence[0]) for s in group.source_images} == views
  (exam,) = exams
  group = by_id[f"exam {exam['study_id']}"]
  assert _values(group)["Probability of cancer"] == pytest.approx(exam["probability"])
  assert _evaluations(group)["Most suspicious breast"] == {"L": "Left breast",
                                                            "R": "Right breast"}[exam["side"]]


def test_a_source_without_uids_is_one_row_and_the_rest_is_written(study, tmp_path):
  """A header without the UIDs a reference needs (the test fixtures' files have none) is a
  failed row naming them; one without PatientID or a study date is written with them empty."""
  bare = dicom_fixtures.write_mg(dicom_fixtures.phantom(), tmp_path, "bare.dcm")
  ds = pydicom.dcmread(study[0])
  for keyword in ("PatientID", "PatientName", "StudyDate", "AccessionNumber"):
    delattr(ds, keyword)
  no_patient = tmp_path / "no_patient.dcm"
  ds.save_as(no_patient)
  files = [bare, no_patient] + study[1:]
  images = _predictions(files, calibrated=False)
  images[0].update(study_id="bare", laterality="R")
  breasts, exams = tables.breasts_and_exams(images)
  result = dicom_out.write(images, breasts, exams, tmp_path / "out")
  (failed,) = result.failed
  assert failed.source == str(bare) and "StudyInstanceUID" in failed.reason
  assert "SeriesInstanceUID" in failed.reason
  assert {w.source for w in result.written if w.kind == "GSPS"} == {str(f) for f in files[1:]}
  (sr,) = [w for w in result.written if w.kind == "SR"]
  assert len(sr.references) == 4
  empty = pydicom.dcmread(next(w.path for w in result.written if w.source == str(no_patient)))
  assert empty.PatientID == "" and empty.StudyDate == ""
  with open(tmp_path / "out" / dicom_out.TABLE, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["path"] for r in rows if not r["error"]] == [str(p) for p in result.paths]
  assert [(r["kind"], r["source"]) for r in rows if r["error"]] == [("image", str(bare))]
  assert all(os.path.exists(p) for p in result.paths)


def test_images_on_a_bucket_are_referenced_as_local_ones(study, gcs, tmp_path):
  """predict's inputs may be on a bucket (gs://): their headers are read from there."""
  from etils import epath

  bucket = epath.Path(gcs.path("dicoms"))
  for path in study:
    (bucket / path.name).write_bytes(path.read_bytes())
  images = _predictions(study, calibrated=False)
  for image in images:
    image["path"] = str(bucket / pathlib.Path(image["path"]).name)
  breasts, exams = tables.breasts_and_exams(images)
  result = dicom_out.write(images, breasts, exams, tmp_path)
  assert not result.failed
  assert sorted(w.source for w in result.written if w.kind == "GSPS") == sorted(
      im["path"] for im in images)
  (sr,) = [w for w in result.written if w.kind == "SR"]
  assert sorted(sr.references) == sorted(
      str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study)


def test_secondary_capture_of_the_overlay_and_a_missing_overlay(study, tmp_path):
  overlays = tmp_path / "overlays"
  overlays.mkdir()
  picture = np.zeros((40, 30, 3), np.uint8)
  picture[5:10, 5:25] = (255, 200, 0)
  Image.fromarray(picture).save(overlays / f"{study[0].stem}.png")
  _, _, _, result = _write(study, tmp_path / "out", overlays=overlays)
  (capture,) = [w for w in result.written if w.kind == "SC"]
  source = pydicom.dcmread(study[0], stop_before_pixels=True)
  ds = pydicom.dcmread(capture.path)
  _valid(capture.path)
  np.testing.assert_array_equal(ds.pixel_array, picture)
  assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
  assert ds.PatientOrientation == source.PatientOrientation
  assert "RESEARCH USE ONLY" in ds.SeriesDescription
  assert sorted(f.source for f in result.failed) == sorted(str(p) for p in study[1:])
  assert all(f.kind == "SC" and "no overlay" in f.reason for f in result.failed)
  assert sum(w.kind == "GSPS" for w in result.written) == 4  # Missing overlays cost only theirs.


def test_render_gsps_draws_its_boxes_dashes_and_text(study, tmp_path):
  images, _, _, result = _write(study[:1], tmp_path)
  (written,) = [w for w in result.written if w.kind == "GSPS"]
  source = pydicom.dcmread(study[0], stop_before_pixels=True)
  w, h = int(source.Columns), int(source.Rows)
  dark = np.zeros((h, w), np.uint16)  # So that only the drawing is coloured.
  png = dicom_out.render_gsps(pydicom.dcmread(written.path), dark, tmp_path / "gsps.png")
  pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
  pad = dicom_out.RENDER_MARGIN * max(w, h)
  scale = pixels.shape[1] / (w + 2 * pad)
  assert pixels.shape[0] == pytest.approx((h + 2 * pad) * scale, abs=1)

  def colour_along(y, x0, x1, rgb):
    """Fraction of the pixels on the row of image row ``y`` between x0 and x1 that are near
    ``rgb``, within 2 rows."""
    y, x0, x1 = (int((v + pad) * scale) for v in (y, x0, x1))
    rows = pixels[y - 2:y + 3, x0:x1]
    near = (np.abs(rows - rgb).sum(-1) < 90).any(0)
    return near.mean()

  roi = images[0]["rois"][1]["box_xyxy"]  # Yellow, solid.
  assert colour_along(roi[3], roi[0] + 2, roi[2] - 2, (255, 255, 0)) > 0.9
  assert colour_along(roi[3] + 15, roi[0] + 2, roi[2] - 2, (255, 255, 0)) == 0
  # The anchor, the image's border: cyan, dashed (gaps along its bottom edge).
  bottom = colour_along(h, w * 0.2, w * 0.8, (0, 255, 255))
  assert 0.2 < bottom < 0.9
  # Text in the top-left corner (white), none in the empty middle-right.
  corner = pixels[: pixels.shape[0] // 8, : pixels.shape[1] // 2]
  assert (corner.min(-1) > 200).sum() > 50
  middle = pixels[pixels.shape[0] // 2:pixels.shape[0] * 3 // 4, pixels.shape[1] // 2:-10]
  assert (middle.max(-1) > 60).sum() == 0


def test_render_gsps_tool_finds_its_image_and_checks_a_given_one(study, tmp_path):
  _, _, _, result = _write(study[:2], tmp_path / "dicom")
  first, _ = sorted((w for w in result.written if w.kind == "GSPS"), key=lambda w: w.source)
  proc = helpers.run("tools/render_gsps.py", first.path, f"--out={tmp_path / 'gsps.png'}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"over {pathlib.Path(first.source).name} -> " in proc.stdout  # From dicom_out.csv.
  with Image.open(tmp_path / "gsps.png") as picture:
    assert picture.size[0] == 500
  other = sorted(study[:2])[1]
  with pytest.raises(DataError, match=f"not the one {first.path.name} references"):
    dicom_out.check_reference(pydicom.dcmread(first.path), pydicom.dcmread(other), other,
                              first.path.name)
  dicom_out.check_reference(pydicom.dcmread(first.path), pydicom.dcmread(first.source),
                            first.source)


@pytest.mark.slow
def test_predict_writes_dicom_outputs_whose_scores_are_its_tables(trained_classifier, tmp_path):
  """predict --dicom_out on one study and a file whose header has no UIDs: the study's GSPS,
  SR and captures reference its images and hold predictions.csv's scores; the other file is
  predicted, its DICOM outputs one warning."""
  inputs = tmp_path / "in"
  inputs.mkdir()
  studies = {}
  for src in sorted((trained_classifier / "dicom" / "images").rglob("*.dcm")):
    studies.setdefault(src.parent.name, []).append(src)
  one = next(iter(studies.values()))
  for src in one:
    (inputs / src.name).write_bytes(src.read_bytes())
  dicom_fixtures.write_mg(dicom_fixtures.phantom(240, 180), inputs, "bare.dcm")
  out, dicom_dir = tmp_path / "out", tmp_path / "dicom"
  proc = helpers.run("-m", "attend_jax.predict", f"--workdir={trained_classifier / 'work'}",
                     inputs, f"--out={out}", f"--dicom_out={dicom_dir}", "--dicom_out_capture",
                     "--batch_size=4")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  with open(out / "predictions.csv", newline="") as f:
    rows = {r["path"]: r for r in csv.DictReader(f)}
  assert len(rows) == 5  # The bare file is predicted all the same.
  bare = str(inputs / "bare.dcm")
  assert f"warning: {bare}: its image not written: " in proc.stderr
  assert "StudyInstanceUID" in proc.stderr
  with open(dicom_dir / dicom_out.TABLE, newline="") as f:
    listed = list(csv.DictReader(f))
  written = [r for r in listed if not r["error"]]
  assert sorted(r["kind"] for r in written) == ["GSPS"] * 4 + ["SC"] * 4 + ["SR"]
  assert [(r["kind"], r["source"]) for r in listed if r["error"]] == [("image", bare)]
  assert f"{len(written)} DICOM files -> {dicom_dir}/" in proc.stdout

  (sr_row,) = [r for r in written if r["kind"] == "SR"]
  sr = hd.sr.srread(sr_row["path"])
  by_id = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
  for path, row in rows.items():
    if path == bare:
      continue
    source = pydicom.dcmread(path, stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    group = by_id[f"image {row['image_id']}"]
    assert _values(group)["Probability of cancer"] == pytest.approx(float(row["probability"]),
                                                                   abs=1e-6)
    # The run's calibration (calibration.json) and its operating points, as in the table.
    assert _values(group)["Calibrated probability of cancer"] == pytest.approx(
        float(row["probability_calibrated"]), abs=1e-6)
    assert _evaluations(group) == {f"Above the {k} operating point": "Yes" if row[f"flag_{k}"]
                                   == "1" else "No" for k in ("spec90", "spec80", "best_f1")}
    (gsps,) = [r for r in written if r["kind"] == "GSPS" and r["source"] == path]
    ds = pydicom.dcmread(gsps["path"])
    assert [_ref(i) for i in ds.ReferencedSeriesSequence[0].ReferencedImageSequence] == [
        (source.SOPClassUID, source.SOPInstanceUID)]
    rois = json.loads(row["rois"])
    anchor = [a for a in ds.GraphicAnnotationSequence if a.GraphicLayer == "ANCHOR"]
    assert len(anchor) == int(any(r["anchor"] for r in rois))
    drawn = sum(len(a.GraphicObjectSequence) for a in ds.GraphicAnnotationSequence
                if a.GraphicLayer in ("ROIS", "ANCHOR"))
    assert drawn == len(rois)
  # And the breast and exam scores are breasts.csv's and exams.csv's.
  with open(out / "breasts.csv", newline="") as f:
    breasts = [b for b in csv.DictReader(f) if b["study_id"] != "in"]  # Not the bare file's.
  with open(out / "exams.csv", newline="") as f:
    exams = [e for e in csv.DictReader(f) if e["study_id"] != "in"]
  assert len(breasts) == 2 and len(exams) == 1
  for b in breasts:
    for stat in ("mean", "max"):
      group = by_id[f"breast {b['study_id']} {b['laterality']} {stat}"]
      assert _values(group)["Probability of cancer"] == pytest.approx(
          float(b[f"probability_{stat}"]), abs=1e-6)
      assert _values(group)["Calibrated probability of cancer"] == pytest.approx(
          float(b[f"probability_calibrated_{stat}"]), abs=1e-6)
      assert _evaluations(group)["Above the spec80 operating point"] == (
          "Yes" if b["flag_spec80"] == "1" else "No")
  assert _values(by_id[f"exam {exams[0]['study_id']}"])["Probability of cancer"] == (
      pytest.approx(float(exams[0]["probability"]), abs=1e-6))
  for row in written:
    _valid(pathlib.Path(row["path"]))
