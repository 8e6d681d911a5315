"""DICOM mammograms to uint16 pixels on a full 0..65535 scale, plus the metadata we use.

Decoding goes through pydicom and the pylibjpeg plugins (JPEG 2000 via openjpeg, JPEG and
JPEG-LS via libjpeg, RLE). The grey levels follow the DICOM pipeline, then the reference's
normalisation:

1. values outside ``BitsStored`` are masked off (some vendors leave overlay bits set);
2. the modality LUT (rescale slope / intercept);
3. the VOI LUT, a window or a LUT sequence, when the file has one (``apply_voi_lut`` does not
   invert MONOCHROME1, so we do);
4. MONOCHROME1 is inverted so that dense tissue is bright in every image;
5. min-max scaling to 0..65535, as the reference does.

Every failure raises ``DicomError`` with the path and a reason a person can act on.

Before any pixel is decoded, ``check_image_kind`` reads the header as a reading room would:
FOR PROCESSING (raw detector) images and breast tomosynthesis are refused, with the reason; a
synthesised 2-D view, burned-in annotation and CAD marks are accepted and marked. predict and
prepare (local and Beam) both go through it, in ``image_header``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import re
import warnings

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (UID, BreastProjectionXRayImageStorageForPresentation,
                         BreastTomosynthesisImageStorage)

from attend_jax import paths
from attend_jax.errors import DicomError

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# The largest real mammograms are about 5k x 6k (30 megapixels); a header that claims more than
# this is refused before decoding, since a corrupt or crafted one would be decoded in full
# (60k x 60k: 7.7 GB and 38 s per file). prepare_data and predict set it with --max_megapixels.
MAX_PIXELS = 100_000_000


@dataclasses.dataclass(frozen=True)
class DicomImage:
  pixels: np.ndarray  # (H, W) uint16, dense tissue bright, full 0..65535 scale.
  pixel_spacing: tuple[float, float] | None  # (row, column) mm.
  manufacturer: str
  photometric: str
  bits_stored: int
  transfer_syntax: str
  identity: Identity  # Patient, exam, side, view and UIDs, read from the same header.
  marks: tuple[str, ...] = ()  # check_image_kind's: GENERATED_2D, BURNED_IN, CAD_MARKS.

  @property
  def laterality(self) -> str:
    """"L", "R" or "" when the file does not say."""
    return self.identity.laterality

  @property
  def view(self) -> str:
    """"CC", "MLO", ... or ""."""
    return self.identity.view

  @property
  def sop_uid(self) -> str:
    return self.identity.sop_uid


def _text(ds, keyword: str) -> str:
  value = ds.get(keyword, "")
  return str(value).strip() if value is not None else ""


# CBIS-DDSM / NBIA names such as "Mass-Training_P_00001_LEFT_CC" (in PatientID, in the series
# description or in a folder): the only place DDSM film scans keep patient, side and view.
_NBIA = re.compile(r"(?:^|[^A-Za-z0-9])(P_\d+)_(LEFT|RIGHT)_(CC|MLO|ML|LM|XCCL|XCCM)(?![A-Za-z])")


def nbia_name(text: str) -> tuple[str, str, str] | None:
  """(patient, laterality, view) from a CBIS-DDSM name, e.g. ("P_00001", "L", "CC"), or None."""
  m = _NBIA.search(text or "")
  return (m.group(1), m.group(2)[0], m.group(3)) if m else None


def _names(ds, path) -> list[str]:
  """Where a DDSM scan keeps its identity when its tags do not: PatientID, the series
  description, then the folders of its path, nearest first."""
  return ([_text(ds, "PatientID"), _text(ds, "SeriesDescription")]
          + [part for part in reversed(pathlib.Path(path).parts[:-1])])


def _from_names(ds, path, field: int) -> str:
  for text in _names(ds, path):
    found = nbia_name(text)
    if found:
      return found[field]
  return ""


def _laterality(ds, path="") -> str:
  """ImageLaterality, then Laterality, then a CBIS/NBIA name."""
  for keyword in ("ImageLaterality", "Laterality"):
    value = _text(ds, keyword).upper()
    if value in ("L", "R"):
      return value
  return _from_names(ds, path, 1)


def _view(ds, path="") -> str:
  """ViewPosition, then ViewCodeSequence, then a CBIS/NBIA name."""
  view = _text(ds, "ViewPosition").upper()
  if view:
    return view
  for item in ds.get("ViewCodeSequence", []):
    meaning = str(item.get("CodeMeaning", "")).lower()
    if "cranio-caudal" in meaning:
      return "CC"
    if "medio-lateral oblique" in meaning:
      return "MLO"
  return _from_names(ds, path, 2)


@dataclasses.dataclass(frozen=True)
class Identity:
  """Who and what an image is, from its header (and, for DDSM scans, its names)."""

  patient_id: str  # The PatientID, or the patient of a CBIS/NBIA name; "" when unknown.
  study_date: str  # StudyDate (YYYYMMDD) or "".
  study_uid: str
  sop_uid: str
  laterality: str
  view: str

  @property
  def exam(self) -> str:
    """The exam an image belongs to: the patient on one date (CBIS-DDSM gives every image its
    own StudyInstanceUID, so the UID alone would make one exam per image); the study UID when
    there is no patient."""
    if self.patient_id:
      return f"{self.patient_id}/{self.study_date}" if self.study_date else self.patient_id
    return self.study_uid


def identity(ds, path: str | os.PathLike) -> Identity:
  """The Identity of the file at ``path`` whose dataset is ``ds``."""
  patient = _text(ds, "PatientID")
  for text in _names(ds, path):
    found = nbia_name(text)
    if found:
      patient = found[0]  # "Mass-Training_P_00001_LEFT_CC" is one image, P_00001 the patient.
      break
  return Identity(patient_id=patient, study_date=_text(ds, "StudyDate"),
                  study_uid=_text(ds, "StudyInstanceUID"), sop_uid=_text(ds, "SOPInstanceUID"),
                  laterality=_laterality(ds, path), view=_view(ds, path))


def _spacing(ds) -> tuple[float, float] | None:
  for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
    value = ds.get(keyword)
    if value is not None and len(value) == 2:
      try:
        return float(value[0]), float(value[1])
      except (TypeError, ValueError):
        continue
  return None


def _source(path: str | os.PathLike):
  """What pydicom reads for ``path``: a local file by its name; an object of a bucket
  (``gs://``) read into memory, in one request."""
  if paths.is_local(path):
    return path
  try:
    return io.BytesIO(paths.path(path).read_bytes())
  except FileNotFoundError as e:
    raise DicomError(path, "no such file") from e
  except Exception as e:  # noqa: BLE001  (no permission, a lost connection: this file's reason)
    message = " / ".join(l.strip() for l in str(e).splitlines() if l.strip())
    raise DicomError(path, f"cannot be read ({type(e).__name__}: {message})") from e


def read_header(path: str | os.PathLike) -> pydicom.Dataset:
  """The dataset without decoding pixels; raises DicomError for non-DICOM or unreadable files.
  ``path`` may be on a bucket (``gs://``)."""
  source = _source(path)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      ds = pydicom.dcmread(source)
  except FileNotFoundError as e:
    raise DicomError(path, "no such file") from e
  except InvalidDicomError as e:
    raise DicomError(path, f"not a DICOM file ({e})") from e
  except Exception as e:  # noqa: BLE001  (as in _decode: any parser failure is a bad file)
    raise DicomError(path, f"unreadable or truncated DICOM ({type(e).__name__}: {e})") from e
  for w in caught:
    # pydicom drops an encapsulated (compressed) pixel element cut short, with only a warning.
    if "end of file reached" in str(w.message).lower():
      raise DicomError(path, f"truncated file ({w.message})")
  return ds


def _syntax(ds):
  meta = getattr(ds, "file_meta", None)
  return meta.get("TransferSyntaxUID") if meta is not None else None


# pydicom's words when no installed plugin can decode a transfer syntax at all (as opposed to
# plugins that tried and failed on this file's bytes).
_NO_DECODER = ("no pixel data decoders", "plugins are missing dependencies",
               "plugin is missing dependencies")


def _decode(ds, path) -> np.ndarray:
  name = getattr(_syntax(ds), "name", "no transfer syntax")
  try:
    return ds.pixel_array
  # pydicom and its plugins raise many exception types for bad data, a codec's Rust panic
  # (pyo3's PanicException, a BaseException) among them; each becomes a DicomError that keeps
  # the decoders' own reasons, every line of them.
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # noqa: BLE001
    message = " / ".join(l.strip() for l in str(e).splitlines() if l.strip()) or type(e).__name__
    if len(message) > 400:
      message = message[:400] + "..."
    if isinstance(e, NotImplementedError) or any(k in message.lower() for k in _NO_DECODER):
      raise DicomError(path, f"cannot decode transfer syntax {name}: {message}") from e
    raise DicomError(path, f"pixel data truncated or corrupt ({name}: {message})") from e


def _grey_levels(values: np.ndarray, ds, photometric: str, path) -> np.ndarray:
  """Modality LUT, VOI LUT, MONOCHROME1 inversion and min-max scaling, as float64 levels."""
  values = apply_voi_lut(apply_modality_lut(values, ds), ds, prefer_lut=True)
  values = np.asarray(values, np.float64)
  if not np.isfinite(values).all():
    raise DicomError(path, "pixel values contain NaN or infinity after the VOI LUT")
  return -values if photometric == "MONOCHROME1" else values


def _to_display(raw: np.ndarray, ds, photometric: str, path) -> np.ndarray:
  """uint16 pixels on the full scale, dense tissue bright.

  Integer images go through a lookup table: every transform is a function of the stored value
  alone, so it runs on the (at most 65536) distinct values and one gather maps the image, 10x
  faster than transforming 7 million float pixels of a 3000 x 2400 mammogram.
  """
  if raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2:
    lo = int(raw.min())
    unsigned = np.dtype(f"u{raw.dtype.itemsize}")
    # Offsets from the minimum fit the unsigned type of the same width, wrap-around included.
    offsets = np.subtract(raw.view(unsigned), np.array(lo).astype(raw.dtype).view(unsigned),
                          dtype=unsigned)
    levels = _grey_levels(np.arange(lo, int(raw.max()) + 1).astype(raw.dtype), ds, photometric,
                          path)
    present = np.bincount(offsets.ravel(), minlength=len(levels)) > 0
  else:
    offsets, levels, present = None, _grey_levels(raw, ds, photometric, path), None
  used = levels[present] if present is not None else levels
  low, span = used.min(), used.max() - used.min()
  # A constant image becomes all zeros; the breast finder then reports "no breast found".
  scaled = ((levels - low) * (65535.0 / span) if span > 0 else levels - low).astype(np.uint16)
  return np.take(scaled, offsets) if offsets is not None else scaled


def check_size(ds, path, max_pixels: int = MAX_PIXELS) -> None:
  """DicomError if the header of ``ds`` (the file at ``path``) claims more than ``max_pixels``
  pixels, all frames together: checked before anything is decoded."""
  rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
  pixels = rows * cols * max(int(ds.get("NumberOfFrames", 1) or 1), 1)
  if pixels > max_pixels:
    raise DicomError(path, f"its header says {rows} x {cols} pixels ({pixels / 1e6:.0f}"
                     f" megapixels), above the limit of {max_pixels / 1e6:g} megapixels; not"
                     " decoded (a corrupt header, or raise --max_megapixels if it is real)")


# The marks check_image_kind gives an accepted image, as predict's `marks` column and prepare's
# manifest name them.
GENERATED_2D = "generated_2d"  # A 2-D view synthesised from a tomosynthesis acquisition.
BURNED_IN = "burned_in_annotation"  # Text or marks burned into the pixels (BurnedInAnnotation).
CAD_MARKS = "cad_marks"  # A CAD system's output image, its marks likely in the pixels.
MARKS = (GENERATED_2D, BURNED_IN, CAD_MARKS)

_TOMOSYNTHESIS = ("only 2-D mammograms can be read (a synthesised 2-D view of the study,"
                  " ImageType GENERATED_2D, can)")
# "CAD" as a word of its own ("CAD", "CAD_MARKS", "R2 CAD"), not inside one ("CADENCE").
_CAD = re.compile(r"(?<![A-Z0-9])CAD(?![A-Z0-9])")


def _values(ds, keyword: str) -> list[str]:
  """The values of a multi-valued text element, stripped and upper case; [] when absent."""
  value = ds.get(keyword)
  if value is None:
    return []
  items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
  return [str(v).strip().upper() for v in items]


def check_image_kind(ds, path) -> tuple[str, ...]:
  """What a reading room checks in the header ``ds`` of the file at ``path`` before looking:
  raises DicomError, with the reason, for an image that is not a 2-D mammogram for
  presentation, and returns the marks (``MARKS``) of one that is.

  - Refused: FOR PROCESSING images (raw detector data), by ``PresentationIntentType``, a
    ``FOR PROCESSING`` value of ``ImageType`` or a "For Processing" SOP class;
  - refused: breast tomosynthesis, by SOP class (Breast Tomosynthesis Image, Breast
    Projection X-Ray), a ``TOMOSYNTHESIS`` value of ``ImageType``, or ``NumberOfFrames`` > 1;
  - marked GENERATED_2D: a synthesised 2-D view (``ImageType`` holds ``GENERATED_2D``), in any
    SOP class, as long as it is one frame;
  - marked BURNED_IN: ``BurnedInAnnotation`` YES; CAD_MARKS: "CAD" as a word in ``ImageType``,
    ``SeriesDescription`` or ``DerivationDescription``.

  A missing element says nothing: many real files lack ``PresentationIntentType``.
  """
  meta = getattr(ds, "file_meta", None)
  sop = _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta else "")
  sop_name = UID(sop).name if sop else ""
  image_type = _values(ds, "ImageType")
  intent = _text(ds, "PresentationIntentType").upper()
  processing = ("PresentationIntentType FOR PROCESSING" if intent == "FOR PROCESSING"
                else f"ImageType {'/'.join(image_type)}" if "FOR PROCESSING" in image_type
                else sop_name if sop_name.lower().endswith("for processing") else "")
  if processing:
    raise DicomError(path, f"FOR PROCESSING image (raw detector data; {processing}): only FOR"
                     " PRESENTATION images can be read")

  generated = GENERATED_2D.upper() in image_type
  try:
    frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
  except (TypeError, ValueError):
    raise DicomError(path, f"NumberOfFrames {ds.get('NumberOfFrames')!r} is not a number") from None
  count = f"{frames} frame{'s' if frames > 1 else ''}"
  tomosynthesis = (
      f"breast tomosynthesis projections ({sop_name}, {count})"
      if sop == BreastProjectionXRayImageStorageForPresentation
      else f"breast tomosynthesis ({sop_name}, {count})"
      if sop == BreastTomosynthesisImageStorage and not generated
      else f"breast tomosynthesis (ImageType {'/'.join(image_type)}, {count})"
      if "TOMOSYNTHESIS" in image_type and not generated
      else "")
  if tomosynthesis:
    raise DicomError(path, f"{tomosynthesis}: {_TOMOSYNTHESIS}")
  if frames > 1:
    raise DicomError(path, f"multi-frame image ({count}, e.g. breast tomosynthesis): only"
                     " one-frame 2-D mammograms can be read")

  marks = [GENERATED_2D] if generated else []
  if _text(ds, "BurnedInAnnotation").upper() == "YES":
    marks.append(BURNED_IN)
  described = [*image_type, _text(ds, "SeriesDescription").upper(),
               _text(ds, "DerivationDescription").upper()]
  if any(_CAD.search(text) for text in described):
    marks.append(CAD_MARKS)
  return tuple(marks)


