"""tools/bench_data.py runs end to end at the tiniest sizes and prints parseable figures, the
Beam section (the DirectRunner with 1 and 2 workers beside the local pool) included."""

import json
import re

import pytest

import helpers

pytestmark = pytest.mark.slow


def test_bench_data_prints_the_pool_and_the_direct_runner_side_by_side(tmp_path):
  out_json = tmp_path / "data.json"
  proc = helpers.run("tools/bench_data.py", "--num_studies", 1, "--size", 300, "--long_side", 128,
                     "--batch", 2, "--batches", 2, "--codecs", "uncompressed", "--workers", 2,
                     "--beam", f"--json={out_json}", f"--workdir={tmp_path / 'work'}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  rates = {}
  for name in ("local pool, 2 workers", "Beam DirectRunner, 1 worker",
               "Beam DirectRunner, 2 workers"):
    match = re.search(rf"^  {name} +([0-9.]+) images/s +([0-9.]+)x the pool$", proc.stdout,
                      re.MULTILINE)
    assert match, f"no line for {name!r} in:\n{proc.stdout}"
    rates[name] = float(match.group(1))
  assert all(rate > 0 for rate in rates.values())
  figures = json.loads(out_json.read_text())["beam"]
  assert set(figures) == {"pool", "direct_1", "direct_2"} and all(v > 0 for v in figures.values())
