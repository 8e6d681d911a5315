"""tools/bench_detector.py runs end to end at the tiniest shapes and prints parseable figures:
the accelerator preset's own code path, through --dry_run, so a device session never finds it
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
  assert figures["dry_run"] and figures["detect_images_per_s"] > 0

  def figure(pattern: str) -> float:
    match = re.search(pattern, out, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{out}"
    return float(match.group(1))

  assert re.search(r"^device: cpu ", out, re.MULTILINE), out
  for name in ("backbone", "detect"):
    assert figure(rf"^  {name} +{NUMBER} ms") > 0
  assert figure(rf"^  detect .* {NUMBER} images/s") > 0
  for name in (r"step \(files\)", "proposals", r"proposals\+step"):
    assert figure(rf"^  {name} +{NUMBER} ms/step") > 0
  assert figure(rf"^ratios: detector step / files step {NUMBER}x") > 0
  assert figure(rf"^ratios: .* detect {NUMBER} images/s") > 0
  # The head and decoding shares are differences of two medians: present, of any sign.
  figure(rf"^  head +{NUMBER} ms")
  figure(rf"^  decode\+NMS +{NUMBER} ms")
