"""The RoI detector learns: configs/detector_synthetic.py:ci, from DICOM generation to the test
split, as a user would run it."""

import json

import pytest

import helpers

pytestmark = pytest.mark.slow


def test_the_detector_finds_nine_in_ten_held_out_lesions_in_its_top_five(tmp_path):
  # One CPU device, as a user has: not the 8 simulated ones the rest of the suite uses.
  out = helpers.run("-m", "attend_jax.main", "--config=configs/detector_synthetic.py:ci",
                    f"--workdir={tmp_path / 'work'}", f"--config.data.dir={tmp_path / 'data'}")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  test = json.loads((tmp_path / "work" / "eval" / "metrics.json").read_text())
  print(json.dumps({k: v for k, v in test.items() if k != "froc"}, indent=1))  # For the log.
  # The test split: studies the detector never saw, neither in training nor for choosing the
  # best checkpoint (that is the validation split).
  assert test["split"] == "test" and test["num_lesions"] >= 40, test
  assert test["recall@5_iou0.3"] >= 0.9, test
  # Its boxes are boxes, not just points near lesions, and few of them are false alarms.
  assert test["recall@5_iou0.5"] >= 0.8 and test["froc_sens@2fp"] >= 0.8, test
  assert (tmp_path / "work" / "eval" / "froc.png").exists()
