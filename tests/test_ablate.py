"""tools/ablate.py: the paired-difference statistics on hand-made numbers, and a tiny ablation
end to end (2 variants x 2 seeds, a few steps) that writes both files and resumes."""

import json

import numpy as np
import pytest

from attend_jax.eval import metrics
import helpers


def test_paired_difference_on_hand_made_scores():
  labels = np.array([0, 0, 0, 1, 1, 1] * 5)
  rng = np.random.default_rng(0)
  base = rng.uniform(0, 1, (3, labels.size))
  # The same scores: a difference of exactly 0, whatever is resampled.
  same = metrics.paired_difference(labels, base, base, num_samples=200)
  assert same == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
  # A variant that ranks every cancer first: AUC 1 against the baseline's, on every resample.
  perfect = np.where(labels == 1, 2.0, -1.0)[None].repeat(3, 0)
  d = metrics.paired_difference(labels, perfect, base, num_samples=500)
  expected = np.mean([1.0 - metrics.auc(labels, b) for b in base])
  assert d["mean"] == pytest.approx(expected)
  assert 0 < d["ci_low"] <= d["mean"] <= d["ci_high"] <= 1
  # Swapping the two negates the difference and mirrors the interval.
  r = metrics.paired_difference(labels, base, perfect, num_samples=500)
  assert r["mean"] == pytest.approx(-d["mean"])
  assert r["ci_low"] == pytest.approx(-d["ci_high"]) and r["ci_high"] == pytest.approx(-d["ci_low"])
  # Scores that do not pair up with the labels are refused.
  with pytest.raises(metrics.MetricError, match="seeds"):
    metrics.paired_difference(labels, base[:, :5], base[:, :5])


@pytest.mark.slow
def test_a_tiny_ablation_writes_its_table_and_skips_finished_runs(tmp_path):
  # As docs/results.md runs it, --detector_config included: the detector is trained once, into the
  # config's proposals.detector (here redirected to tmp_path), before the variants. Grid RoIs
  # then keep the variants to four short runs; the train split holds both classes, the smoke
  # run's test split may not.
  detector = tmp_path / "detector"
  args = ("tools/ablate.py", "--config=configs/demo.py:smoke,fine",
          "--detector_config=configs/demo.py:smoke,fine,detector",
          "--variants=cls only,+ repulsive", "--seeds=2", f"--out={tmp_path / 'abl'}",
          "--bootstrap=100", f"--set=data.dir={tmp_path / 'data'}",
          f"--set=proposals.detector={detector}", "--set=proposals.source=grid",
          "--set=data.test_split=train", "--set=train.eval_every=10")
  data = tmp_path / "data"
  first = helpers.run(*args)
  assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
  # The detector ran on the same prepared data as the variants.
  assert (detector / "eval" / "metrics.json").exists()
  assert json.loads((detector / "config.json").read_text())["data"]["dir"] == str(data)
  result = json.loads((tmp_path / "abl" / "ablation.json").read_text())
  assert list(result["variants"]) == ["cls only", "+ repulsive"]
  for name, row in result["variants"].items():
    assert row["seeds"] == 2 and len(row["auc"]) == 2
  diff = result["variants"]["+ repulsive"]["auc_diff"]
  assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
  md = (tmp_path / "abl" / "ablation.md").read_text()
  assert "| + repulsive | 2 |" in md and "tools/ablate.py" in md
  # Each variant's mean AUC is drawn (C0) and the difference to the first variant (C2, C3 or
  # grey: better, worse or not resolved).
  pixels = helpers.png_rgb(tmp_path / "abl" / "ablation.png")
  left, right = pixels[:, : pixels.shape[1] // 2], pixels[:, pixels.shape[1] // 2:]
  assert helpers.has_colour(left, helpers.C0), "no mean AUC drawn"
  grey = (0.498,) * 3  # C7
  want = helpers.C3 if diff["ci_high"] < 0 else helpers.C2 if diff["ci_low"] > 0 else grey
  assert helpers.has_colour(right, want), f"no difference drawn in {want}"
  # The seeds differ, the data do not: each run read the same prepared folder.
  configs = [json.loads((tmp_path / "abl" / "runs" / v / f"seed{s}" / "config.json").read_text())
             for v in ("cls_only", "repulsive") for s in (0, 1)]
  assert {c["data"]["dir"] for c in configs} == {str(data)}
  assert [c["seed"] for c in configs] == [0, 1, 0, 1]
  assert configs[2]["loss"]["repulsive_weight"] == 0.3
  # Rerun: nothing is trained again, the same table comes out.
  mtimes = {p: p.stat().st_mtime for p in [*(tmp_path / "abl" / "runs").rglob("metrics.json"),
                                            detector / "eval" / "metrics.json"]}
  again = helpers.run(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert {p: p.stat().st_mtime for p in mtimes} == mtimes
  assert json.loads((tmp_path / "abl" / "ablation.json").read_text())["variants"] == \
      result["variants"]
