"""Meta-named DINOv2 weights onto our NNX model: the shapes a config expects, the check that
names what is missing or mis-shaped, the parameter tree, and ``load_pretrained``, which reads a
file of any supported format into a model."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from attend_jax.convert.dinov2.state_dict import DEFAULT_INTERP, read_state_dict, to_meta_names
from attend_jax.errors import CheckpointError
from attend_jax.models import vit


def _expected_shapes(cfg: vit.ViTConfig) -> dict[str, tuple]:
  d, hidden, grid = cfg.width, cfg.mlp_hidden, cfg.pretrained_grid
  shapes = {
      "cls_token": (1, 1, d),
      "pos_embed": (1, 1 + grid * grid, d),
      "patch_embed.proj.weight": (d, 3, vit.PATCH_SIZE, vit.PATCH_SIZE),
      "patch_embed.proj.bias": (d,),
      "norm.weight": (d,),
      "norm.bias": (d,),
  }
  if cfg.num_registers:
    shapes["register_tokens"] = (1, cfg.num_registers, d)
  mlp = (
      {"mlp.w12.weight": (2 * hidden, d), "mlp.w12.bias": (2 * hidden,),
       "mlp.w3.weight": (d, hidden), "mlp.w3.bias": (d,)}
      if cfg.mlp == "swiglu"
      else {"mlp.fc1.weight": (hidden, d), "mlp.fc1.bias": (hidden,),
            "mlp.fc2.weight": (d, hidden), "mlp.fc2.bias": (d,)}
  )
  block = {
      "norm1.weight": (d,), "norm1.bias": (d,),
      "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
      "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
      "ls1.gamma": (d,), "norm2.weight": (d,), "norm2.bias": (d,), "ls2.gamma": (d,),
      **mlp,
  }
  for i in range(cfg.depth):
    shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
  return shapes


def _guess_variant(sd: Mapping[str, np.ndarray]) -> str:
  width = sd["cls_token"].shape[-1] if "cls_token" in sd else None
  depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
  for name in vit.VARIANTS:
    cfg = vit.config_for(name)
    if cfg.width == width and cfg.depth == depth:
      return f"; the file looks like {name}"
  return f"; the file has width {width} and {depth} blocks"


def check_state_dict(sd: Mapping[str, np.ndarray], cfg: vit.ViTConfig, path) -> None:
  """Raises CheckpointError listing missing keys and shape mismatches against ``cfg``."""
  expected = _expected_shapes(cfg)
  missing = sorted(k for k in expected if k not in sd)
  wrong = [
      f"{k}: file {tuple(sd[k].shape)} vs model {shape}"
      for k, shape in expected.items()
      if k in sd and tuple(sd[k].shape) != shape
  ]
  if wrong:
    more = f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else ""
    raise CheckpointError(
        path, "shapes do not match the requested model: " + "; ".join(wrong[:5]) + more
        + _guess_variant(sd)
    )
  if missing:
    more = f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
    raise CheckpointError(
        path, f"missing {len(missing)} keys: " + ", ".join(missing[:8]) + more + _guess_variant(sd)
    )
  unused = sorted(set(sd) - set(expected) - {"mask_token"})
  if unused:
    logging.warning("%s: ignoring %d keys not in the backbone: %s", path, len(unused), unused[:8])


def meta_to_params(sd: Mapping[str, np.ndarray], cfg: vit.ViTConfig) -> dict:
  """Nested dict shaped like ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``."""

  def linear(prefix):
    return {"kernel": sd[prefix + ".weight"].T, "bias": sd[prefix + ".bias"]}

  def norm(prefix):
    return {"scale": sd[prefix + ".weight"], "bias": sd[prefix + ".bias"]}

  conv = sd["patch_embed.proj.weight"]  # (D, C, kh, kw) -> rows ordered (kh, kw, C).
  params = {
      "patch_embed": {
          "proj": {
              "kernel": conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0]),
              "bias": sd["patch_embed.proj.bias"],
          }
      },
      "cls_token": sd["cls_token"],
      "pos_embed": sd["pos_embed"],
      "norm": norm("norm"),
      "blocks": {},
  }
  if cfg.num_registers:
    params["register_tokens"] = sd["register_tokens"]
  for i in range(cfg.depth):
    p = f"blocks.{i}."
    mlp = (
        {"w12": linear(p + "mlp.w12"), "w3": linear(p + "mlp.w3")}
        if cfg.mlp == "swiglu"
        else {"fc1": linear(p + "mlp.fc1"), "fc2": linear(p + "mlp.fc2")}
    )
    params["blocks"][i] = {
        "norm1": norm(p + "norm1"),
        "attn": {"qkv": linear(p + "attn.qkv"), "proj": linear(p + "attn.proj")},
        "ls1": {"gamma": sd[p + "ls1.gamma"]},
        "norm2": norm(p + "norm2"),
        "mlp": mlp,
        "ls2": {"gamma": sd[p + "ls2.gamma"]},
    }
  return params


def model_from_params(cfg: vit.ViTConfig, params: dict) -> vit.DinoV2:
  """Builds the model on an abstract skeleton and fills it; nothing is initialised twice."""
  model = vit.abstract(cfg)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  nnx.update(model, state)
  return model


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A backbone read from a weights file, and the naming that file used."""

  model: vit.DinoV2
  source_format: str


