"""tools/bench_detector.py runs end to end at the tiniest shapes and prints parseable figures."""

import re

import pytest

import helpers

pytestmark = pytest.mark.slow
# input_size 112: 8 x 8 patches, 336 points over strides 7/14/28, enough for pre_nms 300.
FLAGS = ["--batch=1", "--image_size=128", "--input_size=112", "--roi_size=28", "--fpn_dim=16",
         "--topk=3", "--reps=1", "--warmup=0"]
NUMBER = r"(-?[0-9.]+)"


def test_bench_detector_tiny():
  proc = helpers.run("tools/bench_detector.py", *FLAGS)  # One CPU device, as a user has.
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  out = proc.stdout

  def figure(pattern: str) -> float:
    match = re.search(pattern, out, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{out}"
    return float(match.group(1))

  assert re.search(r"^device: cpu ", out, re.MULTILINE), out
  for name in ("backbone", "detect"):
    assert figure(rf"^  {name} +{NUMBER} ms") > 0
  assert figure(rf"^  detect .* {NUMBER} images/s") > 0
  for name in (r"step \(files\)", "proposer", r"proposer\+step"):
    assert figure(rf"^  {name} +{NUMBER} ms/step") > 0
  assert figure(rf"^ratios: detector step / files step {NUMBER}x") > 0
  assert figure(rf"^ratios: .* detect {NUMBER} images/s") > 0
  # The head and decoding shares are differences of two medians: present, of any sign.
  figure(rf"^  head +{NUMBER} ms")
  figure(rf"^  decode\+NMS +{NUMBER} ms")
