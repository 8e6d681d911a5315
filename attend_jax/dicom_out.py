"""predict's results as DICOM objects that a PACS stores and its viewers show, written with
highdicom:

- per image, a Grayscale Softcopy Presentation State (GSPS) over the original image: each RoI a
  rectangle (the anchor RoI dashed, in its own colour and labelled "anchor"), its attention
  weight beside it, and the probability in the corner;
- per DICOM study, a Comprehensive SR, a TID 1500 Measurement Report: each image's probability,
  each RoI as an image region (SCOORD POLYLINE on its image) with its attention weight and
  detector score, and the breast and exam scores; the calibrated probability and the
  operating-point flags where predict has them;
- optionally, per image, a Secondary Capture of predict's overlay PNG.

Each has new UIDs, the patient and study attributes of the images it references (the same
StudyInstanceUID, so a PACS files it in their study) and a series description that says
research use only. ``write`` returns what it wrote (``Written``) and what it could not
(``Failed``: one file, with the reason; the others are written all the same), and lists both in
``DIR/dicom_out.csv``. ``render_gsps`` draws a GSPS over its image, as a viewer does.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import importlib.metadata
import os
import pathlib
from collections.abc import Mapping, Sequence

import highdicom as hd
import highdicom.coding_schemes
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from attend_jax import paths
from attend_jax.errors import DataError

MANUFACTURER = "attend_jax"
MODEL_NAME = "attend_jax predict"
RESEARCH = "RESEARCH USE ONLY - not for diagnostic use"
# SeriesDescription and ContentDescription are LO: 64 characters at most.
SERIES = {"GSPS": "attend_jax RoIs, p(cancer) - RESEARCH USE ONLY, not diagnostic",
          "SR": "attend_jax scores - RESEARCH USE ONLY, not for diagnostic use",
          "SC": "attend_jax overlay - RESEARCH USE ONLY, not for diagnostic use"}
SERIES_NUMBER = {"GSPS": 9001, "SR": 9002, "SC": 9003}
TABLE = "dicom_out.csv"
TABLE_COLUMNS = ("kind", "path", "study_instance_uid", "sop_instance_uid", "references",
                 "source", "error")

# Layers of the GSPS, drawn in this order, and their colours (CIELab, as DICOM stores them).
# Their descriptions are LO: 64 characters at most.
_LAYERS = (("ROIS", "RoIs the model attended to, its weight beside each", "yellow"),
           ("ANCHOR", "The anchor RoI (the whole breast crop), dashed", "cyan"),
           ("TEXT", "p(cancer), attention weights; RESEARCH USE ONLY", "white"))
# No standard code says "attention weight" or "operating point": these are ours.
_SCHEME = "99ATTENDJAX"
ATTENTION = hd.sr.CodedConcept("ATT", _SCHEME, "Attention weight")
DETECTOR_SCORE = hd.sr.CodedConcept("DETSCORE", _SCHEME, "Detector score")
CALIBRATED = hd.sr.CodedConcept("PCAL", _SCHEME, "Calibrated probability of cancer")
ANCHOR = hd.sr.CodedConcept("ANCHOR", _SCHEME, "Anchor RoI")
MOST_SUSPICIOUS_SIDE = hd.sr.CodedConcept("SIDE", _SCHEME, "Most suspicious breast")


def flag_concept(name: str) -> hd.sr.CodedConcept:
  """The code of the operating point ``name`` (spec90, spec80, best_f1): its flag is Yes or No."""
  return hd.sr.CodedConcept(f"OP-{name}"[:16], _SCHEME, f"Above the {name} operating point")


_SIDE = {"L": codes.SCT.LeftBreast, "R": codes.SCT.RightBreast}
# Type 2 patient and study attributes (present, may be empty): a source without them gets them
# empty, as DICOM allows; the type 1 UIDs that every reference needs cannot be made up.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
          "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows",
             "Columns")


@dataclasses.dataclass(frozen=True)
class Written:
  """One DICOM file written: its kind (GSPS, SR, SC), where, its study and instance, and the
  SOP Instance UIDs of the images it references."""

  kind: str
  path: pathlib.Path
  study_uid: str
  sop_uid: str
  references: tuple[str, ...]
  source: str  # The image's DICOM path (GSPS, SC) or the study's UID (SR).


@dataclasses.dataclass(frozen=True)
class Failed:
  """One DICOM file not written, and why."""

  kind: str
  source: str
  reason: str


@dataclasses.dataclass
class Result:
  """What ``write`` wrote and what it could not."""

  written: list[Written]
  failed: list[Failed]

  @property
  def paths(self) -> list[pathlib.Path]:
    """Every file written (what a DICOMweb store sends)."""
    return [w.path for w in self.written]


def software_version() -> str:
  try:
    return importlib.metadata.version("attend_jax")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def _name(image_id: str) -> str:
  return image_id.replace("/", "__")


def read_source(path: str | os.PathLike) -> pydicom.Dataset:
  """The header of the image a prediction was made on, ready to be referenced: ValueError
  names what is missing. Type 2 patient and study attributes it lacks are set empty."""
  try:
    with paths.path(path).open("rb") as f:  # Local, or on a bucket (gs://) as predict's inputs.
      ds = pydicom.dcmread(f, stop_before_pixels=True)
  except Exception as e:  # noqa: BLE001  (any parser failure: this file only)
    raise ValueError(f"cannot read its header again ({type(e).__name__}: {e})") from e
  missing = [k for k in _REQUIRED if not str(ds.get(k, "") or "").strip()]
  if missing:
    raise ValueError(f"its header has no {', '.join(missing)}, which a DICOM reference to it"
                     " needs")
  if int(ds.get("SamplesPerPixel", 1)) != 1:
    raise ValueError("not a greyscale image (SamplesPerPixel is not 1)")
  for keyword in _TYPE2:
    if keyword not in ds:
      setattr(ds, keyword, None)
  return ds


def _clip_box(box, ds) -> np.ndarray:
  """``box`` (x0, y0, x1, y1) inside the image, as the closed polyline of its corners."""
  cols, rows = float(ds.Columns), float(ds.Rows)
  x0, y0, x1, y1 = np.clip(np.asarray(box, np.float64), 0.0, [cols, rows, cols, rows])
  return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])


def _lab(name: str) -> hd.color.CIELabColor:
  return hd.color.CIELabColor.from_string(name)


def _line_style(color: str, dashed: bool) -> pydicom.Dataset:
  """The Line Style Sequence item of a graphic object (DICOM's Graphic Annotation module;
  highdicom does not build it): a viewer that reads it draws the anchor dashed."""
  style = pydicom.Dataset()
  style.PatternOnColorCIELabValue = list(_lab(color).value)
  style.PatternOnOpacity = 1.0
  style.LineThickness = 1.0 if dashed else 2.0
  style.LineDashingStyle = "DASHED" if dashed else "SOLID"
  if dashed:
    style.LinePattern = 0xFF00  # 8 pixels on, 8 off.
  style.ShadowStyle = "OFF"
  style.ShadowOffsetX = style.ShadowOffsetY = 0.0
  style.ShadowColorCIELabValue = list(_lab("black").value)
  style.ShadowOpacity = 0.0
  return style


def score_lines(prediction: Mapping) -> list[str]:
  """The text a GSPS writes in the corner: the probability, then the calibrated one and the
  operating points where the prediction has them."""
  lines = [f"p(cancer) = {prediction['probability']:.3f}"]
  if prediction.get("probability_calibrated") is not None:
    lines.append(f"calibrated p = {prediction['probability_calibrated']:.3f}")
  flags = prediction.get("flags") or {}
  if flags:
    lines.append("flagged at: " + (", ".join(k for k, v in flags.items() if v) or "none")
                 + f" (of {', '.join(flags)})")
  return lines + [RESEARCH]


def gsps(prediction: Mapping, source: pydicom.Dataset, series_uid: str,
         instance: int) -> hd.pr.GrayscaleSoftcopyPresentationState:
  """The GSPS of one image's ``prediction`` over ``source``, its header (``read_source``)."""
  layers = {name: hd.pr.GraphicLayer(name, order, description=text, display_color=_lab(color))
            for order, (name, text, color) in enumerate(_LAYERS, start=1)}
  boxes = {"ROIS": [], "ANCHOR": []}
  texts = []
  for roi in prediction["rois"]:
    layer = "ANCHOR" if roi.get("anchor") else "ROIS"
    corners = _clip_box(roi["box_xyxy"], source)
    drawn = hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, corners,
                                hd.pr.AnnotationUnitsValues.PIXEL)
    drawn.LineStyleSequence = [_line_style(_LAYERS[1 if roi.get("anchor") else 0][2],
                                           bool(roi.get("anchor")))]
    boxes[layer].append(drawn)
    # The weight at the RoI's top-left corner; the anchor's at its bottom-left, clear of the
    # others (its box is the crop, which the grid RoIs share corners with).
    label = ("anchor " if roi.get("anchor") else "") + f"{roi['attention']:.2f}"
    texts.append(hd.pr.TextObject(label, hd.pr.AnnotationUnitsValues.PIXEL,
                                  anchor_point=tuple(corners[3 if roi.get("anchor") else 0]),
                                  anchor_point_visible=False))
  # The scores in display units, in the top corner on the side away from the breast (the
  # anchor RoI, the breast's crop, says which side it is on).
  crop = next((r["box_xyxy"] for r in prediction["rois"] if r.get("anchor")), None)
  right = crop is not None and (crop[0] + crop[2]) / 2 < float(source.Columns) / 2
  justify = hd.pr.TextJustificationValues.RIGHT if right else hd.pr.TextJustificationValues.LEFT
  step = 0.04
  for i, line in enumerate(score_lines(prediction)):
    texts.append(hd.pr.TextObject(
        line, hd.pr.AnnotationUnitsValues.DISPLAY, text_justification=justify,
        bounding_box=(0.02, 0.02 + i * step, 0.98, 0.02 + (i + 1) * step)))
  annotations = [hd.pr.GraphicAnnotation([source], layers[name], graphic_objects=objects)
                 for name, objects in boxes.items() if objects]
  annotations.append(hd.pr.GraphicAnnotation([source], layers["TEXT"], text_objects=texts))
  presentation = hd.pr.GrayscaleSoftcopyPresentationState(
      referenced_images=[source], series_instance_uid=series_uid,
      series_number=SERIES_NUMBER["GSPS"], sop_instance_uid=hd.UID(), instance_number=instance,
      manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
      software_versions=software_version(), device_serial_number="",
      content_label="ATTEND_JAX", content_description="attend_jax RoIs; " + RESEARCH,
      graphic_annotations=annotations,
      graphic_layers=[layers[a.GraphicLayer] for a in annotations],  # Those it uses.
      series_description=SERIES["GSPS"],
      # The presentation state's pipeline ends in its Presentation LUT, not in the image's
      # photometric interpretation: a MONOCHROME1 image keeps its look with an INVERSE one.
      presentation_lut_transformation=hd.PresentationLUTTransformation(
          presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE
          if source.get("PhotometricInterpretation") == "MONOCHROME1"
          else hd.PresentationLUTShapeValues.IDENTITY))
  # General Series, type 2C for a paired organ: each side's GSPS have their own series.
  presentation.Laterality = _laterality(prediction)
  return presentation


