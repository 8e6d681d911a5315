"""The metric writer: event files and metrics.jsonl, and what starting it costs."""

import json

import helpers

_START = """
import json, sys
from attend_jax.train.writer import MetricWriter
writer = MetricWriter(sys.argv[1])
writer.write(1, "train", {"loss": 0.5})
writer.close()
print(json.dumps({"torch": "torch" in sys.modules}))
"""


def test_the_writer_does_not_import_torch(tmp_path):
  # tensorboardX imports torch whenever it is installed (it is, here): 1.7 s of every run's start.
  import torch  # noqa: F401  (the premise: torch is importable in this environment)

  out = helpers.run("-c", _START, tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.splitlines()[-1]) == {"torch": False}
  assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "split": "train",
                                                                  "loss": 0.5}
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
