"""Small, valid mammography DICOM files written on the fly for tests."""

import numpy as np
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
