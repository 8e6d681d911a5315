"""tools/bench_attention.py's dry run: every kernel against torch, forward and train."""

import pytest

import helpers


@pytest.mark.slow
def test_dry_run_prints_a_row_per_part_and_kernel():
  out = helpers.run("tools/bench_attention.py", "--dry_run")
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("17 ")]
  assert [(r[1], r[2]) for r in rows] == [("forward", "cpu"), ("forward", "xla"),
                                          ("train", "cpu"), ("train", "xla")], out.stdout
  assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
