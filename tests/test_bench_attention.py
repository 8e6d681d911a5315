"""tools/bench_attention.py's dry run: every kernel against torch, forward and train."""

import pytest

import helpers


@pytest.mark.slow
def test_dry_run_prints_a_row_per_part_and_kernel():
  out = helpers.run("tools/bench_attention.py", "--dry_run")
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("17 ")]
  assert [(r[1], r[2]) for r in rows] == [("forward", "cpu"), ("forward", "loop"),
                                          ("train", "cpu"), ("train", "loop")], out.stdout
  # Torch is timed once per part; each ratio is the row's torch ms over its jax ms.
  assert rows[0][4] == rows[1][4] and rows[2][4] == rows[3][4], out.stdout
  for _, _, _, jax_ms, torch_ms, ratio in rows:
    assert helpers.printed_quotient(ratio, torch_ms, jax_ms), (ratio, torch_ms, jax_ms)