def load_pretrained(
    path: str | os.PathLike,
    variant: str,
    registers: bool = False,
    pos_embed_interp: str | None = None,
    **config_overrides,
) -> Pretrained:
  """Reads a weights file in any supported format into a DinoV2 of the given variant."""
  raw = read_state_dict(path)
  sd, fmt = to_meta_names(raw, path)
  has_registers = "register_tokens" in sd
  if registers != has_registers:
    hint = "add --registers" if has_registers else "drop --registers"
    raise CheckpointError(
        path, f"the file {'has' if has_registers else 'has no'} register tokens but the model"
        f" was asked {'without' if has_registers else 'with'} them ({hint})"
    )
  interp = pos_embed_interp or DEFAULT_INTERP[(fmt, registers)]
  grid = _pos_grid(sd, path)
  cfg = vit.config_for(
      variant, registers, pretrained_grid=grid, pos_embed_interp=interp, **config_overrides
  )
  check_state_dict(sd, cfg, path)
  return Pretrained(model_from_params(cfg, meta_to_params(sd, cfg)), fmt)


def _pos_grid(sd, path) -> int:
  if "pos_embed" not in sd:
    raise CheckpointError(path, "missing key pos_embed (position embeddings)")
  n = sd["pos_embed"].shape[1] - 1
  side = int(round(n**0.5))
  if side * side != n:
    raise CheckpointError(path, f"pos_embed has {n} patch positions, not a square grid")
  return side


def write_random(path: str | os.PathLike, cfg: vit.ViTConfig, seed: int = 0) -> None:
  """Random weights of ``cfg``'s shapes, as timm's hub DINOv2 files hold them (safetensors,
  Meta's names without ``mask_token``): a stand-in for a pretrained file, for trying the whole
  path (convert, train, predict) with nothing downloaded. Initialised as DINOv2 is before
  pretraining: truncated-normal-like weights, unit norms, zero biases, LayerScale at
  ``cfg.layerscale_init``."""
  from safetensors.numpy import save_file

  if cfg.num_registers:
    raise ValueError("write_random writes models without registers (timm renames their tokens)")
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in _expected_shapes(cfg).items():
    if name.endswith(".bias"):
      value = np.zeros(shape)
    elif name.endswith("gamma"):
      value = np.full(shape, cfg.layerscale_init)
    elif re.search(r"(^|\.)norm\d?\.weight$", name):
      value = np.ones(shape)
    else:
      value = np.clip(rng.normal(0.0, 0.02, shape), -0.04, 0.04)
    state[name] = value.astype(np.float32)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  save_file(state, str(path))
