"""The trainer end to end on tiny synthetic data: outputs, exact resume, NaN stop."""

import json
import math
import types

import jax
import numpy as np
import pytest

from attend_jax.train import optim, trainer

import gcs as gcs_emulator
import helpers

pytestmark = pytest.mark.slow  # Each test trains; the unit tests of the loop's parts are fast.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  # With proposal files (the oracle's boxes), so the RoIs come from the records.
  return helpers.tiny_prepared(tmp_path_factory.mktemp("trainer_data"), oracle_proposals=6)


def _config(data_dir, **train):
  c = helpers.tiny_config(data_dir, proposals="files", **train)
  c.data.batch_size = c.data.eval_batch_size = 8
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 6, 2, 3, 3
  for key, value in train.items():  # Again: the defaults above may not override them.
    section, name = key.split("__")
    c[section][name] = value
  return c


def test_train_writes_every_artefact(data_dir, tmp_path):
  summary = trainer.train_and_evaluate(_config(data_dir), str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"]["roi_size"] == 28
  metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  for key in ("auc", "auc_ci_low", "auc_ci_high", "best_f1", "sens_at_fpr_0.1",
              "sens_at_fpr_0.3", "sens_at_fpr_0.5", "num_examples", "num_positive"):
    assert key in metrics
  assert summary["num_examples"] == metrics["num_examples"] > 0
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {l["split"] for l in lines} == {"train", "val"}
  assert all(math.isfinite(l["loss"]) for l in lines if l["split"] == "train")
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert (tmp_path / "best").exists() and (tmp_path / "eval" / "predictions.csv").exists()


def test_resume_after_a_stop_is_exact(data_dir, tmp_path):
  straight = tmp_path / "straight"
  trainer.train_and_evaluate(_config(data_dir), str(straight))
  resumed = tmp_path / "resumed"
  trainer.train_and_evaluate(_config(data_dir, train__steps=3), str(resumed))
  assert helpers.latest_params(resumed)[0] == 3
  trainer.train_and_evaluate(_config(data_dir), str(resumed))  # Same workdir: continues.
  step_a, a = helpers.latest_params(straight)
  step_b, b = helpers.latest_params(resumed)
  assert step_a == step_b == 6
  helpers.assert_same_trees(a, b)


def test_nan_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  trainer.train_and_evaluate(_config(data_dir, train__steps=3), str(tmp_path))
  with pytest.raises(trainer.TrainingDivergedError, match="step 4"):
    trainer.train_and_evaluate(_config(data_dir, loss__pos_weight=float("nan")), str(tmp_path))
  assert helpers.latest_params(tmp_path)[0] == 3


def test_nan_found_at_a_later_save_names_its_step_and_is_never_saved(data_dir, tmp_path):
  """Between log steps nothing is read back from the device: a loss that goes NaN at step 4 is
  found at the step-6 save, before it, and named by its own step."""
  trainer.train_and_evaluate(_config(data_dir, train__steps=3), str(tmp_path))
  with pytest.raises(trainer.TrainingDivergedError, match=r"Loss is nan at step 4;.*step 3"):
    trainer.train_and_evaluate(_config(data_dir, loss__pos_weight=float("nan"),
                                       train__log_every=100, train__eval_every=100),
                               str(tmp_path))
  assert helpers.latest_params(tmp_path)[0] == 3


@pytest.fixture
def transfer_guard_on_cpu(monkeypatch):
  """JAX's transfer guard as an accelerator enforces it: XLA:CPU hands arrays to numpy without a
  copy, so the guard never fires on a CPU (jax-ml/jax#16602). Here every implicit read of an
  array's value (float(), np.asarray, bool, tolist all go through ``_value``) raises where the
  thread's guard says "disallow"."""
  from jax._src import array, config

  read = array.ArrayImpl._value

  def guarded(self):
    if config.transfer_guard_device_to_host.value == "disallow":
      raise RuntimeError("Disallowed device-to-host transfer (the guard, emulated on a CPU)")
    return read.fget(self)

  monkeypatch.setattr(array.ArrayImpl, "_value", property(guarded))


def test_steps_between_log_eval_and_save_steps_read_nothing_back(data_dir, tmp_path,
                                                                 transfer_guard_on_cpu):
  """Six steps, the host syncing only at steps 3 and 6: the other four run under the guard."""
  summary = trainer.train_and_evaluate(_config(data_dir, train__log_every=3), str(tmp_path))
  assert summary["num_examples"] > 0 and helpers.latest_params(tmp_path)[0] == 6


def test_a_read_back_between_log_steps_stops_the_run(data_dir, tmp_path, monkeypatch,
                                                     transfer_guard_on_cpu):
  """The check can fail: a stray float() of a device value in the step loop is refused."""
  from attend_jax.data import prefetch

  class Reading(prefetch.DevicePrefetch):
    def __next__(self):
      batch, state = super().__next__()
      float(batch["label"][0])
      return batch, state

  monkeypatch.setattr(trainer, "prefetch", types.SimpleNamespace(DevicePrefetch=Reading))
  with pytest.raises(RuntimeError, match="Disallowed device-to-host transfer"):
    trainer.train_and_evaluate(_config(data_dir), str(tmp_path))


_WORKER = """
import os, signal, sys, time
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from attend_jax.train import preemption, trainer
sys.path[:0] = [os.path.join(os.getcwd(), "tests"), os.path.join(os.getcwd(), "tests", "train")]
from test_trainer import _config
pause_at = int(sys.argv[3])
def log(message, *args):
  print(message % args if args else message, flush=True)
  if (pause_at and jax.process_index() == 1 and message.startswith("step %d/%d")
      and args[0] == pause_at):
    # Until the trainer's own handler has noted a signal (which may come before this loop).
    stop = signal.getsignal(signal.SIGTERM).__self__
    print("paused", flush=True)
    while stop.signum is None:
      time.sleep(0.05)
trainer.log = log
config = _config(sys.argv[1])
config.train.steps, config.train.log_every = 4, 1
config.train.preemption_grace_s = 600.0  # A busy CI machine; the grace period has its own test.
try:
  trainer.train_and_evaluate(config, sys.argv[2])
except preemption.Preempted as e:
  print("preempted after step", e.step, flush=True)
  sys.exit(preemption.EXIT_PREEMPTED)
print("processes", jax.process_count(), "devices", jax.device_count(), flush=True)
"""


def _two_processes(data_dir, workdir, pause_at=0):
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  return [helpers.start("-c", _WORKER, data_dir, workdir, pause_at, extra_env={
      "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(i), "PYTHONUNBUFFERED": "1",
  }) for i in range(2)]


def _losses(out):
  """The logged global losses ("step 3/4  loss 1.3747", without the rates and ETAs)."""
  return [l.split("steps/s")[0].rsplit(" ", 3)[0] for l in out.splitlines()
          if l.startswith("step ") and "loss" in l]


def _train_losses(workdir):
  """step -> the loss in metrics.jsonl, at full precision."""
  from etils import epath

  gcs_emulator.fresh_listings()
  lines = (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["split"] == "train"}


def test_two_processes_with_jax_distributed_train_in_step_and_stop_together(data_dir, tmp_path,
                                                                              gcs):
  """Two hosts train in step; on an emulated bucket, one host's SIGTERM stops both after the
  same step with one committed checkpoint, and rerunning both resumes exactly."""
  import signal

  from etils import epath

  from attend_jax.train import preemption

  procs = _two_processes(data_dir, tmp_path / "run")
  outs = [helpers.finish(p) for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
    assert "processes 2 devices 2" in out
  losses = [_losses(out) for out in outs]  # The same global loss on both hosts.
  assert len(losses[0]) == 4 and losses[0] == losses[1]
  assert (tmp_path / "run" / "checkpoints" / "4" / "state").is_dir()
  assert (tmp_path / "run" / "eval" / "metrics.json").exists()

  bucket = gcs.path("two_hosts")
  procs = _two_processes(data_dir, bucket, pause_at=2)
  seen = []
  for line in procs[1].stdout:  # Host 1 holds still after step 2, host 0 waits for it.
    seen.append(line)
    if line.startswith("paused"):
      break
  else:
    raise AssertionError("".join(seen)[-3000:])
  procs[1].send_signal(signal.SIGTERM)
  outs = [helpers.finish(procs[0]), "".join(seen) + helpers.finish(procs[1])]
  for p, out in zip(procs, outs):
    assert p.returncode == preemption.EXIT_PREEMPTED, out[-3000:]
    assert "preempted after step 2" in out
  assert "SIGTERM: saving a checkpoint after this step" in outs[1]
  gcs_emulator.fresh_listings()
  steps = epath.Path(bucket) / "checkpoints"
  assert sorted(int(p.name) for p in steps.iterdir() if p.name.isdigit()) == [2]
  assert (steps / "2" / "commit_success.txt").exists()

  procs = _two_processes(data_dir, bucket)
  outs = [helpers.finish(p) for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
    assert "Resumed from step 2" in out
  assert _losses(outs[0]) == _losses(outs[1]) == losses[0][2:]
  straight, resumed = _train_losses(tmp_path / "run"), _train_losses(bucket)
  assert resumed == straight, (resumed, straight)  # Every step's loss, bit for bit.
  gcs_emulator.fresh_listings()
  assert (epath.Path(bucket) / "eval" / "metrics.json").exists()


_RUN = """
import os, sys, time
sys.path[:0] = [os.path.join(os.getcwd(), "tests"), os.path.join(os.getcwd(), "tests", "train")]
from attend_jax.train import trainer
from test_trainer import _config
data_dir, workdir, steps, mesh_data, mesh_fsdp, pause_at = sys.argv[1:7]
printed = trainer.log
def log(message, *args):
  printed(message, *args)
  if pause_at != "0" and message.startswith("step %d/%d") and args[0] == int(pause_at):
    while True:
      time.sleep(1)  # Holds still here, however long the machine takes, until it is killed.
trainer.log = log
config = _config(data_dir, train__steps=int(steps), train__log_every=1)
config.optim.warmup_steps = int(os.environ.get("TEST_WARMUP_STEPS", "0"))
config.mesh.data, config.mesh.fsdp = int(mesh_data), int(mesh_fsdp)
trainer.train_and_evaluate(config, workdir)
"""


def _start(data_dir, workdir, steps=6, devices=8, mesh=(-1, 1), pause_at=0, warmup=0):
  return helpers.start("-c", _RUN, data_dir, workdir, steps, mesh[0], mesh[1], pause_at,
                       devices=devices, extra_env={"TEST_WARMUP_STEPS": str(warmup)})


def _finish(proc):
  out = helpers.finish(proc)
  assert proc.returncode == 0, out[-3000:]
  return [l for l in out.splitlines() if l.startswith("step ") and "loss" in l]


def test_sigkill_then_the_same_command_resumes_exactly(data_dir, tmp_path):
  import signal
  import time

  straight = tmp_path / "straight"
  _finish(_start(data_dir, straight))
  killed = tmp_path / "killed"
  proc = _start(data_dir, killed, pause_at=4)
  deadline = time.time() + helpers.HANG_GUARD_S
  # Checkpoint 3 is written asynchronously; it counts once orbax has committed it.
  while not (killed / "checkpoints" / "3" / "_CHECKPOINT_METADATA").exists():
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (killed / "eval").exists()
  _finish(_start(data_dir, killed))  # The very same command.
  step_a, a = helpers.latest_params(straight)
  step_b, b = helpers.latest_params(killed)
  assert step_a == step_b == 6
  helpers.assert_same_trees(a, b)


WARMUP = 20


def test_eight_devices_train_like_one(data_dir, tmp_path):
  """A 2 x 4 data x fsdp mesh against a single device: losses, gradients, parameters.

  Summation order differs between the two, so results agree to float32 rounding, and Adam
  amplifies that for parameters whose gradient is ~0 (m / sqrt(v) is then sign-like): those
  may differ by up to lr per step. Everything else must match closely.
  """
  # Adam's first steps are sign(g) * lr for every parameter, so one whose gradient is rounding
  # noise moves by +-lr either way, and after a few full-lr steps the two runs' losses part by
  # percents on some data (seen: 1.4 % at step 3). A warmup keeps those steps small, so that
  # what is compared is the sharded computation, not Adam's amplification of its rounding.
  one = _start(data_dir, tmp_path / "one", steps=3, devices=1, warmup=WARMUP)
  eight = _start(data_dir, tmp_path / "eight", steps=3, devices=8, mesh=(2, 4), warmup=WARMUP)
  _finish(one), _finish(eight)

  def train_rows(run):
    lines = [json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    return [l for l in lines if l["split"] == "train"]

  a, b = train_rows("one"), train_rows("eight")
  assert len(a) == len(b) == 3
  # Step 1 starts from the same parameters: the forward and the global-batch gradient. Sharded
  # matmuls and reductions sum in another order: a few dozen float32 ulps apart (2e-6 relative
  # seen on one CI machine), where a per-device loss or BatchNorm is off by percents.
  assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-5)
  assert b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-4)
  np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-4)
  _, pa = helpers.latest_params(tmp_path / "one")
  _, pb = helpers.latest_params(tmp_path / "eight")
  lr = sum(r["lr"] for r in a)  # What the three steps could move a parameter by, at most.
  diffs = np.concatenate([np.abs(np.asarray(x) - np.asarray(y)).ravel()
                          for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb))])
  spread = {q: float(np.quantile(diffs, q)) for q in (0.5, 0.99)}
  # A wrong gradient (a per-device BatchNorm, loss or contrastive term) moves most parameters
  # by ~lr. Rounding moves the median by 1e-7 to a few 1e-6 depending on the machine (3.5e-6
  # seen), and only a tail by more: bounds relative to a step, not to one machine's figure.
  assert diffs.max() <= 3 * 2 * lr, spread
  assert spread[0.5] < lr / 100 and spread[0.99] < lr / 10, spread