def _laterality(prediction: Mapping) -> str | None:
  side = prediction.get("laterality", "")
  return side if side in ("L", "R") else None


def _algorithm() -> hd.sr.AlgorithmIdentification:
  return hd.sr.AlgorithmIdentification(name=MODEL_NAME, version=software_version())


def _num(name, value: float, images=(), derivation=None) -> hd.sr.Measurement:
  return hd.sr.Measurement(
      name=name, value=float(value), unit=codes.UCUM.NoUnits, derivation=derivation,
      referenced_images=[hd.sr.SourceImageForMeasurement.from_source_image(ds) for ds in images]
      or None)


def _yes_no(name, value: bool) -> hd.sr.QualitativeEvaluation:
  return hd.sr.QualitativeEvaluation(name, codes.SCT.Yes if value else codes.SCT.No)


def _scores(row: Mapping, key: str, images=(), derivation=None) -> tuple[list, list]:
  """The measurements (probability, calibrated probability) and flags of one row of scores."""
  measurements = [_num(codes.DCM.ProbabilityOfCancer, row[key], images, derivation)]
  calibrated = row.get(key.replace("probability", "probability_calibrated"))
  if calibrated is not None:
    measurements.append(_num(CALIBRATED, calibrated, images, derivation))
  flags = [_yes_no(flag_concept(k), bool(v)) for k, v in (row.get("flags") or {}).items()]
  return measurements, flags


