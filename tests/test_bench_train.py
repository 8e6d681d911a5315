"""tools/bench_train.py's accelerator preset runs on CPU with --dry_run: its own code path (the
trainer's step against the PyTorch reference step, bf16) at tiny shapes, one step each."""

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
  for row in figures["steps"].values():
    assert row["ms_per_step"] > 0 and row["images_per_s"] > 0
  assert figures["steps"]["torch fp32"]["jax_speedup"] > 0
  overlap = figures["input_overlap"]
  assert overlap["load_s"] == overlap["step_s"] > 0
  # Each loop waited for every batch's load, so neither can beat it; how much they overlap is
  # the benchmark's to say, not a test's.
  assert overlap["sequential_s"] >= overlap["load_s"] and overlap["prefetched_s"] >= overlap[
      "load_s"]
  assert "prefetched, no read-back" in proc.stdout
  versus = figures["eval_vs_train"]
  assert versus["eval_over_train"] == pytest.approx(
      versus["eval_images_per_s"] / versus["train_images_per_s"])
