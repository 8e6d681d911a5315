r"""Converts pretrained DINOv2 weights into an attend_jax (orbax) checkpoint.

  # Meta's official file, downloaded into ~/.cache/attend_jax/dinov2 on first use:
  python tools/convert_dinov2.py --variant vitb14 --out weights/dinov2_vitb14
  # A file you already have: Meta .pth, timm, or Hugging Face safetensors / .bin:
  python tools/convert_dinov2.py --variant vitb14 --registers \
      --checkpoint dinov2_vitb14_reg4_pretrain.pth --out weights/dinov2_vitb14_reg4

The format is detected from the tensor names. Load the result with
``attend_jax.models.pretrained.load(out)``.
"""

from absl import flags

from attend_jax import cli
from attend_jax.convert import dinov2
from attend_jax.models import interpolate
from attend_jax.models import vit
from attend_jax.progress import Progress

_VARIANT = flags.DEFINE_enum("variant", "vitb14", vit.VARIANTS, "DINOv2 backbone size.")
_REGISTERS = flags.DEFINE_bool("registers", False, "The model has 4 register tokens (*_reg4).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Weights file or URL. Default: Meta's official file for --variant.")
_OUT = flags.DEFINE_string("out", None, "Output folder for the orbax checkpoint.", required=True)
# A smaller backbone of the same design: test weights, and the configs' :tiny variants, whose
# vit_overrides say the same sizes.
_WIDTH = flags.DEFINE_integer("width", 0, "Embedding width, when not the variant's (0).")
_DEPTH = flags.DEFINE_integer("depth", 0, "Number of blocks, when not the variant's (0).")
_HEADS = flags.DEFINE_integer("num_heads", 0, "Attention heads, when not the variant's (0).")
_INTERP = flags.DEFINE_enum(
    "pos_embed_interp", None, interpolate.POS_EMBED_INTERPOLATIONS,
    "Override how position embeddings are resized at other image sizes. Default: the source"
    " model's own algorithm (meta_v1 for Meta's v1 files, antialias for register models and"
    " timm, hf_v1 for transformers.Dinov2Model).")


def main(argv):
  del argv
  sizes = {k: v for k, v in (("width", _WIDTH.value), ("depth", _DEPTH.value),
                             ("num_heads", _HEADS.value)) if v}
  info = dinov2.convert(_CHECKPOINT.value, _VARIANT.value, _OUT.value, _REGISTERS.value,
                        _INTERP.value, progress=Progress("downloading", "B", unit_scale=True),
                        **sizes)
  print(f"converted {info['source']} ({info['source_format']} names, {info['num_params']:,}"
        f" parameters, position resize {info['pos_embed_interp']}) -> {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
