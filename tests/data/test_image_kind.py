"""dicom.check_image_kind: the header checks of a reading room, on synthetic files with each
header and on every real file of pydicom-data and pydicom's own test files."""

import pathlib

import numpy as np
import pydicom
import pytest
from pydicom import uid

import data_store  # pydicom-data's package: real test files, no download.
from attend_jax.data import dicom, synthetic
from attend_jax.errors import DicomError
from dicom_fixtures import MARKED, REFUSED, phantom, reading_room, write_mg

REAL = [pathlib.Path(data_store.__file__).parent / "data",
        pathlib.Path(pydicom.__file__).parent / "data" / "test_files"]


def _refusal(path) -> str:
  """The reason both the header check and the full read give for ``path``."""
  with pytest.raises(DicomError) as header:
    dicom.image_header(path)
  with pytest.raises(DicomError) as read:
    dicom.read_dicom(path)
  assert header.value.reason == read.value.reason and header.value.path == str(path)
  return header.value.reason


@pytest.mark.parametrize("attrs,why", [
    (dict(PresentationIntentType="FOR PROCESSING"), "PresentationIntentType FOR PROCESSING"),
    (dict(ImageType=["ORIGINAL", "PRIMARY", "FOR PROCESSING"]),
     "ImageType ORIGINAL/PRIMARY/FOR PROCESSING"),
    (dict(SOPClassUID=uid.DigitalMammographyXRayImageStorageForProcessing),
     "Digital Mammography X-Ray Image Storage - For Processing"),
    (dict(SOPClassUID=uid.DigitalXRayImageStorageForProcessing),
     "Digital X-Ray Image Storage - For Processing"),
])
def test_for_processing_images_are_refused_with_the_header_that_says_so(tmp_path, attrs, why):
  reason = _refusal(write_mg(phantom(), tmp_path, **attrs))
  assert reason == (f"FOR PROCESSING image (raw detector data; {why}): only FOR PRESENTATION"
                    " images can be read")


@pytest.mark.parametrize("frames,attrs,start", [
    (3, dict(SOPClassUID=uid.BreastTomosynthesisImageStorage),
     "breast tomosynthesis (Breast Tomosynthesis Image Storage, 3 frames): only 2-D"),
    (1, dict(SOPClassUID=uid.BreastTomosynthesisImageStorage),  # One slice of a volume.
     "breast tomosynthesis (Breast Tomosynthesis Image Storage, 1 frame): only 2-D"),
    (2, dict(SOPClassUID=uid.BreastProjectionXRayImageStorageForPresentation),
     "breast tomosynthesis projections (Breast Projection X-Ray Image Storage - For"
     " Presentation, 2 frames)"),
    (1, dict(ImageType=["ORIGINAL", "PRIMARY", "TOMOSYNTHESIS"]),
     "breast tomosynthesis (ImageType ORIGINAL/PRIMARY/TOMOSYNTHESIS, 1 frame)"),
    (4, {}, "multi-frame image (4 frames, e.g. breast tomosynthesis): only one-frame 2-D"),
    # A synthesised 2-D view is one image: several frames are not.
    (2, dict(ImageType=["DERIVED", "PRIMARY", "GENERATED_2D"]), "multi-frame image (2 frames"),
])
def test_tomosynthesis_is_refused(tmp_path, frames, attrs, start):
  img = phantom()
  reason = _refusal(write_mg(np.stack([img] * frames) if frames > 1 else img, tmp_path, **attrs))
  assert reason.startswith(start), reason
  if "multi-frame" not in start:
    assert reason.endswith("a synthesised 2-D view of the study, ImageType GENERATED_2D, can)")


@pytest.mark.parametrize("attrs,marks", [
    ({}, ()),  # No PresentationIntentType, ImageType nor BurnedInAnnotation: accepted.
    (dict(PresentationIntentType="FOR PRESENTATION", ImageType=["ORIGINAL", "PRIMARY", ""],
          BurnedInAnnotation="NO"), ()),
    (dict(ImageType=["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"]),
     (dicom.GENERATED_2D,)),
    # The standard's place for it too: a one-frame Breast Tomosynthesis Image.
    (dict(ImageType=["DERIVED", "PRIMARY", "GENERATED_2D"],
          SOPClassUID=uid.BreastTomosynthesisImageStorage), (dicom.GENERATED_2D,)),
    (dict(BurnedInAnnotation="YES"), (dicom.BURNED_IN,)),
    (dict(ImageType=["DERIVED", "SECONDARY", "CAD"]), (dicom.CAD_MARKS,)),
    (dict(SeriesDescription="R2 ImageChecker CAD", BurnedInAnnotation="YES"),
     (dicom.BURNED_IN, dicom.CAD_MARKS)),
    (dict(DerivationDescription="CAD_MARKS overlaid"), (dicom.CAD_MARKS,)),
    (dict(SeriesDescription="CADENCE L CC"), ()),  # "CAD" inside a word says nothing.
])
def test_accepted_images_carry_their_marks_into_the_decoded_image(tmp_path, attrs, marks):
  path = write_mg(phantom(), tmp_path, **attrs)
  assert dicom.check_image_kind(pydicom.dcmread(path), path) == marks
  image = dicom.read_dicom(path)
  assert image.marks == marks and image.pixels.shape == (120, 90)


def test_a_number_of_frames_that_is_no_number_is_a_dicom_error():
  assert _refusal(REAL[1] / "badVR.dcm") == "NumberOfFrames '1A' is not a number"


def test_the_reading_room_fixture_is_refused_and_marked_as_its_table_says(tmp_path):
  paths = reading_room(tmp_path)
  for name, path in paths.items():
    if name in REFUSED:
      assert _refusal(path).startswith(REFUSED[name]), name
    else:
      assert list(dicom.read_dicom(path).marks) == MARKED[name], name
  assert set(paths) == set(REFUSED) | set(MARKED)


def _single_frame_images(folders):
  for folder in folders:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
      try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
      except Exception:  # noqa: BLE001  (not a DICOM, or a deliberately broken one: not ours)
        continue
      if "Rows" in ds and frames == 1:
        yield path, ds


def test_every_real_single_frame_image_passes_unmarked():
  """Real files mostly lack PresentationIntentType (and CR, CT, MR, SC files carry ImageType
  values of their own): a missing or unknown value means accept."""
  checked = 0
  for path, ds in _single_frame_images(REAL):
    assert dicom.check_image_kind(ds, path) == (), path
    checked += 1
  assert checked > 100  # pydicom-data and pydicom's test files are there.


def test_the_synthetic_writer_s_mammograms_pass_and_its_film_scans_are_marked_burned_in(tmp_path):
  images = synthetic.generate(tmp_path, 2, seed=3, size_range=(200, 260), film_fraction=0.5,
                              workers=1)
  assert {im.film for im in images} == {False, True}
  for im in images:
    path = tmp_path / im.path
    want = (dicom.BURNED_IN,) if im.film else ()  # A film scan's labels are in its pixels.
    assert dicom.check_image_kind(pydicom.dcmread(path, stop_before_pixels=True), path) == want
