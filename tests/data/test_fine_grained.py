"""The generator's fine-grained mode: cancers and benign look-alikes on the same images, apart
by one knob (``difference``); at 0 they are identical, at 1 they differ in documented ways."""

import csv
import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from attend_jax.data import synthetic as S
from attend_jax.data.synthetic import lesions
from attend_jax.data.sources import synthetic_csv

Y, X = np.mgrid[-80:81, -80:81].astype(np.float32)


def _render(kind: str, difference: float, seed: int) -> np.ndarray:
  finding = lesions.draw_fine(np.random.default_rng(seed), kind, difference)
  rng = np.random.default_rng(seed + 1000)
  if kind in S.CALCIFICATIONS:
    patch, _ = lesions._fine_calcifications(rng, X, Y, 18.0, finding.contrast, 0.8,
                                            finding.malignancy)
  else:
    patch, _ = lesions._fine_mass(rng, X, Y, 15.0, finding.contrast, finding.malignancy)
  return patch


@pytest.mark.parametrize("malignant,benign", [(S.SPICULATED_MASS, S.ROUND_MASS),
                                              (S.CALCIFICATION_CLUSTER, S.BENIGN_CALCIFICATIONS)])
def test_at_difference_zero_a_cancer_is_drawn_exactly_as_its_look_alike(malignant, benign):
  for seed in range(10):
    a, b = (lesions.draw_fine(np.random.default_rng(seed), k, 0.0) for k in (malignant, benign))
    assert dataclasses.replace(a, kind=benign) == b  # Same size, contrast, depth, malignancy 0.
    np.testing.assert_array_equal(_render(malignant, 0.0, seed), _render(benign, 0.0, seed))


def _mass_stats(patch: np.ndarray) -> tuple[float, float]:
  """(compactness of the core: 4 pi area / perimeter^2, 1 for a disc; and the share of the
  mass's signal outside twice its core radius: spicules)."""
  core = patch > 0.5 * patch.max()
  area = core.sum()
  perimeter = (core ^ ndimage.binary_erosion(core)).sum()
  radius = np.sqrt(area / np.pi)
  far = np.hypot(X, Y) > 2 * radius
  return 4 * np.pi * area / perimeter ** 2, patch[far].sum() / patch.sum()


def _calc_stats(patch: np.ndarray) -> tuple[int, float, float]:
  """(specks, mean speck area in px, spread: the rms distance of speck centres)."""
  labels, n = ndimage.label(patch > 0.3 * patch.max())
  centres = np.array(ndimage.center_of_mass(patch, labels, range(1, n + 1)))
  areas = ndimage.sum_labels(np.ones_like(patch), labels, range(1, n + 1))
  spread = np.sqrt(((centres - centres.mean(0)) ** 2).sum(1).mean())
  return n, float(areas.mean()), float(spread)


def test_at_difference_one_the_classes_differ_as_documented():
  mal = np.array([_mass_stats(_render(S.SPICULATED_MASS, 1.0, s)) for s in range(20)])
  ben = np.array([_mass_stats(_render(S.ROUND_MASS, 1.0, s)) for s in range(20)])
  # Benign masses: compact ovals; malignant: lobulated cores with signal on spicules far out.
  assert ben[:, 0].mean() > mal[:, 0].mean()
  assert ben[:, 1].max() < 0.01 < mal[:, 1].mean()
  cal = np.array([_calc_stats(_render(S.CALCIFICATION_CLUSTER, 1.0, s)) for s in range(20)])
  coarse = np.array([_calc_stats(_render(S.BENIGN_CALCIFICATIONS, 1.0, s)) for s in range(20)])
  # Benign: a few coarse specks, scattered; malignant: more, finer, clustered.
  assert cal[:, 0].mean() > coarse[:, 0].mean()
  assert cal[:, 1].mean() < coarse[:, 1].mean()
  assert cal[:, 2].mean() < coarse[:, 2].mean()
  # In between, a cancer moves from one to the other: spicule signal grows with the knob.
  far = [np.mean([_mass_stats(_render(S.SPICULATED_MASS, d, s))[1] for s in range(10)])
         for d in (0.0, 0.5, 1.0)]
  assert far[0] < far[1] < far[2]


def test_fine_grained_datasets_put_look_alikes_beside_cancers(tmp_path):
  images = S.generate(tmp_path / "d", 12, seed=3, size_range=(200, 260), jpeg2000_fraction=0,
                      malignant_fraction=0.4, benign_fraction=0.3, difference=0.6,
                      lookalike_fraction=1.0, workers=1)
  kinds = {(im.label, tuple(sorted(l.kind for l in im.lesions))) for im in images}
  cancers = [k for label, k in kinds if label == 1]
  assert cancers and all(len(set(k) & set(S.BENIGN_KINDS)) for k in cancers)  # A look-alike.
  assert any(k for label, k in kinds if label == 0)  # Benign findings on label-0 images.
  assert all(set(k) <= set(S.BENIGN_KINDS) for label, k in kinds if label == 0)
  # The source says which of an image's boxes are cancers, for the contrastive term.
  listing = synthetic_csv.list_examples(tmp_path / "d")
  with open(tmp_path / "d" / "labels.csv", newline="") as f:
    rows = {row["image_id"]: json.loads(row["lesions"]) for row in csv.DictReader(f)}
  for ex in listing.examples:
    assert ex.lesion_malignant == tuple(l["kind"] in S.MALIGNANT_KINDS for l in rows[ex.image_id])
  with pytest.raises(S.SyntheticError, match="difference 1.5 is outside"):
    S.generate(tmp_path / "e", 1, difference=1.5)
