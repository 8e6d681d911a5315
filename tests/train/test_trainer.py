"""The trainer end to end on tiny synthetic data: outputs, exact resume, NaN stop."""

import json
import math
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attend_jax.data import prepare, synthetic
from attend_jax.train import trainer
from configs import demo


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("trainer_data")
  synthetic.generate(root / "dicom", 6, seed=0, size_range=(200, 260), jpeg2000_fraction=0.0)
  prepare.prepare("synthetic", root / "dicom", root, prepare.PrepareOptions(long_side=96),
                  workers=1)
  return root


def _config(data_dir, **train):
  c = demo.get_config("smoke")
  c.data.dir = str(data_dir)
  c.data.name = "synthetic_96"
  c.data.image_size = 96
  c.data.synthetic.num_studies = 0
  c.data.batch_size = c.data.eval_batch_size = 8
  c.model.vit_overrides.update({"width": 32, "depth": 1, "num_heads": 2, "pretrained_grid": 2})
  c.model.roi_size = 28
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 6, 2, 3, 3
  for key, value in train.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def _latest_params(workdir):
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointer().restore((workdir / "checkpoints" / str(steps[-1]) / "state")
                                             .absolute())
  return steps[-1], state["params"]


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
  assert _latest_params(resumed)[0] == 3
  trainer.train_and_evaluate(_config(data_dir), str(resumed))  # Same workdir: continues.
  step_a, a = _latest_params(straight)
  step_b, b = _latest_params(resumed)
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_nan_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  trainer.train_and_evaluate(_config(data_dir, train__steps=3), str(tmp_path))
  with pytest.raises(trainer.TrainingDivergedError, match="step 4"):
    trainer.train_and_evaluate(_config(data_dir, loss__pos_weight=float("nan")), str(tmp_path))
  assert _latest_params(tmp_path)[0] == 3


_WORKER = """
import os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from configs import demo
from attend_jax.train import trainer
sys.path.insert(0, os.path.join(os.getcwd(), "tests", "train"))
from test_trainer import _config
trainer.log = lambda message, *args: print(message % args if args else message, flush=True)
config = _config(sys.argv[1])
config.train.steps, config.train.log_every = 4, 1
trainer.train_and_evaluate(config, sys.argv[2])
print("processes", jax.process_count(), "devices", jax.device_count(), flush=True)
"""


def test_two_processes_with_jax_distributed_train_in_step(data_dir, tmp_path):
  import os
  import socket
  import subprocess
  import sys

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  repo = pathlib.Path(__file__).resolve().parents[2]
  procs = []
  for i in range(2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(data_dir),
                                   str(tmp_path / "run")], cwd=repo, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
    assert "processes 2 devices 2" in out
  losses = [[l for l in out.splitlines() if l.startswith("step ") and "loss" in l] for out in outs]
  assert len(losses[0]) == 4 and losses[0] == losses[1]  # The same global loss on both hosts.
  assert (tmp_path / "run" / "checkpoints" / "4" / "state").is_dir()
  assert (tmp_path / "run" / "eval" / "metrics.json").exists()
