"""A run whose workdir is a bucket (the GCS emulator), through the real command lines: killed,
preempted, resumed exactly; then predict and evaluate read it from the bucket."""

import json
import signal
import time

import orbax.checkpoint as ocp
import pytest
from etils import epath

from attend_jax.train import preemption

import gcs as gcs_emulator
import helpers

pytestmark = pytest.mark.slow

# `python -m attend_jax.main ARGS`, holding still right after logging step
# PAUSE_AT until a signal comes: the test then knows which step the signal lands after.
_MAIN = """
import signal, sys, time
from attend_jax import main
from attend_jax.train import trainer
pause_at = int(sys.argv[1])
printed = trainer.log
def log(message, *args):
  printed(message, *args)
  if pause_at and message.startswith("step %d/%d") and args[0] == pause_at:
    # Until the trainer's own handler has noted a signal (which may come before this loop).
    stop = signal.getsignal(signal.SIGTERM).__self__
    print("paused", flush=True)
    while stop.signum is None:
      time.sleep(0.05)
trainer.log = log
sys.argv = ["attend_jax.main", *sys.argv[2:]]
main.run_cli()
"""

# A config file for the command line: test_trainer's tiny model on this module's data, with
# grid RoIs (predict then needs no proposal files).
_CONFIG = """
import sys
sys.path[:0] = [{tests!r}]
import helpers
def get_config():
  c = helpers.tiny_config({data!r}, train__log_every=1, train__steps=6, train__eval_every=3,
                          train__checkpoint_every=3)
  c.data.batch_size = c.data.eval_batch_size = 8
  c.optim.schedule, c.optim.warmup_steps = "constant", 0
  c.train.preemption_grace_s = 600.0  # A busy CI machine; the grace period has its own test.
  return c
"""


@pytest.fixture(scope="module")
def data_dir(tiny_data):
  return tiny_data


def _config_file(data_dir, tmp_path):
  path = tmp_path / "tiny_config.py"
  path.write_text(_CONFIG.format(tests=str(helpers.REPO / "tests"),
                                 data=str(data_dir)))
  return path


def _start(config, workdir, pause_at=0):
  return helpers.start("-c", _MAIN, pause_at, f"--config={config}", f"--workdir={workdir}",
                       extra_env={"PYTHONUNBUFFERED": "1"})


def _wait_for(proc, marker: str) -> str:
  """The child's output up to the first line that starts with ``marker``."""
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line.startswith(marker):
      return "".join(seen)
  proc.wait()
  raise AssertionError(f"exited ({proc.returncode}) before {marker!r}:\n{''.join(seen)[-3000:]}")


def _committed(workdir, step: int) -> bool:
  """Whether orbax has committed checkpoint ``step`` on the bucket (its last file)."""
  gcs_emulator.fresh_listings()
  return (epath.Path(workdir) / "checkpoints" / str(step) / "commit_success.txt").exists()


def _params(workdir, step: int):
  gcs_emulator.fresh_listings()
  return ocp.StandardCheckpointer().restore(epath.Path(workdir) / "checkpoints" / str(step)
                                            / "state")["params"]


def test_a_bucket_run_killed_then_preempted_resumes_exactly_and_is_read_back(gcs, data_dir,
                                                                            tmp_path):
  config = _config_file(data_dir, tmp_path)
  straight = tmp_path / "straight"
  proc = _start(config, straight)
  out = helpers.finish(proc)
  assert proc.returncode == 0, out[-3000:]

  bucket = gcs.path("run")
  # SIGKILL after the step-3 checkpoint (paused at step 4): nothing of step 4 survives.
  proc = _start(config, bucket, pause_at=4)
  _wait_for(proc, "paused")
  deadline = time.time() + helpers.HANG_GUARD_S
  while not _committed(bucket, 3):  # Written asynchronously, maybe still going.
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (tmp_path / "gs:").exists() and not (helpers.REPO / "gs:").exists()

  # SIGTERM while paused after step 5 (no periodic checkpoint there): the run saves step 5,
  # waits for it to commit, and exits with its own code.
  proc = _start(config, bucket, pause_at=5)
  head = _wait_for(proc, "paused")
  assert "Resumed from step 3" in head, head[-3000:]
  proc.send_signal(signal.SIGTERM)
  out = helpers.finish(proc)
  assert proc.returncode == preemption.EXIT_PREEMPTED, out[-3000:]
  assert "preempted: stopped by SIGTERM after step 5" in out
  assert _committed(bucket, 5)
  assert not (epath.Path(bucket) / "eval").exists()

  proc = _start(config, bucket)  # The very same command, to the end.
  out = helpers.finish(proc)
  assert proc.returncode == 0, out[-3000:]
  assert "Resumed from step 5" in out
  helpers.assert_same_trees(_params(straight, 6), _params(bucket, 6))
  gcs_emulator.fresh_listings()
  run = epath.Path(bucket)
  assert json.loads((run / "eval" / "metrics.json").read_text())["num_examples"] > 0
  assert json.loads((run / "config.json").read_text())["model"]["roi_size"] == 28
  assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
          if json.loads(l)["split"] == "train"][-1] == 6
  assert list((run / "tensorboard").glob("events.out.tfevents.*"))
  assert (run / "log.txt").exists()

  # predict and evaluate open the run on the bucket and write there too.
  out = helpers.run("-m", "attend_jax.predict", f"--workdir={bucket}", data_dir / "dicom",
                    f"--out={bucket}/predict", "--workers=1")
  assert out.returncode == 0, out.stderr[-3000:]
  gcs_emulator.fresh_listings()
  rows = (run / "predict" / "predictions.csv").read_text().splitlines()
  assert len(rows) > 1 and rows[0].startswith("image_id,")
  # Again: every file is in the bucket's predictions.csv already; no model needed.
  out = helpers.run("-m", "attend_jax.predict", f"--workdir={bucket}", data_dir / "dicom",
                    f"--out={bucket}/predict", "--workers=1")
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resuming: {len(rows) - 1} of the {len(rows) - 1} files are in" in out.stderr
  gcs_emulator.fresh_listings()
  assert (run / "predict" / "predictions.csv").read_text().splitlines() == rows
  out = helpers.run("-m", "attend_jax.evaluate", f"--workdir={bucket}", "--split=val")
  assert out.returncode == 0, out.stderr[-3000:]
  gcs_emulator.fresh_listings()
  assert json.loads((run / "evaluate_val" / "metrics.json").read_text())["num_examples"] > 0
  assert (run / "evaluate_val" / "report.md").exists()
