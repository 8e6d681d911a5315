"""tools/bench_compile.py's dry run: tracing and compiling, looped against scanned blocks."""

import helpers


def test_dry_run_prints_each_stage_looped_and_scanned_with_their_ratio():
  out = helpers.run("tools/bench_compile.py", "--dry_run")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "(3 blocks)" in out.stdout, out.stdout
  rows = {line[:16].strip(): line[16:].split() for line in out.stdout.splitlines()
          if line.startswith(("trace + lower", "compile"))}
  assert set(rows) == {"trace + lower", "compile"}, out.stdout
  for looped, scanned, ratio in rows.values():
    assert float(looped) > 0 and float(scanned) > 0, out.stdout
    assert helpers.printed_quotient(ratio, looped, scanned), (ratio, looped, scanned)