def _tracking(identifier: str) -> hd.sr.TrackingIdentifier:
  return hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier[:64])


def _sites(side: str) -> list | None:
  return [hd.sr.FindingSite(_SIDE[side])] if side in _SIDE else None


def structured_report(images: Sequence[Mapping], sources: Sequence[pydicom.Dataset],
                      breasts: Sequence[Mapping], exams: Sequence[Mapping],
                      series_uid: str) -> hd.sr.ComprehensiveSR:
  """The Comprehensive SR (TID 1500) of one DICOM study: ``images`` (predictions) and their
  ``sources`` (headers, the same order), with the ``breasts`` and ``exams`` rows of predict's
  tables that these images belong to."""
  groups = []
  for image, ds in zip(images, sources):
    measurements, flags = _scores(image, "probability", [ds])
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(f"image {image['image_id']}"),
        finding_type=codes.SCT.Breast, algorithm_id=_algorithm(),
        finding_sites=_sites(image["laterality"]), measurements=measurements,
        qualitative_evaluations=flags or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)]))
    for i, roi in enumerate(image["rois"]):
      roi_measurements = [_num(ATTENTION, roi["attention"])]
      if roi.get("detector_score") is not None:
        roi_measurements.append(_num(DETECTOR_SCORE, roi["detector_score"]))
      groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
          tracking_identifier=_tracking(f"image {image['image_id']} RoI {i}"),
          referenced_region=hd.sr.ImageRegion(
              hd.sr.GraphicTypeValues.POLYLINE, _clip_box(roi["box_xyxy"], ds),
              hd.sr.SourceImageForRegion.from_source_image(ds)),
          finding_type=codes.SCT.Breast, algorithm_id=_algorithm(),
          finding_sites=_sites(image["laterality"]), measurements=roi_measurements,
          qualitative_evaluations=[_yes_no(ANCHOR, bool(roi.get("anchor")))]))
  by_breast = collections.defaultdict(list)
  for image, ds in zip(images, sources):
    by_breast[image["study_id"], image["laterality"]].append(ds)
  for row in breasts:
    views = by_breast[row["study_id"], row["laterality"]]
    for key, derivation in (("probability_mean", codes.SCT.Mean),
                            ("probability_max", codes.SCT.Maximum)):
      measurements, flags = _scores(row, key, views, derivation)
      groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
          tracking_identifier=_tracking(f"breast {row['study_id']} {row['laterality']}"
                                        f" {key.split('_')[-1]}"),
          finding_type=codes.SCT.Breast, algorithm_id=_algorithm(),
          finding_sites=_sites(row["laterality"]), measurements=measurements,
          qualitative_evaluations=flags or None,
          source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
                         for ds in views]))
  for row in exams:
    measurements, flags = _scores(row, "probability")
    side = [hd.sr.QualitativeEvaluation(MOST_SUSPICIOUS_SIDE, _SIDE[row["side"]])] \
        if row.get("side") in _SIDE else []
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(f"exam {row['study_id']}"),
        finding_type=codes.SCT.Breast, algorithm_id=_algorithm(), measurements=measurements,
        qualitative_evaluations=(side + flags) or None))
  observer = hd.sr.ObserverContext(
      observer_type=codes.DCM.Device,
      observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
          uid=hd.UID(), name=MODEL_NAME, manufacturer_name=MANUFACTURER,
          model_name=MODEL_NAME))
  report = hd.sr.MeasurementReport(
      observation_context=hd.sr.ObservationContext(observer_device_context=observer),
      procedure_reported=codes.SCT.Mammography, imaging_measurements=groups)
  return hd.sr.ComprehensiveSR(
      evidence=list(sources), content=report[0], series_instance_uid=series_uid,
      series_number=SERIES_NUMBER["SR"], sop_instance_uid=hd.UID(), instance_number=1,
      manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
      software_versions=software_version(), series_description=SERIES["SR"],
      coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
          _SCHEME, name="attend_jax concepts", responsible_organization=MANUFACTURER)])


