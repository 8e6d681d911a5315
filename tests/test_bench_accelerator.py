"""tools/bench_accelerator.sh: it refuses a CPU backend unless --dry_run; its summary merges the
parts (a part skipped for want of CUDA is said, not failed); bench_loop.py's dry run trains."""

import json
import os
import re
import subprocess

import pytest

import bench_summary
import helpers


@pytest.mark.slow
def test_a_cpu_backend_is_refused_in_one_line():
  proc = subprocess.run(["tools/bench_accelerator.sh", "/tmp/never_written"], cwd=helpers.REPO,
                        env=helpers.env() | {"PYTHON": os.sys.executable}, capture_output=True,
                        text=True, timeout=helpers.HANG_GUARD_S, check=False)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: JAX's backend here is the CPU"), lines
  assert "--dry_run" in lines[0] and not proc.stdout


def _part(out, name, status, figures=None):
  (out / f"{name}.status").write_text(json.dumps(status))
  if figures is not None:
    (out / f"{name}.json").write_text(json.dumps(figures))


def test_the_summary_merges_each_part_and_says_what_was_skipped(tmp_path):
  _part(tmp_path, "attention", {"rc": 0, "seconds": 40}, {"device": "H100", "rows": [
      {"part": "train", "attention": "xla", "kernel": "xla", "jax_ms": 80.0, "jax_tflops": 300.0,
       "jax_mfu": 0.30, "peak_bytes": 30e9},
      {"part": "train", "attention": "auto", "kernel": "cudnn", "jax_ms": 50.0,
       "jax_tflops": 480.0, "jax_mfu": 0.49, "peak_bytes": 20e9}]})
  _part(tmp_path, "train", {"rc": 0, "seconds": 30}, {"device": "H100", "steps": {
      "jax": {"images_per_s": 100.0, "mfu": 0.4, "peak_bytes": 25e9}}})
  _part(tmp_path, "torch", {"rc": None, "skipped": "this machine's torch has no CUDA"})
  _part(tmp_path, "loop", {"rc": 0, "seconds": 120}, {"rows": [
      {"steps": 30, "image_size": 2048, "per_device_batch": 4, "remat": "dots",
       "images_per_s": 90.0, "mfu": 0.35, "peak_bytes": 40e9}]})
  _part(tmp_path, "detector", {"rc": 124, "seconds": 70})
  _part(tmp_path, "data", {"rc": 0, "seconds": 20}, {"long_side": 2048, "feed": {
      "images_per_cpu_s": 25.0, "read_bytes_per_image": 4e6, "sent_bytes_per_image": 8e6}})
  rc = bench_summary.main(["bench_summary.py", str(tmp_path)])
  md = (tmp_path / "summary.md").read_text()
  assert rc == 1  # The detector ran over its limit: the run is not all good.
  assert "train auto (cudnn): 50.0 ms, 480.0 TFLOP/s (MFU 49.0 %), peak 20.0 GB" in md
  assert "| torch | None | - | skipped: this machine's torch has no CUDA |" in md
  assert "remat dots: 90.0 images/s, MFU 35.0 %, peak 40.0 GB" in md
  assert "| detector | 124 | 70 | no figures |" in md
  assert "4.00 cores per accelerator" in md  # 100 images/s against 25 per core.


@pytest.mark.slow
def test_the_loop_benchmark_trains_on_its_synthetic_records(tmp_path):
  out = tmp_path / "loop.json"
  proc = helpers.run("tools/bench_loop.py", "--dry_run", "--per_device_batch=1",
                     f"--workdir={tmp_path / 'loop'}", f"--json={out}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  row = json.loads(out.read_text())["rows"][0]
  assert (row["steps"], row["per_device_batch"]) == (4, 1) and 0 < row["mfu"] < 1
  # Its line: the recorded rate and MFU, between the first and the last logged step (every
  # 2nd of the dry run's 4), on the one device and batch asked for.
  line = re.search(r"^loop: ([0-9.]+) images/s over steps 2\.\.4 \(1 devices x 1 images\), MFU"
                   r" ([0-9.]+) % of 989 TFLOP/s", proc.stdout, re.MULTILINE)
  assert line, proc.stdout[-2000:]
  assert abs(float(line.group(1)) - row["images_per_s"]) <= 0.05
  assert abs(float(line.group(2)) - 100 * row["mfu"]) <= 0.05
  assert (tmp_path / "loop" / "run" / "checkpoints" / "4").is_dir()
