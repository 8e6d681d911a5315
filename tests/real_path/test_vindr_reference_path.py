"""configs/vindr_reference.py (``:tiny``) from the reference's layout: its three CSVs, the images
they index and a Grounding-DINO-format proposal file per image, prepared with the reference's own
crop at full resolution; predict on the same DICOMs with --proposals."""

import pathlib

import numpy as np
import pytest

import flow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("reference")
  layout = root / "layout"
  flow.ok("tools/make_synthetic.py", "--layout=csv", f"--out={layout}", "--num_studies=8",
          "--min_size=200", "--max_size=300")
  out = flow.ok("tools/prepare_data.py", "--dataset", "csv", "--root", layout / "images",
                "--csv_dir", layout, "--proposals", layout / "proposals", "--crop=reference",
                "--keep_orientation", "--long_side", "0", "--out", root / "data", "--workers=2")
  for split in ("train", "val", "test"):
    assert f"{split}:" in out, out
  return root


def test_the_paper_s_setting_trains_from_proposal_files_and_predicts_with_them(reference,
                                                                                backbone,
                                                                                tmp_path):
  work = tmp_path / "reference"
  metrics, _ = flow.train("configs/vindr_reference.py:tiny", work, reference / "data", backbone)
  assert metrics["num_examples"] > 0 and 0 < metrics["num_positive"] < metrics["num_examples"]
  flow.check_backbone(work, backbone, frozen=3)
  evaluated = flow.evaluate(work, tmp_path / "evaluate")
  assert evaluated["num_examples"] == metrics["num_examples"]
  dicoms = sorted((reference / "layout" / "images").glob("*/*.dicom"))[:3]
  images = flow.predict(work, dicoms, tmp_path / "predict",
                        f"--proposals={reference / 'layout' / 'proposals'}")
  for image in images:
    # No forced anchor: box 0 is the file's top proposal (the layout's files put the breast
    # first), and every RoI is a proposal with its score.
    assert not image["rois"][0]["anchor"]
    assert all(r["detector_score"] is not None for r in image["rois"]), image["rois"]
    assert np.all(np.diff([r["detector_score"] for r in image["rois"]]) <= 1e-6)
