"""Small, valid mammography DICOM files written on the fly for tests."""

import pathlib

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian


def write_mg(pixels, folder, name="mg.dcm", photometric="MONOCHROME2", bits=12, syntax=None,
             **attrs):
  """Writes ``pixels`` as an MG DICOM file in ``folder``; ``attrs`` set extra attributes (None
  removes one, e.g. ``ViewPosition=None`` for a DDSM-like file without it)."""
  meta = FileMetaDataset()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
  meta.MediaStorageSOPInstanceUID = "1.2.3.4"
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, "1.2.3.4", "MG"
  ds.Rows, ds.Columns = pixels.shape
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
