"""configs/vindr.py, configs/detector_vindr.py and configs/vindr.py:detector (``:tiny``) from
VinDr-Mammo's own layout: its two CSVs and images/<study>/<image>.dicom, on one device as a
user's shell has."""

import pathlib

import pytest

import flow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vindr(tmp_path_factory) -> pathlib.Path:
  """``tools/make_synthetic.py --layout vindr`` prepared by docs/data.md's command, at the :tiny
  size (--long_side 256)."""
  root = tmp_path_factory.mktemp("vindr")
  # With docs/data.md's --backbone: the stand-in weights, and the convert command that reads them
  # (tests/data/test_synthetic.py converts such a file; the tier trains on the Meta-format one).
  weights = root / "random_dinov2_tiny.safetensors"
  made = flow.ok("tools/make_synthetic.py", "--layout=vindr", f"--out={root / 'vindr-mammo'}",
                 "--num_studies=10", "--min_size=200", "--max_size=300", f"--backbone={weights}")
  assert weights.stat().st_size > 0 and f"--checkpoint {weights}" in made, made
  out = flow.ok("tools/prepare_data.py", "--dataset", "vindr", "--root", root / "vindr-mammo",
                "--out", root / "data", "--long_side", "256", "--workers=2")
  for split in ("train", "val", "test"):
    assert f"{split}:" in out, out
  return root


def _dicoms(root: pathlib.Path) -> list[pathlib.Path]:
  files = sorted((root / "vindr-mammo" / "images").glob("*/*.dicom"))
  assert files
  return files


def test_the_classifier_trains_with_its_backbone_and_evaluates_and_predicts(vindr, backbone,
                                                                            tmp_path):
  work = tmp_path / "vindr"
  metrics, _ = flow.train("configs/vindr.py:tiny", work, vindr / "data", backbone)
  assert metrics["num_examples"] > 0 and 0 < metrics["num_positive"] < metrics["num_examples"]
  flow.check_backbone(work, backbone, frozen=3)
  evaluated = flow.evaluate(work, tmp_path / "evaluate")
  assert evaluated["num_examples"] == metrics["num_examples"]
  images = flow.predict(work, _dicoms(vindr)[:4], tmp_path / "predict")
  assert {im["laterality"] for im in images} <= {"L", "R"}


def test_the_two_stage_recipe_detector_first(vindr, backbone, tmp_path):
  detector = tmp_path / "detector_vindr"
  metrics, _ = flow.train("configs/detector_vindr.py:tiny", detector, vindr / "data", backbone)
  assert metrics["num_lesions"] > 0 and metrics["recall@10_iou0.3"] is not None
  flow.check_backbone(detector, backbone, frozen=3)
  evaluated = flow.evaluate(detector, tmp_path / "evaluate_detector")
  assert evaluated["num_lesions"] > 0 and evaluated["froc"] is not None
  work = tmp_path / "vindr_det"
  metrics, out = flow.train("configs/vindr.py:tiny,detector", work, vindr / "data", backbone,
                            f"--config.proposals.detector={detector}")
  assert "Proposals: the detector of" in out and metrics["num_examples"] > 0
  images = flow.predict(work, _dicoms(vindr)[:2], tmp_path / "predict")
  for image in images:
    assert all(r["detector_score"] is not None for r in image["rois"][1:]), image["rois"]
  # The same recipe with the boxes computed once into the records (configs/vindr.py:proposals).
  out = flow.ok("tools/export_proposals.py", f"--detector={detector}", "--records")
  assert "the prepared dataset vindr_256_det in" in out
  metrics, out = flow.train("configs/vindr.py:tiny,proposals", tmp_path / "vindr_props",
                            vindr / "data", backbone)
  assert "Proposals: the detector of" not in out and metrics["num_examples"] > 0
