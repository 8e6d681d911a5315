"""Faults of a training run, injected: a batch that cannot fit, an unreachable bucket workdir, a
full disk at a checkpoint save, and a resume after a run that logged past its last checkpoint.

Each case checks the one-line message (what failed, where, and what to do), and that nothing
is left behind or written twice.
"""

import collections
import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import types

import ml_collections
import orbax.checkpoint as ocp
import pytest

from attend_jax import paths
from attend_jax.train import memory
from attend_jax.train.writer import MetricWriter
from test_faults import _tmpfs, _tmpfs_or_skip, _train_args
import gcs as gcs_emulator
import helpers


def _rows(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _events(path):
  """The Event protos of a TensorBoard event file (TFRecord framing: length, its CRC, data, its
  CRC)."""
  from tensorboardX.proto import event_pb2

  raw, out, at = path.read_bytes(), [], 0
  while at < len(raw):
    (n,) = struct.unpack("<Q", raw[at:at + 8])
    out.append(event_pb2.Event.FromString(raw[at + 12:at + 12 + n]))
    at += 12 + n + 4
  return out


# ----------------------------------------------------------------------------------------------
# A resume writes no metric row twice.
# ----------------------------------------------------------------------------------------------


def test_a_resumed_writer_keeps_each_step_s_row_once_the_rerun_s(tmp_path):
  writer = MetricWriter(tmp_path)
  for step in range(1, 6):  # Killed after logging step 5; its last checkpoint was step 3.
    writer.write(step, "train", {"loss": float(step)})
    if step == 3:
      writer.write(step, "val", {"auc": 0.5})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "split": "tr')  # Killed in the middle of a row.
  first = set((tmp_path / "tensorboard").iterdir())
  writer = MetricWriter(tmp_path, start_step=3)
  for step in range(4, 7):
    writer.write(step, "train", {"loss": 10.0 + step})
  writer.close()
  # The rerun's event file tells TensorBoard to hide the first one's events from step 4 on.
  [rerun] = set((tmp_path / "tensorboard").iterdir()) - first
  starts = [e.step for e in _events(rerun) if e.HasField("session_log")
            and e.session_log.status == e.session_log.START]
  assert starts == [4]
  assert [(r["step"], r["split"], r.get("loss")) for r in _rows(tmp_path)] == [
      (1, "train", 1.0), (2, "train", 2.0), (3, "train", 3.0), (3, "val", None),
      (4, "train", 14.0), (5, "train", 15.0), (6, "train", 16.0)]


@pytest.mark.slow
def test_a_rerun_after_a_run_that_logged_past_its_checkpoint_writes_each_row_once(tiny_data,
                                                                                   tmp_path):
  work = tmp_path / "run"
  args = _train_args(tiny_data, work, "--config.train.steps=6")
  assert helpers.run(*args).returncode == 0
  # As if killed after logging step 6 but before its checkpoint was written: the rerun resumes
  # from step 3 and trains 4 to 6 again.
  shutil.rmtree(work / "checkpoints" / "6")
  proc = helpers.run(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Resumed from step 3" in proc.stdout
  counts = collections.Counter((r["step"], r["split"]) for r in _rows(work))
  assert counts == {**{(s, "train"): 1 for s in range(1, 7)}, (3, "val"): 1, (6, "val"): 1}


# ----------------------------------------------------------------------------------------------
# A bucket workdir whose storage service does not answer.
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _silent_server():
  """127.0.0.1:PORT accepting connections and never answering: a black-holed endpoint."""
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"


@contextlib.contextmanager
def _dead_port():
  """127.0.0.1:PORT where nothing listens (bound, so no other process takes it meanwhile)."""
  with socket.socket() as bound:
    bound.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{bound.getsockname()[1]}"


def test_an_unreachable_bucket_is_given_up_on_within_about_10_s_naming_the_folder(monkeypatch):
  # gcsfs retries each request 6 times over about a minute; the probe before it may take
  # PROBE_TRIES x PROBE_TIMEOUT_S, plus its pauses.
  tries, timeout, pause = paths.PROBE_TRIES, paths.PROBE_TIMEOUT_S, paths.PROBE_PAUSE_S
  assert tries * timeout + (tries - 1) * pause <= 10
  monkeypatch.setattr(paths, "PROBE_TIMEOUT_S", 0.2)
  monkeypatch.setattr(paths, "PROBE_PAUSE_S", 0.0)
  for env, reason in ((_silent_server, "timed out"), (_dead_port, "refused")):
    with env() as url:
      monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
      with pytest.raises(paths.UnreachableError) as e:
        paths.check_reachable(f"gs://no-answer-{reason.replace(' ', '-')}/run")
      assert str(e.value).startswith(f"gs://no-answer-{reason.replace(' ', '-')}/run: ")
      assert reason in str(e.value) and url in str(e.value)
  paths.check_reachable("relative/local/folder")  # Local paths need no probe.


@pytest.mark.slow
def test_training_in_an_unreachable_bucket_is_one_line_naming_the_workdir(tmp_path):
  with _dead_port() as url:
    proc = helpers.run("-m", "attend_jax.main", "--config=configs/demo.py:smoke",
                       "--workdir=gs://attend-jax-test/run", f"--config.data.dir={tmp_path}",
                       extra_env={**gcs_emulator.ENV, "STORAGE_EMULATOR_HOST": url,
                                  "TENSORSTORE_GCS_HTTP_URL": url})
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith("error: gs://attend-jax-test/run: ") and "refused" in line, line


# ----------------------------------------------------------------------------------------------
# A full disk at a checkpoint save.
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_at_a_save_names_that_save_and_leaves_no_temp_folder(tiny_data, tmp_path):
  _tmpfs_or_skip()
  # A checkpoint of this model is about 20 MB: the step-3 saves (checkpoints/ and best/) fit
  # in 50 MB, the step-6 ones do not; step 8 would be the next save.
  args = " ".join(f"'{a}'" for a in _train_args(tiny_data, "$FULL/run", "--config.train.steps=8"))
  args = args.replace("'--workdir=$FULL/run'", '--workdir="$FULL/run"')
  proc = _tmpfs(f'{sys.executable} {args}; echo "rc=$?"; ls "$FULL/run/checkpoints";'
                f' find "$FULL/run" -name "*{ocp.path.step.TMP_DIR_SUFFIX}*"', "50M")
  assert "rc=1" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: no space left on the disk of"), lines
  assert re.search(r"/run/(checkpoints|best)/6: it needs [\d.]+ MB more", lines[0]), lines[0]
  listing = proc.stdout.split("rc=1\n")[1].split()
  assert listing == ["3"]  # The step-3 checkpoint is kept, and no temp folder is left anywhere.


# ----------------------------------------------------------------------------------------------
# A batch that cannot fit.
# ----------------------------------------------------------------------------------------------


class _Compiled:
  """A compiled step's memory_analysis: bytes per device linear in the batch."""

  def __init__(self, batch_size, fixed=100e6, per_example=2e6):
    self.memory = types.SimpleNamespace(
        argument_size_in_bytes=fixed + per_example * batch_size / 4, output_size_in_bytes=fixed,
        alias_size_in_bytes=fixed, temp_size_in_bytes=per_example * batch_size * 3 / 4,
        generated_code_size_in_bytes=0)

  def memory_analysis(self):
    return self.memory


def test_the_largest_batch_that_fits_is_estimated_from_two_compiles():
  # Exact on a line, rounded down to the multiple, never below the smallest batch.
  assert memory.largest_batch((8, 108.0), (800, 900.0), 500.0, 8) == 400
  assert memory.largest_batch((8, 108.0), (800, 900.0), 507.0, 8) == 400
  assert memory.largest_batch((8, 108.0), (800, 900.0), 108.0, 8) == 8
  assert memory.largest_batch((8, 108.0), (800, 900.0), 107.0, 8) == 0
  compiled = []

  def compile_at(batch_size):
    compiled.append(batch_size)
    return _Compiled(batch_size)

  mesh = types.SimpleNamespace(size=4)
  config = ml_collections.ConfigDict({"data": {"batch_size": 4000}})
  room = memory.Budget(capacity=int(1.1e9), devices=1, host_per_example=0.0, where="test")
  memory.check(config, mesh, _Compiled(40), compile_at, room)  # Fits: no second compile.
  assert compiled == []
  with pytest.raises(memory.BatchDoesNotFitError) as e:
    memory.check(config, mesh, _Compiled(4000), compile_at, room)
  assert compiled == [4]  # One more compile, at one example per device.
  # (1.1e9 - 100e6) / 2e6 = 500 examples.
  assert "config.data.batch_size=4000 does not fit" in str(e.value)
  assert "about 8.1 GB" in str(e.value) and "about 500 fits" in str(e.value)
  assert "estimate" in str(e.value) and "--config.train.memory_check=False" in str(e.value)
  with pytest.raises(memory.BatchDoesNotFitError, match="even 4 .* needs about 108.0 MB"):
    memory.check(config, mesh, _Compiled(4000), compile_at, dataclasses.replace(room,
                                                                                capacity=50e6))
  # On CPU the host holds every device's share and the pipeline's batches too.
  host = memory.Budget(capacity=int(10e9), devices=8, host_per_example=1e6, where="test")
  assert host.need(1e9, 100) == 8e9 + 1e8


def test_the_abstract_batch_is_the_pipeline_s_batch(tiny_data):
  import jax

  from attend_jax.data import pipeline
  from attend_jax.train import sharding
  from configs import demo

  config = demo.get_config("smoke")
  config.data.dir, config.data.name, config.data.image_size = str(tiny_data), "synthetic_96", 96
  mesh = sharding.make_mesh()
  batch = sharding.to_global(next(iter(pipeline.make_dataset(
      pipeline.for_split(config, "train", train=True)))), mesh)
  abstract = memory.abstract_batch(config, mesh, config.data.batch_size)
  assert {k: (v.shape, v.dtype, v.sharding) for k, v in abstract.items()} == {
      k: (v.shape, v.dtype, v.sharding) for k, v in batch.items()}
  assert jax.device_count() == 8 and abstract["image"].sharding.spec == sharding.BATCH_SPEC


def _run_measured(*args):
  """``python ARGS`` as helpers.run does; (returncode, stdout, stderr, the child's rusage)."""
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=helpers.REPO, text=True,
                            env=helpers.env(), stdout=out, stderr=err)
    guard = threading.Timer(helpers.HANG_GUARD_S, proc.kill)
    guard.start()
    _, status, usage = os.wait4(proc.pid, 0)
    guard.cancel()
    out.seek(0), err.seek(0)
    return os.waitstatus_to_exitcode(status), out.read(), err.read(), usage


@pytest.mark.slow
def test_a_batch_that_cannot_fit_is_one_line_naming_one_that_does(tiny_data, tmp_path):
  batch = 10_000_000  # About 10 TB of activations for this tiny model.
  code, _, err, usage = _run_measured(*_train_args(tiny_data, tmp_path / "run",
                                                    f"--config.data.batch_size={batch}"))
  assert code == 1 and "Traceback" not in err, err[-3000:]
  [line] = err.strip().splitlines()
  assert line.startswith(f"error: config.data.batch_size={batch} does not fit: by an estimate")
  fits = int(re.search(r"about (\d+) fits", line).group(1))
  assert 0 < fits < batch and "--config.train.memory_check=False" in line
  # Refused before anything was read or allocated: the child stayed under a few GB.
  assert usage.ru_maxrss * 1024 < 4e9, usage.ru_maxrss
  assert not (tmp_path / "run" / "checkpoints").exists()
