"""Test set-up: 8 simulated CPU devices, so sharded code paths run on any machine."""

import os

# Must happen before jax is imported anywhere.
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import sys  # noqa: E402

# The PyTorch model of the reference lives with the dev tools (tools/bench_train.py uses it).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))
