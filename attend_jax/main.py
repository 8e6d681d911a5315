r"""Trains and evaluates the Attend classifier.

  python -m attend_jax.main --config=configs/demo.py --workdir=workdirs/demo
  python -m attend_jax.main --config=configs/vindr.py --workdir=workdirs/vindr \
      --config.data.dir=data/prepared --config.model.pretrained=weights/dinov2_vitb14

Rerunning the same command on the same workdir resumes.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from attend_jax.data.errors import DataError
from attend_jax.data.sources import DatasetNotFoundError
from attend_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.",
                               required=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Progress is printed; orbax's INFO is very chatty.
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (DatasetNotFoundError, DataError) as e:
    # Missing or unusable data is the user's to fix, so a message, not a traceback.
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
