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
import sys

from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from attend_jax.convert import dinov2, reference_checkpoint
from attend_jax.convert.dinov2 import CheckpointError
from attend_jax.inference import WEIGHTS
from attend_jax.train import checkpoint, trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "vindr_reference.py"),
    "The architecture the checkpoint was trained with.", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The authors' model_epoch_N.pt.",
                                  required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    sd = dinov2.read_state_dict(_CHECKPOINT.value)
    model = reference_checkpoint.load_reference(sd, trainer.attend_config(config),
                                                _CHECKPOINT.value)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  with config.unlocked():
    config.model.pretrained = ""  # The backbone is in the weights.
  (out / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  checkpoint.save_weights(out / WEIGHTS, {"params": params, "stats": stats})
  print(f"Wrote {out}: config.json and {WEIGHTS}/ ({config.model.variant}, pool"
        f" {config.model.pool}, RoIs at {config.model.roi_size} px)")
  return 0


if __name__ == "__main__":
  app.run(main)