def read_dicom(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> DicomImage:
  """Reads one single-frame greyscale DICOM into a DicomImage; any failure is a DicomError.

  A header that claims more than ``max_pixels`` pixels is refused before decoding. ``path``
  may be on a bucket (``gs://``)."""
  path = paths.as_given(path)
  try:
    return _read(path, max_pixels)
  except DicomError:
    raise
  # pydicom parses elements lazily, so a corrupt element can fail at first access anywhere.
  except Exception as e:  # noqa: BLE001
    raise DicomError(path, f"malformed DICOM ({type(e).__name__}: {e})") from e


def image_header(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> pydicom.Dataset:
  """The header of a file that ``read_dicom`` will decode: every check that needs no pixels
  (pixel data present, a 2-D mammogram for presentation by ``check_image_kind``, one greyscale
  frame, at most ``max_pixels``, a known transfer syntax). Raises DicomError otherwise."""
  return _header(path, max_pixels)[0]


def _header(path, max_pixels: int) -> tuple[pydicom.Dataset, tuple[str, ...]]:
  """``image_header``'s dataset, and its marks."""
  ds = read_header(path)
  if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
    raise DicomError(path, "no pixel data (PixelData is missing)")
  rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
  if rows == 0 or cols == 0:
    raise DicomError(path, f"empty image ({rows} x {cols} pixels)")
  marks = check_image_kind(ds, path)
  check_size(ds, path, max_pixels)
  photometric = _text(ds, "PhotometricInterpretation").upper()
  if photometric not in _MONOCHROME:
    raise DicomError(path, f"photometric interpretation {photometric or 'missing'};"
                     " expected MONOCHROME1 or MONOCHROME2")
  syntax = _syntax(ds)
  if syntax is not None and not syntax.is_transfer_syntax:
    raise DicomError(path, f"unknown transfer syntax {syntax}")
  return ds, marks


def _read(path: pathlib.Path, max_pixels: int) -> DicomImage:
  ds, marks = _header(path, max_pixels)
  photometric = _text(ds, "PhotometricInterpretation").upper()
  syntax = _syntax(ds)
  raw = _decode(ds, path)
  if raw.ndim != 2:
    raise DicomError(path, f"pixel array has shape {raw.shape}; expected a 2-D image")
  bits_stored = int(ds.get("BitsStored", raw.dtype.itemsize * 8))
  if raw.dtype.kind == "u" and bits_stored < raw.dtype.itemsize * 8:
    raw = raw & np.asarray((1 << bits_stored) - 1, raw.dtype)

  pixels = _to_display(raw, ds, photometric, path)
  return DicomImage(
      pixels=pixels,
      pixel_spacing=_spacing(ds),
      manufacturer=_text(ds, "Manufacturer"),
      photometric=photometric,
      bits_stored=bits_stored,
      transfer_syntax=str(syntax or ""),
      identity=identity(ds, path),
      marks=marks,
  )