def test_bfloat16_compute_with_gradient_accumulation_trains(data_dir, tmp_path):
  config = _config(data_dir, model__dtype="bfloat16", optim__grad_accum=2, train__steps=4,
                   optim__warmup_steps=3)
  summary = trainer.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [l["loss"] for l in lines if l["split"] == "train"]
  assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
  # The step computes the logged lr on the device: the schedule at the row's step.
  schedule = optim.schedule(config)
  for row in (l for l in lines if l["split"] == "train"):
    assert row["lr"] == pytest.approx(float(schedule(row["step"])), rel=1e-6), row
  assert summary["num_examples"] > 0
  step, params = helpers.latest_params(tmp_path)
  assert step == 4 and all(x.dtype == np.float32 for x in jax.tree.leaves(params))  # f32 master.


def _detector_config(data_dir, **train):
  c = _config(data_dir, **train)
  c.task = "detect"
  c.proposals.source, c.proposals.topk = "breast_only", 1
  c.data.eval_split = c.data.test_split = "train"  # The 6-study val split may hold no lesion.
  c.detector.update({"input_size": 56, "fpn_dim": 16, "head_convs": 1, "pre_nms": 40,
                     "max_detections": 20})
  return c


def test_the_detector_task_trains_evaluates_and_resumes_exactly_on_eight_devices(data_dir,
                                                                                  tmp_path):
  """The same loop with task=detect, sharded over the 8 simulated devices: its metrics and
  FROC plot, the best checkpoint by lesion recall, and a bit-exact resume."""
  assert jax.device_count() == 8
  straight = tmp_path / "straight"
  summary = trainer.train_and_evaluate(_detector_config(data_dir), str(straight))
  metrics = json.loads((straight / "eval" / "metrics.json").read_text())
  assert metrics == summary and metrics["num_lesions"] > 0
  for key in ("recall@1_iou0.3", "recall@5_iou0.5", "recall@10_iou0.3", "froc_sens@0.5fp",
              "froc_sens@1fp", "froc_sens@2fp", "map50"):
    assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0, key
  # The FROC curve is drawn (matplotlib's first line colour).
  assert helpers.has_colour(helpers.png_rgb(straight / "eval" / "froc.png"), helpers.C0)
  header, *rows = (straight / "eval" / "detections.csv").read_text().splitlines()
  assert header.endswith("rank,x0,y0,x1,y1,score") and len(rows) == metrics["num_detections"]
  lines = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
  train = [l for l in lines if l["split"] == "train"]
  assert all(math.isfinite(l["loss"]) for l in train)
  # Positives are points counted over the batch, and the training images' lesions became
  # positives: without them the box losses train nothing.
  positives = [l["positives"] for l in train]
  assert all(p == int(p) for p in positives) and max(positives) >= 1, positives
  assert all("recall@5_iou0.3" in l for l in lines if l["split"] == "val")
  assert json.loads((straight / "config.json").read_text())["task"] == "detect"

  resumed = tmp_path / "resumed"
  trainer.train_and_evaluate(_detector_config(data_dir, train__steps=3), str(resumed))
  trainer.train_and_evaluate(_detector_config(data_dir), str(resumed))
  step_a, a = helpers.latest_params(straight)
  step_b, b = helpers.latest_params(resumed)
  assert step_a == step_b == 6
  helpers.assert_same_trees(a, b)
