"""`make demo` runs end to end and draws its figure."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs_and_writes_attention_plot(tmp_path):
  out = subprocess.run(
      [sys.executable, str(REPO / "tools" / "demo_vit.py"), "--size", "56", "--rois", "2",
       "--out", str(tmp_path)],
      capture_output=True, text=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr
  assert "cls (2, 384), patch_tokens (2, 16, 384)" in out.stdout
  png = tmp_path / "attention.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
