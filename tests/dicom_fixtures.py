"""Small, valid mammography DICOM files written on the fly for tests."""

import pathlib

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian


def write_mg(pixels, folder, name="mg.dcm", photometric="MONOCHROME2", bits=12, syntax=None,
             **attrs):
  """Writes ``pixels`` as an MG DICOM file in ``folder``; ``attrs`` set extra attributes (None
  removes one, e.g. ``ViewPosition=None`` for a DDSM-like file without it; ``SOPClassUID``
  sets the file meta's too). ``pixels`` of shape (frames, H, W) make a multi-frame file."""
  meta = FileMetaDataset()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
  meta.MediaStorageSOPInstanceUID = "1.2.3.4"
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, "1.2.3.4", "MG"
  ds.Rows, ds.Columns = pixels.shape[-2:]
  if pixels.ndim == 3:
    ds.NumberOfFrames = pixels.shape[0]
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
  ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
  ds.PhotometricInterpretation = photometric
  ds.ImageLaterality, ds.ViewPosition, ds.Manufacturer = "R", "MLO", "test"
  ds.ImagerPixelSpacing = [0.1, 0.1]
  for key, value in attrs.items():
    if value is None:
      delattr(ds, key)
    else:
      setattr(ds, key, value)
  meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", meta.MediaStorageSOPClassUID)
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  if syntax is not None:
    ds.compress(syntax, pixels.astype(np.uint16), generate_instance_uid=False)
  path = folder / name
  ds.save_as(path, enforce_file_format=True)
  return path


def phantom(h=120, w=90, seed=0):
  """A bright, textured block touching the left edge on a black background."""
  rng = np.random.default_rng(seed)
  img = np.zeros((h, w))
  y0, y1, x1 = h // 6, h * 5 // 6, w * 2 // 3
  img[y0:y1, :x1] = 1500 + rng.integers(0, 2000, size=(y1 - y0, x1))
  return img


def pixel_offset(path: pathlib.Path) -> tuple[bytes, int, int]:
  """The file's bytes, and where its pixel data value starts and how long it is (the fixtures
  write PixelData last)."""
  raw = path.read_bytes()
  value = bytes(pydicom.dcmread(path).PixelData)
  start = raw.find(value)
  assert start > 0
  return raw, start, len(value)


def corrupt(src: pathlib.Path, dst: pathlib.Path, offset: int, length: int = 64,
            value: int = 0) -> pathlib.Path:
  raw, start, _ = pixel_offset(src)
  b = bytearray(raw)
  b[start + offset:start + offset + length] = bytes([value]) * length
  dst.write_bytes(bytes(b))
  return dst


def panics(path: pathlib.Path) -> bool:
  try:
    pydicom.dcmread(path).pixel_array
  except BaseException as e:  # noqa: BLE001  (looking for pyo3's PanicException on purpose)
    return type(e).__name__ == "PanicException"
  return False


def panicking_rle(pixels, folder, name="rle_panic.dcm"):
  """An RLE file of ``pixels`` whose pixel data pylibjpeg-rle's Rust decoder panics on: 64 zero
  bytes 64+ bytes into the frame, where the segment lengths stop adding up, at the first offset
  that makes it index out of bounds."""
  from pydicom.uid import RLELossless

  source = write_mg(pixels, folder, f"{name}.src", bits=16, syntax=RLELossless)
  try:
    for offset in range(200, 60_000, 331):
      candidate = corrupt(source, folder / name, offset)
      if panics(candidate):
        return candidate
  finally:
    source.unlink()
  raise AssertionError("no corruption made pylibjpeg-rle panic; the codec changed")


# One file per case of dicom.check_image_kind, all of one study (so that the usable views,
# L-CC, L-MLO and R-CC, leave R-MLO missing): name -> (side, view, attributes).
READING_ROOM = {
    # Refused: raw detector data, in a For Processing SOP class.
    "for_processing": ("R", "MLO", dict(
        PresentationIntentType="FOR PROCESSING", ImageType=["ORIGINAL", "PRIMARY", ""],
        SOPClassUID=pydicom.uid.DigitalMammographyXRayImageStorageForProcessing)),
    # Refused: a tomosynthesis volume of 3 slices.
    "tomosynthesis": ("R", "MLO", dict(
        SOPClassUID=pydicom.uid.BreastTomosynthesisImageStorage,
        ImageType=["ORIGINAL", "PRIMARY", "TOMOSYNTHESIS", "NONE"])),
    # Accepted, marked generated_2d: a synthesised 2-D view (C-View, V-Preview, ...).
    "generated_2d": ("L", "CC", dict(
        PresentationIntentType="FOR PRESENTATION",
        ImageType=["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"])),
    # Accepted, marked burned_in_annotation.
    "burned_in": ("L", "MLO", dict(BurnedInAnnotation="YES")),
    # Accepted, marked burned_in_annotation and cad_marks: a CAD system's marked copy.
    "cad": ("R", "CC", dict(BurnedInAnnotation="YES", ImageType=["DERIVED", "SECONDARY"],
                            SeriesDescription="ImageChecker CAD")),
}
REFUSED = {"for_processing": "FOR PROCESSING image (raw detector data",
           "tomosynthesis": "breast tomosynthesis (Breast Tomosynthesis Image Storage, 3 frames)"}
MARKED = {"generated_2d": ["generated_2d"], "burned_in": ["burned_in_annotation"],
          "cad": ["burned_in_annotation", "cad_marks"]}


def reading_room(folder, patient="RR") -> dict[str, pathlib.Path]:
  """``READING_ROOM``'s files in ``folder``, as ``<name>.dcm``, of one study of ``patient``."""
  folder.mkdir(parents=True, exist_ok=True)
  paths = {}
  for i, (name, (side, view, attrs)) in enumerate(READING_ROOM.items()):
    img = phantom(seed=i)
    pixels = np.stack([img] * 3) if name == "tomosynthesis" else img
    paths[name] = write_mg(pixels, folder, f"{name}.dcm", ImageLaterality=side,
                           ViewPosition=view, PatientID=patient, StudyDate="20240102",
                           StudyInstanceUID="1.2.826.0.1.3680043.8.498.1", **attrs)
  return paths
