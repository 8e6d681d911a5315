"""tools/bench_train.py's accelerator preset runs on CPU with --dry_run: its own code path (the
trainer's step against the PyTorch reference step, bf16) at tiny shapes, one step each, and
prints figures that agree with each other and with a count by hand (never a speed)."""

import json
import re

import pytest

import helpers

pytestmark = pytest.mark.slow


def test_bench_train_gpu_preset_dry_run(tmp_path):
  out_json = tmp_path / "train.json"
  proc = helpers.run("tools/bench_train.py", "--preset=gpu", "--dry_run", f"--json={out_json}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert re.search(r"^gpu \(dry run\): .* JAX bfloat16; jax on cpu", proc.stdout, re.MULTILINE)
  figures = json.loads(out_json.read_text())
  assert figures["dry_run"] and figures["shapes"]["dtype"] == "bfloat16"
  assert set(figures["steps"]) == {"jax", "torch fp32", "torch autocast"}
  out = proc.stdout
  batch = figures["shapes"]["batch"]
  assert f", batch {batch}, " in out
  # Each step's line: its time, and the batch over that time.
  printed = {}
  for name, row in figures["steps"].items():
    match = re.search(rf"^  {name} +([0-9.]+) ms/step +([0-9.]+) images/s", out, re.MULTILINE)
    assert match, (name, out)
    printed[name] = match.group(1)
    assert abs(float(match.group(1)) - row["ms_per_step"]) <= 0.05, (name, match.group(1), row)
    assert helpers.printed_quotient(match.group(2), batch, match.group(1), 1e3), match.groups()
    assert row["images_per_s"] == pytest.approx(1e3 * batch / row["ms_per_step"])
  # JAX's speed-up over each torch step: that step's time over JAX's.
  for name in ("torch fp32", "torch autocast"):
    speedup = figures["steps"][name]["jax_speedup"]
    assert speedup == pytest.approx(figures["steps"][name]["ms_per_step"]
                                    / figures["steps"]["jax"]["ms_per_step"])
    line = re.search(rf"^  JAX speed-up over {name}: ([0-9.]+)x$", out, re.MULTILINE)
    assert line and helpers.printed_quotient(line.group(1), printed[name], printed["jax"]), name
  # The paper's case, counted by hand: a 3000 x 2400 mammogram is 215 x 172 patches of 14 px
  # (rounded up); 5 RoIs of 448 px are 5 x 32 x 32 patches, which ViT-B/14 (width 768, MLP
  # 3072, 12 blocks, 1,025 tokens with the CLS) runs in 2 x the multiply-adds of qkv, proj,
  # the MLP, the scores and the weighted values, plus the patch embedding.
  d, t = 768, 1025
  roi_flops = 5 * (12 * (2 * t * d * (3 * d + d + 2 * 4 * d) + 2 * 2 * t * t * d)
                   + 2 * 1024 * 14 * 14 * 3 * d)
  tokens = re.search(r"^token reduction \(3000 x 2400 mammogram, patch 14\): 36,980 tokens and"
                     r" ([0-9.]+) TFLOP per forward for the whole image, against 5 x 448px RoIs ="
                     r" 5,120 tokens and ([0-9.]+) TFLOP: ([0-9.]+)x fewer tokens, ([0-9.]+)x"
                     r" fewer FLOPs\.$", out, re.MULTILINE)
  assert tokens, out
  whole, rois, fewer_tokens, fewer_flops = tokens.groups()
  assert rois == f"{roi_flops / 1e12:.2f}"
  assert helpers.printed_quotient(fewer_tokens, 36980, 5120)
  assert helpers.printed_quotient(fewer_flops, whole, rois)
  overlap = figures["input_overlap"]
  assert overlap["load_s"] == overlap["step_s"]
  assert overlap["sequential_over_sum"] == pytest.approx(
      overlap["sequential_s"] / (overlap["load_s"] + overlap["step_s"]))
  assert overlap["prefetched_over_max"] == pytest.approx(
      overlap["prefetched_s"] / max(overlap["load_s"], overlap["step_s"]))
  # Each loop waited for every batch's load, so neither can beat it; how much they overlap is
  # the benchmark's to say, not a test's.
  assert overlap["sequential_s"] >= overlap["load_s"] and overlap["prefetched_s"] >= overlap[
      "load_s"]
  assert "prefetched, no read-back" in proc.stdout
  versus = figures["eval_vs_train"]
  assert versus["eval_over_train"] == pytest.approx(
      versus["eval_images_per_s"] / versus["train_images_per_s"])
