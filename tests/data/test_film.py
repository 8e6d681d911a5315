"""Film mode of the synthetic generator, and the robust breast crop on it.

Every film image goes through the real reader (``dicom.read_dicom``), as prepare does.
"""

import csv

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless
from scipy import ndimage

from attend_jax import box_ops
from attend_jax.data import breast, dicom
from attend_jax.data import synthetic as S
import helpers


@pytest.fixture(scope="module")
def film(tmp_path_factory):
  """Three film studies and one full-field study; both photometrics among the films."""
  out = tmp_path_factory.mktemp("film")
  images = S.generate(out, num_studies=4, seed=5, size_range=(300, 500), film_fraction=0.75,
                      monochrome1_fraction=0.5)
  pixels = {im.image_id: dicom.read_dicom(out / im.path).pixels for im in images}
  return out, images, pixels


def _films(film):
  _, images, pixels = film
  return [(im, pixels[im.image_id]) for im in images if im.film]


def _iou(box, true):
  return float(box_ops.pairwise_iou(np.array([box], np.float64),
                                    np.array([true], np.float64))[0, 0])


def _xyxy(box):
  return box.x0, box.y0, box.x1, box.y1


def _old_rule(pixels):
  """The crop before the robust rule: > 10 in 8 bits, largest connected component."""
  labels, _ = ndimage.label(breast.foreground(pixels))
  sizes = np.bincount(labels.ravel())[1:]
  ys, xs = ndimage.find_objects(labels)[int(np.argmax(sizes))]
  return xs.start, ys.start, xs.stop, ys.stop


def test_the_fixture_mixes_what_it_should(film):
  _, images, _ = film
  films = [im for im in images if im.film]
  assert len(films) == 12 and {im.photometric for im in films} == {"MONOCHROME1", "MONOCHROME2"}
  kinds = [a.kind for im in films for a in im.label_boxes]
  assert kinds.count(S.TEXT) >= len(films) and S.MARKER in kinds


def test_robust_crop_finds_the_breast_on_every_film_image(film):
  for im, pixels in _films(film):
    box = breast.find_breast(pixels, im.path, padding=0)
    assert _iou(_xyxy(box), im.breast_box) >= 0.95, (im.path, box, im.breast_box)
    crop = breast.find_breast(pixels, im.path)
    for label in im.label_boxes:
      x0, y0, x1, y1 = label.box
      inside = x0 < crop.x1 and crop.x0 < x1 and y0 < crop.y1 and crop.y0 < y1
      assert not inside, (im.path, label, crop)


def test_film_defeats_fixed_thresholds(film):
  """Evidence that the film mode is hard: the reference and the old rule miss the breast."""
  reference = [_iou(_xyxy(breast.find_breast(px, padding=0, rule="reference")), im.breast_box)
               for im, px in _films(film)]
  old = [_iou(_old_rule(px), im.breast_box) for im, px in _films(film)]
  assert np.mean(np.array(reference) < 0.95) > 0.5 and np.mean(np.array(old) < 0.95) > 0.5


def test_robust_crop_on_full_field_images_of_the_same_dataset(film):
  _, images, pixels = film
  for im in images:
    if not im.film:
      box = breast.find_breast(pixels[im.image_id], padding=0)
      assert _iou(_xyxy(box), im.breast_box) >= 0.97, (im.path, box, im.breast_box)


def test_film_files_look_like_ddsm(film):
  out, images, _ = film
  for im in images:
    ds = pydicom.dcmread(out / im.path)
    if not im.film:
      assert ds.ViewPosition == im.view and ds.ImageLaterality == im.laterality
      continue
    for keyword in ("ViewPosition", "ImageLaterality", "PatientOrientation", "ViewCodeSequence",
                    "WindowCenter", "WindowWidth"):
      assert keyword not in ds, (im.path, keyword)
    assert ds.file_meta.TransferSyntaxUID == RLELossless == im.transfer_syntax
    assert ds.BitsStored == 16 and ds.BurnedInAnnotation == "YES" and ds.DetectorType == "FILM"
    side = "LEFT" if im.laterality == "L" else "RIGHT"
    assert im.path.endswith(f"_{side}_{im.view}.dcm")
    read = dicom.read_dicom(out / im.path)
    assert (read.laterality, read.view) == ("", "")
    # The true breast box holds the tissue: the chest wall is at the laterality's edge.
    x0, _, x1, _ = im.breast_box
    assert (x0 == 0) if im.laterality == "R" else (x1 == im.width)


def test_labels_csv_has_the_film_columns_and_old_csvs_still_read(film, tmp_path):
  out, images, _ = film
  with open(out / "labels.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == S.LABEL_COLUMNS + S.FILM_COLUMNS
  assert S.read_labels(out) == images
  assert all(im.breast_box is not None for im in images)
  assert all(bool(im.label_boxes) == im.film for im in images)
  with open(tmp_path / "labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=S.LABEL_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  old = S.read_labels(tmp_path)
  assert old == [S.SyntheticImage(**{**vars(im), "film": False, "breast_box": None,
                                     "label_boxes": ()}) for im in images]


def test_film_fraction_zero_leaves_the_files_as_they_were(tmp_path):
  kwargs = dict(num_studies=4, seed=3, size_range=(128, 192))
  plain = S.generate(tmp_path / "plain", **kwargs)
  zero = S.generate(tmp_path / "zero", film_fraction=0.0, **kwargs)
  mixed = S.generate(tmp_path / "mixed", film_fraction=0.5, **kwargs)
  assert zero == plain and not any(im.film or im.breast_box for im in plain)
  assert ((tmp_path / "zero/labels.csv").read_bytes()
          == (tmp_path / "plain/labels.csv").read_bytes())
  with open(tmp_path / "plain/labels.csv", newline="") as f:
    assert tuple(csv.DictReader(f).fieldnames) == S.LABEL_COLUMNS
  # Film studies draw from streams of their own: the other studies keep every byte.
  assert sum(im.film for im in mixed) == 8
  for before, after in zip(plain, mixed):
    if not after.film:
      assert after.path == before.path
      assert ((tmp_path / "mixed" / after.path).read_bytes()
              == (tmp_path / "plain" / before.path).read_bytes())
      assert after == S.SyntheticImage(**{**vars(before), "breast_box": after.breast_box})


@pytest.mark.slow
def test_bad_film_fraction_and_the_cli_flag(tmp_path):
  with pytest.raises(S.SyntheticError, match="film_fraction"):
    S.generate(tmp_path / "a", 1, film_fraction=1.5)
  ok = helpers.run("tools/make_synthetic.py", "--out", tmp_path / "d", "--num_studies", "2",
                   "--min_size", "128", "--max_size", "160", "--film_fraction", "0.5")
  assert ok.returncode == 0, ok.stderr
  assert "4 film" in ok.stdout
  assert sum(im.film for im in S.read_labels(tmp_path / "d")) == 4
