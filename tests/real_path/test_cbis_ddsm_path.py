"""configs/cbis.py, configs/detector_cbis.py and configs/cbis.py:detector (``:tiny``) from
CBIS-DDSM's own layout: the NBIA folders, ROI masks and case-description CSVs; the classifier on
8 devices, its backbone read into FSDP-split parameters (under the run's mesh, where loading
used to crash), evaluated and used for prediction on one."""

import pathlib
import shutil

import pytest

import flow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cbis(tmp_path_factory) -> pathlib.Path:
  """``tools/make_synthetic.py --layout cbis_ddsm`` prepared by docs/data.md's command, at the
  :tiny size (--long_side 256)."""
  root = tmp_path_factory.mktemp("cbis")
  flow.ok("tools/make_synthetic.py", "--layout=cbis_ddsm", f"--out={root / 'CBIS-DDSM'}",
          "--num_studies=10", "--min_size=200", "--max_size=300")
  out = flow.ok("tools/prepare_data.py", "--dataset", "cbis_ddsm", "--root",
                root / "CBIS-DDSM", "--out", root / "data", "--long_side", "256",
                "--workers=2")
  for split in ("train", "val", "test"):
    assert f"{split}:" in out, out
  return root


def _mammograms(root: pathlib.Path) -> list[pathlib.Path]:
  """The full-mammogram DICOMs (not the ROI masks), as NBIA names them."""
  files = sorted(p for p in (root / "CBIS-DDSM").rglob("1-1.dcm")
                 if not p.relative_to(root / "CBIS-DDSM").parts[-4].split("_")[-1].isdigit())
  assert files
  return files


def test_the_classifier_trains_with_its_backbone_and_evaluates_and_predicts(cbis, backbone,
                                                                            tmp_path):
  work = tmp_path / "cbis"
  metrics, _ = flow.train("configs/cbis.py:tiny", work, cbis / "data", backbone,
                          "--config.mesh.fsdp=2", devices=8)
  assert metrics["num_examples"] == flow.test_images(cbis / "data") > 0
  assert 0 < metrics["num_positive"] < metrics["num_examples"] and metrics["auc"] is not None
  assert (work / "eval" / "roc.png").exists()
  flow.check_backbone(work, backbone, frozen=3)
  evaluated = flow.evaluate(work, tmp_path / "evaluate")
  assert evaluated["num_examples"] == metrics["num_examples"]
  images = flow.predict(work, _mammograms(cbis)[:3], tmp_path / "predict", "--overlays")
  for image in images:
    assert len(image["rois"]) == 5 and image["rois"][0]["anchor"]  # Breast + 2 x 2 tiles.
  assert len(list((tmp_path / "predict" / "overlays").glob("*.png"))) == 3


def test_the_two_stage_recipe_detector_first(cbis, backbone, tmp_path):
  detector = tmp_path / "detector_cbis"
  metrics, _ = flow.train("configs/detector_cbis.py:tiny", detector, cbis / "data", backbone)
  assert metrics["num_images"] == flow.test_images(cbis / "data")
  assert metrics["num_lesions"] > 0 and metrics["recall@10_iou0.3"] is not None
  assert 0 <= metrics["froc_sens@2fp"] <= 1
  assert (detector / "eval" / "froc.png").exists()
  flow.check_backbone(detector, backbone, frozen=3)
  work = tmp_path / "cbis_det"
  metrics, out = flow.train("configs/cbis.py:tiny,detector", work, cbis / "data", backbone,
                            f"--config.proposals.detector={detector}")
  assert "Proposals: the detector of" in out
  assert metrics["num_examples"] == flow.test_images(cbis / "data") and metrics["auc"] is not None
  # The run keeps its own copy of the detector: predicting needs no other folder.
  assert (work / "detector" / "config.json").exists()
  shutil.rmtree(detector)
  images = flow.predict(work, _mammograms(cbis)[:2], tmp_path / "predict")
  for image in images:
    assert len(image["rois"]) == 5 and image["rois"][0]["anchor"]  # Breast + the detector's 4.
    assert all(r["detector_score"] is not None for r in image["rois"][1:]), image["rois"]
