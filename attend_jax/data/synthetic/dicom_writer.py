"""DICOM files of synthetic images: stable ids and UIDs, and a "Digital Mammography X-Ray Image -
For Presentation" dataset holding display pixels as a row of labels.csv describes them."""

from __future__ import annotations

import hashlib
import pathlib
import uuid

import numpy as np
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset

from attend_jax.data.synthetic.base import MANUFACTURER
from attend_jax.data.synthetic.labels import SyntheticImage

_ORIENTATION = {("R", "CC"): ["A", "L"], ("L", "CC"): ["P", "R"],
                ("R", "MLO"): ["A", "FL"], ("L", "MLO"): ["P", "FR"]}
_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


def hex_id(seed: int, *parts) -> str:
  return hashlib.sha256("/".join(map(str, (MANUFACTURER, seed) + parts)).encode()).hexdigest()[:32]


def _uid(seed: int, *parts) -> str:
  # A UUID-derived UID (2.25.<int>) from a name-based UUID: stable for a seed, needs no root.
  # pydicom's generate_uid ignores its entropy sources when the prefix is 2.25.
  name = "/".join(map(str, (MANUFACTURER, seed) + parts))
  return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def _code(value: str, meaning: str) -> Dataset:
  item = Dataset()
  item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
  return item


def _ds(value: float) -> str:
  return f"{value:.10g}"


def _stored(image: np.ndarray, photometric: str, bits: int, window: tuple[float, float]):
  """Stored uint16 values and the (centre, width) that maps the tissue range back to display.

  ``window`` is the part of the stored range, as fractions, that display 0..1 occupies.
  """
  top = 2**bits - 1
  lo, hi = round(window[0] * top), round(window[1] * top)
  values = np.rint(lo + image * (hi - lo)).astype(np.uint16)
  if photometric == "MONOCHROME1":
    values = (top - values).astype(np.uint16)
    lo, hi = top - hi, top - lo
  # DICOM's linear window maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] onto the output range.
  return values, (lo + hi + 1) / 2, hi - lo + 1


def make_dataset(meta: SyntheticImage, pixels: np.ndarray, *, seed: int, study: int,
                 instance: int, study_date: str, window: tuple[float, float],
                 spacing_mm: float) -> Dataset:
  """``pixels`` (display 0..1) stored as ``meta`` describes them, ids and UIDs stable for
  ``seed``; ``window`` is the part of the stored range that display 0..1 occupies."""
  sop_uid = _uid(seed, "image", meta.image_id)
  file_meta = FileMetaDataset()
  file_meta.MediaStorageSOPClassUID = dcm_uid.DigitalMammographyXRayImageStorageForPresentation
  file_meta.MediaStorageSOPInstanceUID = sop_uid
  file_meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
  file_meta.ImplementationClassUID = dcm_uid.PYDICOM_IMPLEMENTATION_UID

  ds = Dataset()
  ds.file_meta = file_meta
  ds.SpecificCharacterSet = "ISO_IR 100"
  ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
  ds.SOPClassUID = dcm_uid.DigitalMammographyXRayImageStorageForPresentation
  ds.SOPInstanceUID = sop_uid
  ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study_date
  ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
  ds.AccessionNumber = meta.study_id[:16]
  ds.Modality = "MG"
  ds.PresentationIntentType = "FOR PRESENTATION"
  ds.Manufacturer = MANUFACTURER
  ds.ManufacturerModelName = "breast phantom"
  ds.ReferringPhysicianName = ""
  ds.StudyDescription = "Screening mammography (synthetic)"
  ds.PatientName = f"SYNTHETIC^{meta.patient_id[:8]}"
  ds.PatientID = meta.patient_id
  ds.PatientBirthDate = ""
  ds.PatientSex = "F"
  ds.BodyPartExamined = "BREAST"
  ds.StudyInstanceUID = _uid(seed, "study", meta.study_id)
  ds.SeriesInstanceUID = _uid(seed, "series", meta.study_id)
  ds.StudyID = str(study + 1)
  ds.SeriesNumber = 1
  ds.InstanceNumber = instance
  if not meta.film:
    # Digitised films (DDSM) carry neither: laterality and view are in their file names.
    ds.PatientOrientation = _ORIENTATION[(meta.laterality, meta.view)]
    ds.ImageLaterality = meta.laterality
    ds.ViewPosition = meta.view
  ds.AnatomicRegionSequence = [_code("76752008", "Breast")]
  if not meta.film:
    view = _code(*_VIEW_CODES[meta.view])
    view.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [view]
  ds.OrganExposed = "BREAST"
  ds.PositionerType = "MAMMOGRAPHIC"
  ds.BreastImplantPresent = "NO"
  ds.PartialView = "NO"
  ds.DetectorType = "FILM" if meta.film else "DIRECT"
  ds.ImagerPixelSpacing = ds.PixelSpacing = [_ds(spacing_mm)] * 2
  ds.AcquisitionContextSequence = []
  ds.BurnedInAnnotation = "YES" if meta.film else "NO"
  ds.LossyImageCompression = "00"

  mono1 = meta.photometric == "MONOCHROME1"
  values, center, width = _stored(pixels, meta.photometric, meta.bits_stored, window)
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = meta.photometric
  ds.Rows, ds.Columns = values.shape
  # 8 bits (ROI masks) take a byte per pixel, as in CBIS-DDSM; images take two.
  ds.BitsAllocated = 8 if meta.bits_stored <= 8 else 16
  ds.BitsStored = meta.bits_stored
  ds.HighBit = meta.bits_stored - 1
  ds.PixelRepresentation = 0
  ds.PixelIntensityRelationship = "LOG"
  # +1: lower values are less X-ray intensity, i.e. denser tissue, which is MONOCHROME1.
  ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
  ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
  ds.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"
  if not meta.film:  # Film scans have no VOI window: the stored range is the display range.
    ds.WindowCenter, ds.WindowWidth = _ds(center), _ds(width)
    ds.WindowCenterWidthExplanation = "FULL RANGE" if window == (0.0, 1.0) else "TISSUE"
    ds.VOILUTFunction = "LINEAR"
  if meta.transfer_syntax in (dcm_uid.JPEG2000Lossless, dcm_uid.RLELossless):
    ds.compress(meta.transfer_syntax, values, generate_instance_uid=False)
  else:
    data = values.astype("u1" if ds.BitsAllocated == 8 else "<u2").tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)  # Values have even lengths.
  return ds


def save(ds: Dataset, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)