def secondary_capture(png: str | os.PathLike, source: pydicom.Dataset, laterality: str | None,
                      series_uid: str, instance: int) -> hd.sc.SCImage:
  """predict's overlay PNG as a Secondary Capture in the study of ``source``."""
  from PIL import Image

  orientation = list(source.get("PatientOrientation") or [])
  if len(orientation) != 2:  # The overlay shows the image as stored: its orientation.
    raise ValueError("its header has no PatientOrientation, which a Secondary Capture needs")
  if not pathlib.Path(png).exists():
    raise ValueError(f"no overlay {png}")
  with Image.open(png) as im:
    rgb = np.asarray(im.convert("RGB"))
  capture = hd.sc.SCImage.from_ref_dataset(
      ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
      coordinate_system="PATIENT", series_instance_uid=series_uid,
      series_number=SERIES_NUMBER["SC"], sop_instance_uid=hd.UID(), instance_number=instance,
      manufacturer=MANUFACTURER, laterality=laterality,
      patient_orientation=(orientation[0][:1], orientation[1][:1]),
      series_description=SERIES["SC"],
      manufacturer_model_name=MODEL_NAME, software_versions=software_version(),
      transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian)
  # highdicom takes one letter per axis; DICOM allows two (a mammogram's A\FR).
  capture.PatientOrientation = orientation
  return capture


