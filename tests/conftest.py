"""Test set-up: 8 simulated CPU devices, so sharded code paths run on any machine; a temp root of
this session's own; the `slow` tier; a GCS emulator (``gcs``) for the bucket tests."""

import os

# Must happen before jax is imported anywhere.
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

import gcs as gcs_emulator  # noqa: E402

# The PyTorch model of the reference lives with the dev tools (tools/bench_train.py uses it).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
  # pytest's default temp root (/tmp/pytest-of-$USER) is shared by every session on the
  # machine, and each session prunes the others' numbered folders: two suites at once then
  # delete each other's files. A fresh root per session (xdist workers get folders inside it)
  # cannot be touched by another run.
  if config.option.basetemp is None and not hasattr(config, "workerinput"):
    config.option.basetemp = tempfile.mkdtemp(prefix="attend_jax-pytest-")
    config._attend_jax_basetemp = config.option.basetemp


def pytest_unconfigure(config):
  root = getattr(config, "_attend_jax_basetemp", None)
  if root and getattr(config, "_attend_jax_passed", False):
    shutil.rmtree(root, ignore_errors=True)  # Kept after a failure, to look at.


def pytest_sessionfinish(session, exitstatus):
  session.config._attend_jax_passed = exitstatus == 0


@pytest.fixture(scope="session")
def gcs():
  """fake-gcs-server on 127.0.0.1, one per test process; ``gcs.path(name)`` is a fresh
  ``gs://`` folder, and this process and its children talk to the emulator."""
  process, emulator = gcs_emulator.emulator()
  yield emulator
  gcs_emulator.stop(process)
