"""The DICOM reader on real radiographs from pydicom-data, hand-made files and a bad corpus."""

import pathlib

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

import data_store  # pydicom-data's package: real test files, no download.
from attend_jax.data import breast, dicom
from attend_jax.errors import BreastNotFoundError, DicomError
from dicom_fixtures import phantom as _phantom, write_mg as _mg

DATA = pathlib.Path(data_store.__file__).parent / "data"
PYDICOM_DATA = pathlib.Path(pydicom.__file__).parent / "data" / "test_files"


def test_real_cr_radiograph_uncompressed_and_jpeg2000_give_identical_pixels():
  plain = dicom.read_dicom(DATA / "RG1_UNCR.dcm")
  j2k = dicom.read_dicom(DATA / "RG1_J2KR.dcm")
  assert j2k.transfer_syntax == JPEG2000Lossless and plain.transfer_syntax == ExplicitVRLittleEndian
  assert plain.pixels.shape == (1955, 1841) and plain.pixels.dtype == np.uint16
  assert plain.photometric == "MONOCHROME1" and plain.bits_stored == 15
  np.testing.assert_array_equal(plain.pixels, j2k.pixels)
  assert plain.pixels.min() == 0 and plain.pixels.max() == 65535


def test_monochrome1_is_inverted():
  ds = pydicom.dcmread(DATA / "RG1_UNCR.dcm")
  raw = ds.pixel_array.astype(np.float64)
  got = dicom.read_dicom(DATA / "RG1_UNCR.dcm").pixels
  expected = ((raw.max() - raw) * 65535 / (raw.max() - raw.min())).astype(np.uint16)
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("plain,compressed", [
    ("MR_small.dcm", "MR_small_RLE.dcm"),            # RLE
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),  # JPEG-LS
])
def test_other_codecs_decode_like_the_uncompressed_file(plain, compressed):
  if not (PYDICOM_DATA / compressed).exists():
    pytest.fail(f"pydicom's own test file {compressed} is missing from {PYDICOM_DATA}")
  np.testing.assert_array_equal(dicom.read_dicom(PYDICOM_DATA / plain).pixels,
                                dicom.read_dicom(PYDICOM_DATA / compressed).pixels)


def test_jpeg_lossless_decodes():
  image = dicom.read_dicom(DATA / "JPGLosslessP14SV1_1s_1f_8b.dcm")
  assert image.pixels.ndim == 2 and image.pixels.max() == 65535


def test_metadata_and_voi_window(tmp_path):
  img = _phantom()
  path = _mg(img, tmp_path, WindowCenter=2000, WindowWidth=1000)
  image = dicom.read_dicom(path)
  assert (image.laterality, image.view, image.pixel_spacing) == ("R", "MLO", (0.1, 0.1))
  assert image.sop_uid == "1.2.3.4" and image.manufacturer == "test"
  # Inside the window the values are linear; below it they clip to the minimum.
  windowed = pydicom.pixels.apply_voi_lut(img.astype(np.uint16), pydicom.dcmread(path))
  expected = ((windowed - windowed.min()) * 65535 / (windowed.max() - windowed.min()))
  np.testing.assert_array_equal(image.pixels, expected.astype(np.uint16))
  assert (image.pixels[img < 1500] == 0).all()


def test_bits_above_bits_stored_are_masked(tmp_path):
  img = _phantom().astype(np.uint16)
  clean = dicom.read_dicom(_mg(img, tmp_path, "clean.dcm")).pixels
  noisy = dicom.read_dicom(_mg(img | 0x8000, tmp_path, "overlay.dcm")).pixels
  np.testing.assert_array_equal(clean, noisy)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_mammogram_round_trip(tmp_path, syntax):
  img = _phantom()
  plain = dicom.read_dicom(_mg(img, tmp_path, "plain.dcm", bits=16)).pixels
  packed = dicom.read_dicom(_mg(img, tmp_path, "packed.dcm", bits=16, syntax=syntax))
  assert packed.transfer_syntax == syntax
  np.testing.assert_array_equal(plain, packed.pixels)


def _bad_corpus(tmp_path):
  """The bad files a real dataset folder contains, each with the reason we expect."""
  good = _mg(_phantom(), tmp_path, "good.dcm")
  data = good.read_bytes()
  (tmp_path / "truncated.dcm").write_bytes(data[: len(data) - 4000])
  ds = pydicom.dcmread(good)
  del ds.PixelData
  ds.save_as(tmp_path / "no_pixels.dcm")
  ds = pydicom.dcmread(good)
  ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.99.1"
  ds.save_as(tmp_path / "unknown_syntax.dcm", enforce_file_format=False)
  ds = pydicom.dcmread(good)
  ds.Rows = 0
  ds.save_as(tmp_path / "zero_rows.dcm")
  _mg(np.zeros((64, 48)), tmp_path, "all_black.dcm")
  ds = pydicom.dcmread(_mg(_phantom(), tmp_path, "j2k.dcm", bits=16, syntax=JPEG2000Lossless))
  j2k = (tmp_path / "j2k.dcm").read_bytes()
  (tmp_path / "truncated_j2k.dcm").write_bytes(j2k[: len(j2k) * 2 // 3])
  (tmp_path / "notes.dcm").write_text("not a dicom")
  return {
      "truncated.dcm": "pixel data truncated",
      "truncated_j2k.dcm": "truncated",
      "no_pixels.dcm": "no pixel data",
      "unknown_syntax.dcm": "unknown transfer syntax 1.2.826.0.1.3680043.99.1",
      "zero_rows.dcm": "empty image",
      "all_black.dcm": "no breast found",
      "notes.dcm": "not a DICOM file",
  }


def test_bad_corpus_gives_typed_errors_naming_file_and_reason(tmp_path):
  expected = _bad_corpus(tmp_path)
  for name, reason in expected.items():
    path = tmp_path / name
    with pytest.raises((DicomError, BreastNotFoundError)) as e:
      breast.find_breast(dicom.read_dicom(path).pixels, path)
    assert str(path) in str(e.value), name
    assert reason in e.value.reason, (name, e.value.reason)
  breast.find_breast(dicom.read_dicom(tmp_path / "good.dcm").pixels)


def test_multiframe_is_rejected():
  with pytest.raises(DicomError, match="multi-frame"):
    dicom.read_dicom(DATA / "emri_small.dcm")


@pytest.fixture(scope="module")
def small_dicom_bytes(tmp_path_factory):
  return _mg(_phantom(40, 30), tmp_path_factory.mktemp("fuzz"), bits=16).read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_dicom_raises_only_the_typed_error(tmp_path_factory, small_dicom_bytes, data):
  blob = bytearray(small_dicom_bytes)
  cut = data.draw(st.integers(0, len(blob)))
  blob = blob[:cut] if data.draw(st.booleans()) else blob
  for _ in range(data.draw(st.integers(0, 8))):
    if blob:
      blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
  path = tmp_path_factory.mktemp("f") / "x.dcm"
  path.write_bytes(bytes(blob))
  try:
    image = dicom.read_dicom(path)
  except DicomError:
    return
  assert image.pixels.dtype == np.uint16 and image.pixels.ndim == 2
