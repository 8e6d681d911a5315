r"""Converts the authors' released PyTorch checkpoint into one predict and evaluate accept.

  python tools/convert_reference.py --checkpoint model_epoch_N.pt --out weights/reference
  python -m attend_jax.predict --checkpoint=weights/reference --proposals=/data/focal_rois \
      /data/vindr-mammo/images/ --out=preds

The state dict holds ``vision_model.*`` (Meta's DINOv2 names), ``fc_positions``, the three
``transformer_block{i}`` (attention q/k/v/out projections, ``layer_norm1``, ``mlp_layer``,
``layer_norm2``), ``bn_vision`` with its running statistics, ``fc1``, ``fc2`` and, in ``cls``
pooling only, ``cls_token``. The architecture comes from --config (the paper's by default);
override what the checkpoint was trained with, e.g. ``--config.model.pool=attn``. OUT gets
``config.json`` and ``weights/`` (parameters and BatchNorm statistics, orbax). The file is
unpickled with ``torch.load(weights_only=True)``.
"""

import pathlib

from absl import flags
from ml_collections import config_flags

from attend_jax import cli, run
from attend_jax.convert import dinov2, reference_checkpoint
from attend_jax.models import build

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "vindr_reference.py"),
    "The architecture the checkpoint was trained with.", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The authors' model_epoch_N.pt.",
                                  required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)


def main(argv):
  del argv
  config = _CONFIG.value
  sd = dinov2.read_state_dict(_CHECKPOINT.value)
  model = reference_checkpoint.load_reference(sd, build.attend_config(config), _CHECKPOINT.value)
  with config.unlocked():
    config.model.pretrained = ""  # The backbone is in the weights.
  run.save_export(_OUT.value, model, config)
  print(f"Wrote {_OUT.value}: {run.CONFIG} and {run.WEIGHTS}/ ({config.model.variant}, pool"
        f" {config.model.pool}, RoIs at {config.model.roi_size} px)")


if __name__ == "__main__":
  cli.run(main)