def write(images: Sequence[Mapping], breasts: Sequence[Mapping], exams: Sequence[Mapping],
          out: str | os.PathLike, overlays: str | os.PathLike | None = None) -> Result:
  """Writes the GSPS of every image of ``images`` (predict's predictions, each with the
  ``path`` of its DICOM), the SR of every DICOM study they belong to, and, with ``overlays``
  (the folder of predict's overlay PNGs), a Secondary Capture of each overlay, into
  ``out/<StudyInstanceUID>/``; lists them in ``out/dicom_out.csv``.

  A file that cannot be written (its source header lacks a UID, the overlay is missing, ...)
  is a ``Failed`` with the reason; the others are written all the same."""
  out = pathlib.Path(out)
  written, failed = [], []
  sources = {}
  for image in images:
    try:
      sources[image["path"]] = read_source(image["path"])
    except ValueError as e:
      failed.append(Failed("image", image["path"], str(e)))
  by_study = collections.defaultdict(list)
  for image in images:
    if image["path"] in sources:
      by_study[str(sources[image["path"]].StudyInstanceUID)].append(image)
  for study_uid, members in by_study.items():
    folder = out / study_uid
    folder.mkdir(parents=True, exist_ok=True)
    series = collections.defaultdict(hd.UID)  # Per kind and side (General Series Laterality).
    for instance, image in enumerate(members, start=1):
      ds = sources[image["path"]]
      side = _laterality(image)
      jobs = [("GSPS", lambda: gsps(image, ds, series["GSPS", side], instance))]
      if overlays is not None:
        png = pathlib.Path(overlays) / f"{_name(image['image_id'])}.png"
        jobs.append(("SC", lambda: secondary_capture(png, ds, side, series["SC", side],
                                                        instance)))
      for kind, make in jobs:
        _write_one(kind, make, folder / f"{kind}_{_name(image['image_id'])}.dcm",
                   (str(ds.SOPInstanceUID),), image["path"], written, failed)
    keys = {(im["study_id"], im["laterality"]) for im in members}
    exam_ids = {im["study_id"] for im in members}
    refs = [sources[im["path"]] for im in members]
    _write_one("SR", lambda: structured_report(
        members, refs, [b for b in breasts if (b["study_id"], b["laterality"]) in keys],
        [e for e in exams if e["study_id"] in exam_ids], series["SR", None]),
        folder / "SR.dcm", tuple(str(ds.SOPInstanceUID) for ds in refs), study_uid, written,
        failed)
  out.mkdir(parents=True, exist_ok=True)
  with open(out / TABLE, "w", newline="") as f:
    table = csv.DictWriter(f, fieldnames=TABLE_COLUMNS, restval="")
    table.writeheader()
    for w in written:
      table.writerow({"kind": w.kind, "path": w.path, "study_instance_uid": w.study_uid,
                      "sop_instance_uid": w.sop_uid, "references": " ".join(w.references),
                      "source": w.source})
    for f_ in failed:
      table.writerow({"kind": f_.kind, "source": f_.source, "error": f_.reason})
  return Result(written, failed)


def _write_one(kind, make, path, references, source, written, failed) -> None:
  try:
    ds = make()
    ds.save_as(path, enforce_file_format=True)
  except (ValueError, TypeError, OSError) as e:  # highdicom's words for invalid input
    failed.append(Failed(kind, source, f"{type(e).__name__}: {e}"))
    return
  written.append(Written(kind, path, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID),
                         references, source))


