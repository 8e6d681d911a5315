r"""Trains and evaluates a config's task (the Attend classifier, or the RoI detector).

  python -m attend_jax.main --config=configs/demo.py --workdir=workdirs/demo
  python -m attend_jax.main --config=configs/vindr.py --workdir=workdirs/vindr \
      --config.data.dir=data/prepared --config.model.pretrained=weights/dinov2_vitb14

Rerunning the same command on the same workdir resumes. Library logs go to WORKDIR/log.txt
(--verbose shows them here too). WORKDIR may be a bucket (gs://...). On SIGTERM or SIGINT the
run saves a checkpoint after the current step and exits with code 75 (``preemption``).
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from attend_jax import checkpoint, cli, config_check, run
from attend_jax.errors import DiskFullError
from attend_jax.train import preemption, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.",
                               required=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config_check.check(_CONFIG.value)  # Before the workdir (and its log file) is made.
  cli.setup_logging(_WORKDIR.value)
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except preemption.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    return preemption.EXIT_PREEMPTED
  return 0


def run_cli() -> None:
  cli.run(main, errors=(
      config_check.ConfigError, trainer.TrainingDivergedError, run.WorkdirBusyError,
      checkpoint.CheckpointRestoreError, PermissionError, DiskFullError))


if __name__ == "__main__":
  run_cli()
