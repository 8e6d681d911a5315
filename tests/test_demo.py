"""`make demo` runs end to end and draws its figure."""

import pytest

import helpers

pytestmark = pytest.mark.slow


def test_demo_runs_and_writes_attention_plot(tmp_path):
  out = helpers.run("tools/demo_vit.py", "--size", "56", "--rois", "2", "--out", tmp_path)
  assert out.returncode == 0, out.stderr
  assert "cls (2, 384), patch_tokens (2, 16, 384)" in out.stdout
  png = tmp_path / "attention.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_learns(tmp_path):
  """configs/demo.py:ci, from DICOM generation to the test split, as a user would run it."""
  import json

  # One CPU device, as a user has: not the 8 simulated ones the rest of the suite uses.
  out = helpers.run("-m", "attend_jax.main", "--config=configs/demo.py:ci",
                    f"--workdir={tmp_path / 'work'}", f"--config.data.dir={tmp_path / 'data'}")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  lines = [json.loads(l) for l in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
  val = [l["auc"] for l in lines if l["split"] == "val"]
  assert max(val) >= 0.85, val
  test = json.loads((tmp_path / "work" / "eval" / "metrics.json").read_text())
  assert test["num_positive"] > 20 and test["auc"] >= 0.8, test
