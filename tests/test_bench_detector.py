"""tools/bench_detector.py runs end to end at the tiniest shapes and prints figures that agree
with each other (shares, rates and ratios with the times they come from; never a speed): the
accelerator preset's own code path, through --dry_run, so a device session never finds it
broken."""

import json
import re

import pytest

import helpers

pytestmark = pytest.mark.slow
NUMBER = r"(-?[0-9.]+)"


def test_bench_detector_gpu_preset_dry_run(tmp_path):
  out_json = tmp_path / "detector.json"
  proc = helpers.run("tools/bench_detector.py", "--preset=gpu", "--dry_run",
                     f"--json={out_json}")  # One CPU device, as a user has.
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  out = proc.stdout
  assert re.search(r"^gpu \(dry run\): vitb14 \(tiny.*bfloat16, batch 1", out, re.MULTILINE), out
  figures = json.loads(out_json.read_text())
  assert figures["dry_run"]
  batch = figures["shapes"]["batch"]
  assert f", batch {batch}, " in out

  def figures_of(pattern: str) -> tuple[str, ...]:
    match = re.search(pattern, out, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{out}"
    return match.groups()

  assert re.search(r"^device: cpu ", out, re.MULTILINE), out
  # Inference: the parts of detect, each its share of it; the head and decoding shares are
  # differences of two medians, of any sign.
  detect_ms, detect_rate = figures_of(rf"^  detect +{NUMBER} ms +{NUMBER} images/s")
  parts = {name: figures_of(rf"^  {name} +{NUMBER} ms +{NUMBER} %$")
           for name in ("backbone", "head", r"decode\+NMS")}
  for ms, share in parts.values():
    assert helpers.printed_quotient(share, ms, detect_ms, 100), (share, ms, detect_ms)
  assert abs(sum(float(ms) for ms, _ in parts.values()) - float(detect_ms)) <= 0.02
  assert helpers.printed_quotient(detect_rate, batch, detect_ms, 1e3)
  # The train steps, files against the detector's proposals: each rate is the batch over its time.
  steps = {name: figures_of(rf"^  {name} +{NUMBER} ms/step +{NUMBER} images/s")
           for name in (r"step \(files\)", "proposals", r"proposals\+step")}
  for ms, rate in steps.values():
    assert helpers.printed_quotient(rate, batch, ms, 1e3), (rate, ms)
  files_ms, detector_ms = steps[r"step \(files\)"][0], steps[r"proposals\+step"][0]
  ratio, added, added_share, rate, backbone_share = figures_of(
      rf"^ratios: detector step / files step {NUMBER}x, added {NUMBER} ms/step \({NUMBER} %\);"
      rf" detect {NUMBER} images/s; backbone {NUMBER} % of detect")
  assert helpers.printed_quotient(ratio, detector_ms, files_ms)
  assert abs(float(added) - (float(detector_ms) - float(files_ms))) <= 0.015
  assert helpers.printed_quotient(added_share, added, files_ms, 100)
  assert (rate, backbone_share) == (detect_rate, parts["backbone"][1])
  # The JSON holds the printed figures, unrounded.
  printed_ms = {"backbone": parts["backbone"][0], "detect": detect_ms, "step (files)": files_ms,
                "proposals": steps["proposals"][0], "proposals+step": detector_ms}
  for name, ms in printed_ms.items():
    assert abs(figures["ms"][name] - float(ms)) <= 0.005, name
  assert figures["detect_images_per_s"] == pytest.approx(1e3 * batch / figures["ms"]["detect"])
  assert figures["step_detector_images_per_s"] == pytest.approx(
      1e3 * batch / figures["ms"]["proposals+step"])
