"""Pretrained DINOv2 weights: read any common format, map onto our NNX model, save with orbax.

Accepted inputs, detected from the keys, not the file name:

- Meta torch-hub ``.pth`` (``dinov2_vitb14_pretrain.pth``, ``..._reg4_pretrain.pth``);
- timm state dicts (same names without ``mask_token``; register models use ``reg_token`` and
  fold ``pos_embed[:, 0]`` into ``cls_token``);
- Hugging Face ``facebook/dinov2-*`` safetensors or ``.bin``, both with transformers 5's
  in-memory names (``q_proj``/``o_proj``, ``gate_proj``/``up_proj``) and the legacy on-disk names
  (``attention.attention.query``, ``mlp.weights_in``).

Every format is first rewritten into Meta's names (``state_dict``), then into our parameter
tree (``mapping``); ``download`` fetches and caches Meta's files. torch is imported only to
unpickle ``.pth``/``.bin`` files, always with ``weights_only=True``. ``convert`` is the whole
conversion, as run by tools/convert_dinov2.py.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
from flax import nnx

from attend_jax.convert.dinov2.download import cache_dir, fetch, meta_url, resolve_source
from attend_jax.convert.dinov2.mapping import (Pretrained, check_state_dict, load_pretrained,
                                              meta_to_params, model_from_params, write_random)
from attend_jax.convert.dinov2.state_dict import (DEFAULT_INTERP, detect_format, read_state_dict,
                                                  to_meta_names)
from attend_jax.models import pretrained

__all__ = ["DEFAULT_INTERP", "Pretrained", "cache_dir", "check_state_dict", "convert",
           "detect_format", "fetch", "load_pretrained", "meta_to_params", "meta_url",
           "model_from_params", "read_state_dict", "resolve_source", "to_meta_names",
           "write_random"]


def convert(checkpoint: str | None, variant: str, out: str | os.PathLike, registers: bool = False,
            pos_embed_interp: str | None = None,
            progress: Callable[[int, int], None] | None = None, **sizes) -> dict:
  """Converts a weights file (or Meta's official one) into an orbax checkpoint at ``out``;
  ``sizes`` (width, depth, num_heads) describe a smaller model than ``variant``'s."""
  source = resolve_source(checkpoint, variant, registers, progress)
  loaded = load_pretrained(source, variant, registers, pos_embed_interp, **sizes)
  info = {
      "variant": variant,
      "registers": registers,
      "source": str(checkpoint or source),
      "source_format": loaded.source_format,
      "pos_embed_interp": loaded.model.cfg.pos_embed_interp,
      "num_params": sum(x.size for x in jax.tree.leaves(nnx.state(loaded.model, nnx.Param))),
  }
  pretrained.save(loaded.model, out, metadata={"converted_from": info})
  return info
