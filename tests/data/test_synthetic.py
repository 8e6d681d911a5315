"""Synthetic MG dataset: valid DICOM, deterministic, lesions inside the breast and visible."""

import collections
import csv
import pathlib

import numpy as np
import pydicom
import pytest
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation as MG_SOP_CLASS
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from attend_jax.data import synthetic as S
import helpers

ROOT = pathlib.Path(__file__).resolve().parents[2]
MASSES = (S.SPICULATED_MASS, S.ROUND_MASS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic")
  return out, S.generate(out, num_studies=6, seed=1, size_range=(256, 400))


def _read(path) -> pydicom.Dataset:
  ds = pydicom.dcmread(path)
  if ds.file_meta.TransferSyntaxUID == JPEG2000Lossless:
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
  return ds


def _display(ds) -> np.ndarray:
  """Stored values through the file's window, MONOCHROME1 undone: 0..1, dense tissue bright."""
  center, width = float(ds.WindowCenter), float(ds.WindowWidth)
  low = center - 0.5 - (width - 1) / 2
  shown = np.clip((ds.pixel_array.astype(np.float64) - low) / (width - 1), 0.0, 1.0)
  return 1.0 - shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


def _box_and_ring(image, box):
  x0, y0, x1, y1 = box
  margin = max(x1 - x0, y1 - y0) // 2 + 1
  ry0, rx0 = max(0, y0 - margin), max(0, x0 - margin)
  ry1, rx1 = min(image.shape[0], y1 + margin), min(image.shape[1], x1 + margin)
  ring = np.ones((ry1 - ry0, rx1 - rx0), bool)
  ring[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = False
  return image[y0:y1, x0:x1], image[ry0:ry1, rx0:rx1][ring]


def test_same_seed_same_dataset(tmp_path):
  kwargs = dict(num_studies=2, size_range=(128, 192))
  first = S.generate(tmp_path / "a", seed=3, **kwargs)
  assert S.generate(tmp_path / "b", seed=3, **kwargs) == first
  other = S.generate(tmp_path / "c", seed=4, **kwargs)
  assert (tmp_path / "a/labels.csv").read_bytes() == (tmp_path / "b/labels.csv").read_bytes()
  assert (tmp_path / "a/labels.csv").read_bytes() != (tmp_path / "c/labels.csv").read_bytes()
  for im, im_other in zip(first, other):
    a, b = tmp_path / "a" / im.path, tmp_path / "b" / im.path
    assert a.read_bytes() == b.read_bytes()
    np.testing.assert_array_equal(_read(a).pixel_array, _read(b).pixel_array)
    assert not np.array_equal(_read(a).pixel_array,
                              _read(tmp_path / "c" / im_other.path).pixel_array)


def test_phantom_is_deterministic():
  a = S.phantom(160, kinds=(S.SPICULATED_MASS,), seed=5)
  b = S.phantom(160, kinds=(S.SPICULATED_MASS,), seed=5)
  np.testing.assert_array_equal(a.image, b.image)
  assert a.lesions == b.lesions
  assert not np.array_equal(a.image, S.phantom(160, kinds=(S.SPICULATED_MASS,), seed=6).image)


def test_files_are_valid_mg_for_presentation(dataset):
  out, images = dataset
  for im in images:
    ds = _read(out / im.path)
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == MG_SOP_CLASS
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == im.transfer_syntax
    assert ds.Modality == "MG" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.ImageLaterality == im.laterality and ds.ViewPosition == im.view
    assert ds.PatientID == im.patient_id and ds.Manufacturer == S.MANUFACTURER
    chest_wall_side = "A" if im.laterality == "R" else "P"
    assert list(ds.PatientOrientation)[0] == chest_wall_side
    assert ds.AnatomicRegionSequence[0].CodeValue == "76752008"
    code = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
    view = ds.ViewCodeSequence[0]
    assert (view.CodeValue, view.CodeMeaning) == code[im.view]
    assert view.CodingSchemeDesignator == "SCT"
    assert ds.OrganExposed == "BREAST" and ds.BurnedInAnnotation == "NO"
    assert ds.PixelIntensityRelationship == "LOG"
    assert ds.PresentationLUTShape == ("INVERSE" if im.photometric == "MONOCHROME1"
                                       else "IDENTITY")
    assert float(ds.ImagerPixelSpacing[0]) == float(ds.PixelSpacing[0]) > 0
    assert (ds.Rows, ds.Columns) == (im.height, im.width)
    assert ds.PhotometricInterpretation == im.photometric
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, im.bits_stored,
                                                            im.bits_stored - 1)
    assert ds.SamplesPerPixel == 1 and ds.PixelRepresentation == 0
    assert "WindowCenter" in ds and "WindowWidth" in ds
    pixels = ds.pixel_array
    assert pixels.shape == (im.height, im.width) and pixels.dtype == np.uint16
    assert int(pixels.max()) <= 2**im.bits_stored - 1
    assert int(pixels.max()) > 2 ** (im.bits_stored - 3)  # Uses its bit depth.
  uids = [pydicom.dcmread(out / im.path, stop_before_pixels=True).SOPInstanceUID for im in images]
  assert len(set(uids)) == len(uids)


def test_a_short_run_mixes_encodings(dataset):
  out, images = dataset
  assert {im.photometric for im in images} == {"MONOCHROME1", "MONOCHROME2"}
  assert {im.bits_stored for im in images} == {12, 14, 16}
  assert {im.transfer_syntax for im in images} == {ExplicitVRLittleEndian, JPEG2000Lossless}
  assert len({(im.height, im.width) for im in images}) > 1
  narrow = [float(pydicom.dcmread(out / im.path, stop_before_pixels=True).WindowWidth)
            < 2**im.bits_stored for im in images]
  assert any(narrow) and not all(narrow)


def test_labels_csv_and_study_structure(dataset):
  out, images = dataset
  with open(out / "labels.csv", newline="") as f:
    assert tuple(csv.DictReader(f).fieldnames) == S.LABEL_COLUMNS
  assert S.read_labels(out) == images
  studies = collections.defaultdict(list)
  for im in images:
    assert (out / im.path).is_file() and im.path == f"images/{im.study_id}/{im.image_id}.dcm"
    studies[im.study_id].append(im)
  assert len(studies) == 6
  for views in studies.values():
    assert sorted((im.laterality, im.view) for im in views) == [
        ("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    assert len({im.patient_id for im in views}) == 1
    for side in "LR":
      assert len({im.label for im in views if im.laterality == side}) == 1
  assert sum(im.label for im in images) == 2 * round(0.4 * 12)  # Two views per breast.


def test_lesions_lie_inside_the_breast_and_match_the_label(dataset):
  out, images = dataset
  assert any(not im.lesions for im in images)
  assert any(l.kind == S.ROUND_MASS for im in images if not im.label for l in im.lesions)
  for im in images:
    kinds = {l.kind for l in im.lesions}
    assert bool(kinds & set(S.MALIGNANT_KINDS)) == bool(im.label)
    if not im.lesions:
      continue
    image = _display(_read(out / im.path))
    # Air, far from the chest wall, at the top corner.
    air = image[0, -1] if im.laterality == "R" else image[0, 0]
    for lesion in im.lesions:
      x0, y0, x1, y1 = lesion.box
      assert 0 <= x0 < x1 <= im.width and 0 <= y0 < y1 <= im.height
      assert (image[y0:y1, x0:x1] > air).all(), (im.image_id, lesion)


def test_lesions_are_visible(dataset):
  out, images = dataset
  seen = collections.Counter()
  for im in images:
    if not im.lesions:
      continue
    image = _display(_read(out / im.path))
    for lesion in im.lesions:
      inside, ring = _box_and_ring(image, lesion.box)
      if lesion.kind in MASSES:
        assert inside.mean() > ring.mean() + 0.01, (im.image_id, lesion)
      else:
        assert inside.max() > np.percentile(ring, 99) + 0.05, (im.image_id, lesion)
      seen[lesion.kind] += 1
  assert set(seen) == set(S.KINDS)


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("laterality", ["L", "R"])
def test_phantom_boxes_inside_breast_mask(laterality, view):
  for seed in range(3):
    p = S.phantom(200, laterality=laterality, view=view, kinds=S.KINDS, density=0.3 * seed,
                  seed=seed)
    assert p.image.dtype == np.float32 and p.image.shape == (200, 160)
    assert p.image.min() == 0.0 and p.image.max() <= 1.0
    assert (p.image[~p.breast] == 0).all() and (p.image[p.breast] > 0).mean() > 0.99
    # The chest wall touches the edge on the breast's own side.
    edge = p.breast[:, 0] if laterality == "R" else p.breast[:, -1]
    assert edge.mean() > 0.5
    assert [l.kind for l in p.lesions] == list(S.KINDS)
    for lesion in p.lesions:
      x0, y0, x1, y1 = lesion.box
      assert p.breast[y0:y1, x0:x1].all(), lesion


def test_bad_arguments_raise(tmp_path):
  with pytest.raises(S.SyntheticError, match="size range"):
    S.generate(tmp_path / "a", 1, size_range=(500, 300))
  with pytest.raises(S.SyntheticError, match="malignant_fraction"):
    S.generate(tmp_path / "a", 1, malignant_fraction=0.8, benign_fraction=0.5)
  with pytest.raises(S.SyntheticError, match="lesion kind"):
    S.phantom(128, kinds=("tumour",))
  S.generate(tmp_path / "b", 1, size_range=(96, 96))
  with pytest.raises(S.SyntheticError, match="already holds a dataset"):
    S.generate(tmp_path / "b", 1, size_range=(96, 96))


@pytest.mark.slow
def test_cli(tmp_path):
  ok = helpers.run("tools/make_synthetic.py", "--out", tmp_path / "d", "--num_studies", "2",
                   "--seed", "2", "--min_size", "128", "--max_size", "160",
                   "--backbone", tmp_path / "w" / "random.safetensors")
  assert ok.returncode == 0, ok.stderr
  assert "wrote 8 images (2 studies" in ok.stdout and "8/8" in ok.stderr
  assert len(S.read_labels(tmp_path / "d")) == 8
  # The stand-in weights read as a timm hub file of the :tiny size would.
  from attend_jax.convert import dinov2
  from configs import common

  assert f"--checkpoint {tmp_path / 'w' / 'random.safetensors'}" in ok.stdout
  sizes = {k: v for k, v in common.TINY_VIT.items() if k != "pretrained_grid"}
  loaded = dinov2.load_pretrained(tmp_path / "w" / "random.safetensors", "vitb14", **sizes)
  assert loaded.source_format == "timm"
  assert loaded.model.cfg.pretrained_grid == common.TINY_VIT["pretrained_grid"]
  bad = helpers.run("tools/make_synthetic.py", "--out", tmp_path / "e", "--min_size", "400",
                    "--max_size", "300")
  assert bad.returncode == 1 and "error: size range 400..300" in bad.stderr


def test_parallel_rendering_writes_the_same_files(tmp_path):
  one = S.generate(tmp_path / "one", 2, seed=3, size_range=(120, 160), workers=1)
  two = S.generate(tmp_path / "two", 2, seed=3, size_range=(120, 160), workers=2)
  assert one == two
  for im in one:
    assert (tmp_path / "one" / im.path).read_bytes() == (tmp_path / "two" / im.path).read_bytes()
  assert (tmp_path / "one" / "labels.csv").read_text() == (tmp_path / "two" / "labels.csv").read_text()