# --- Drawing a GSPS, as a viewer does ---

def check_reference(presentation: pydicom.Dataset, image: pydicom.Dataset,
                    path: str | os.PathLike, name: str = "the presentation state") -> None:
  """DataError unless ``image`` (the header of the file at ``path``) is an image that
  ``presentation`` references."""
  wanted = {str(i.ReferencedSOPInstanceUID) for s in presentation.ReferencedSeriesSequence
            for i in s.ReferencedImageSequence}
  if str(image.get("SOPInstanceUID", "")) not in wanted:
    raise DataError(path, f"its SOP Instance UID is not the one {name} references"
                    f" ({', '.join(sorted(wanted))})")


def _rgb(color: Sequence[int]) -> tuple[float, float, float]:
  return tuple(c / 255 for c in hd.color.CIELabColor.from_dicom_value(color).to_rgb(clip=True))


def _draw_text(ax, item: pydicom.Dataset, rows: int, cols: int, color) -> None:
  """One text object: in its bounding box, justified as it says, else beside its anchor point
  (below it in the image's upper half, above it in the lower)."""
  if "BoundingBoxTopLeftHandCorner" in item:
    scale = [cols, rows] if item.BoundingBoxAnnotationUnits == "DISPLAY" else [1, 1]
    (x0, y), (x1, _) = (np.asarray(corner, float) * scale for corner in (
        item.BoundingBoxTopLeftHandCorner, item.BoundingBoxBottomRightHandCorner))
    justify = str(item.get("BoundingBoxTextHorizontalJustification", "LEFT"))
    x, ha = {"RIGHT": (x1, "right"), "CENTER": ((x0 + x1) / 2, "center")}.get(
        justify, (x0, "left"))
    va = "top"
  else:
    scale = [cols, rows] if item.AnchorPointAnnotationUnits == "DISPLAY" else [1, 1]
    x, y = np.asarray(item.AnchorPoint, float) * scale
    ha, va = "left", "top" if y < rows / 2 else "bottom"
    x, y = x + 0.005 * cols, y + (0.005 if va == "top" else -0.005) * rows
  ax.text(x, y, item.UnformattedTextValue, color=color, fontsize=7, ha=ha, va=va, clip_on=True)


RENDER_MARGIN = 0.01  # Of the long side, around the image: lines on its border stay visible.


def render_gsps(presentation: pydicom.Dataset, pixels: np.ndarray, path: str | os.PathLike,
                width: float = 5.0) -> pathlib.Path:
  """A PNG of ``presentation``'s graphic and text objects over ``pixels`` (its image, (H, W),
  dense tissue bright): each layer in its recommended colour, lines dashed where the object's
  Line Style says so, text in pixel or display units."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  rows, cols = pixels.shape
  pad = RENDER_MARGIN * max(rows, cols)
  colors = {layer.GraphicLayer: _rgb(layer.GraphicLayerRecommendedDisplayCIELabValue)
            for layer in presentation.GraphicLayerSequence
            if "GraphicLayerRecommendedDisplayCIELabValue" in layer}
  fig = Figure(figsize=(width, width * (rows + 2 * pad) / (cols + 2 * pad)), facecolor="black")
  FigureCanvasAgg(fig)
  ax = fig.add_axes((0, 0, 1, 1))
  ax.imshow(pixels, cmap="gray", extent=(0, cols, rows, 0), interpolation="antialiased")
  ax.set_axis_off()
  for annotation in presentation.GraphicAnnotationSequence:
    color = colors.get(annotation.GraphicLayer, (1.0, 1.0, 0.0))
    for item in annotation.get("GraphicObjectSequence", []):
      points = np.asarray(item.GraphicData, np.float64).reshape(-1, 2)
      if item.GraphicAnnotationUnits == "DISPLAY":
        points = points * [cols, rows]
      style = item.LineStyleSequence[0] if "LineStyleSequence" in item else None
      dashed = style is not None and style.LineDashingStyle == "DASHED"
      ax.plot(points[:, 0], points[:, 1], color=color, linestyle="--" if dashed else "-",
              linewidth=float(style.LineThickness) if style is not None else 1.5)
    for item in annotation.get("TextObjectSequence", []):
      _draw_text(ax, item, rows, cols, color)
  ax.set_xlim(-pad, cols + pad)
  ax.set_ylim(rows + pad, -pad)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  return path
