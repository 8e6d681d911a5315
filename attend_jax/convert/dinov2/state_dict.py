"""DINOv2 state dicts: read a safetensors or torch file into numpy arrays, detect its naming
(Meta, timm, Hugging Face) and rewrite it into Meta's.

torch is imported only to unpickle ``.pth``/``.bin`` files, always with ``weights_only=True``.
"""

from __future__ import annotations

import os
import pathlib
import re
import zipfile
from typing import Mapping

import numpy as np

from attend_jax.errors import CheckpointError


# ----------------------------------------------------------------------------------------------
# Reading files.
# ----------------------------------------------------------------------------------------------


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # A torch tensor; bf16 has no numpy dtype, so go via float32.
    return value.detach().cpu().float().numpy()
  return np.asarray(value)


def _unwrap(obj, path) -> dict:
  """Finds the tensor dict inside common training-checkpoint wrappers."""
  for key in ("state_dict", "model", "teacher", "module"):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping) or not obj:
    raise CheckpointError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
  tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
  if not tensors:
    raise CheckpointError(path, "holds no tensors")
  return tensors


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a safetensors, torch zip or legacy torch pickle file into float32 numpy arrays."""
  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointError(path, "no such file")
  if path.is_dir():
    found = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if len(found) != 1:
      raise CheckpointError(path, "is a folder; pass the .safetensors, .bin or .pth file in it")
    path = found[0]
  with open(path, "rb") as f:
    head = f.read(16)
  if not head:
    raise CheckpointError(path, "is empty")

  if head[:2] == b"PK" or head[:1] == b"\x80":
    tensors = _read_torch(path)
  elif len(head) >= 9 and head[8:9] == b"{":
    tensors = _read_safetensors(path)
  else:
    raise CheckpointError(
        path, "is not a checkpoint (expected safetensors or a torch .pth/.bin file)"
    )
  return {k: _to_numpy(v).astype(np.float32) for k, v in tensors.items()}


def _read_safetensors(path) -> dict:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  try:
    return load_file(path)
  except (SafetensorError, ValueError, OSError) as e:
    raise CheckpointError(path, f"unreadable safetensors file, truncated or corrupt ({e})") from e


def _read_torch(path) -> dict:
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(
        path, "is a PyTorch file; reading it needs torch (pip install torch), or convert"
        " the safetensors version instead"
    ) from e
  import pickle

  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointError(path, f"unreadable torch file, truncated or corrupt ({reason})") from e
  return _unwrap(obj, path)


# ----------------------------------------------------------------------------------------------
# Any naming -> Meta's naming.
# ----------------------------------------------------------------------------------------------

_PREFIXES = ("module.", "backbone.", "dinov2.", "vision_model.", "model.")


def _strip_prefix(sd: dict) -> dict:
  for prefix in _PREFIXES:
    if any(k.startswith(prefix + p) for k in sd for p in ("blocks.", "encoder.layer.")):
      return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
  return sd


def detect_format(sd: Mapping[str, np.ndarray]) -> str:
  """One of "meta", "timm", "hf", "hf_legacy"."""
  keys = set(sd)
  if any(k.startswith("encoder.layer.") for k in keys):
    if any(".attention.attention.query." in k for k in keys):
      return "hf_legacy"
    return "hf"
  if any(k.startswith("blocks.") for k in keys):
    if "mask_token" in keys or "register_tokens" in keys:
      return "meta"
    return "timm"
  return "unknown"


_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.w3."),
    (r"^encoder\.layer\.(\d+)\.mlp\.down_proj\.", r"blocks.\1.mlp.w3."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^layernorm\.", "norm."),
]

# Pieces that Meta stores packed: (our packed name, [HF parts in concatenation order]).
_HF_PACKED = [
    ("attn.qkv", ["attention.q_proj", "attention.k_proj", "attention.v_proj"]),
    ("attn.qkv", ["attention.attention.query", "attention.attention.key",
                  "attention.attention.value"]),
    ("mlp.w12", ["mlp.gate_proj", "mlp.up_proj"]),
]


def _from_hf(sd: dict) -> dict:
  sd = dict(sd)
  out = {}
  layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
  for i in layers:
    for packed, parts in _HF_PACKED:
      for suffix in ("weight", "bias"):
        names = [f"encoder.layer.{i}.{p}.{suffix}" for p in parts]
        if all(n in sd for n in names):
          out[f"blocks.{i}.{packed}.{suffix}"] = np.concatenate([sd.pop(n) for n in names], 0)
  for key, value in sd.items():
    for pattern, repl in _HF_RENAMES:
      new, count = re.subn(pattern, repl, key)
      if count:
        out[new] = value
        break
    else:
      out[key] = value
  return out


def _from_timm(sd: dict) -> dict:
  sd = dict(sd)
  if "reg_token" in sd:
    # timm folds the class position into cls_token and keeps only patch positions.
    sd["register_tokens"] = sd.pop("reg_token")
    pos = sd["pos_embed"]
    sd["pos_embed"] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
  if _is_swiglu_timm(sd):
    sd = {re.sub(r"\.mlp\.fc1\.", ".mlp.w12.", re.sub(r"\.mlp\.fc2\.", ".mlp.w3.", k)): v
          for k, v in sd.items()}
  return sd


def _is_swiglu_timm(sd: dict) -> bool:
  """timm packs g/14's SwiGLU into mlp.fc1 (2x hidden) and mlp.fc2; plain MLPs are 4x."""
  fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
  if fc1 is None or fc2 is None:
    return False
  return fc1.shape[0] == 2 * fc2.shape[1]


def to_meta_names(sd: Mapping[str, np.ndarray], path="<state dict>") -> tuple[dict, str]:
  """Rewrites any supported naming into Meta's. Returns (state dict, detected format)."""
  sd = _strip_prefix(dict(sd))
  fmt = detect_format(sd)
  if fmt in ("hf", "hf_legacy"):
    sd = _from_hf(sd)
  elif fmt == "timm":
    sd = _from_timm(sd)
  elif fmt == "unknown":
    sample = ", ".join(sorted(sd)[:5])
    raise CheckpointError(
        path, f"no DINOv2 weights found: keys look like [{sample}, ...], expected Meta"
        " (blocks.N.attn.qkv), timm or Hugging Face (encoder.layer.N) names"
    )
  return sd, fmt


# Interpolation each source model applies to its position embeddings, by format.
DEFAULT_INTERP = {
    ("meta", False): "meta_v1",
    ("meta", True): "antialias",
    ("timm", False): "antialias",
    ("timm", True): "antialias",
    ("hf", False): "hf_v1",
    ("hf", True): "antialias",
    ("hf_legacy", False): "hf_v1",
    ("hf_legacy", True): "antialias",
}
