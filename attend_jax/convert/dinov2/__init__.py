"""Pretrained DINOv2 weights: read any common format, map onto our NNX model, save with orbax.

Accepted inputs, detected from the keys, not the file name:

- Meta torch-hub ``.pth`` (``dinov2_vitb14_pretrain.pth``, ``..._reg4_pretrain.pth``);
- timm state dicts (same names without ``mask_token``; register models use ``reg_token`` and
  fold ``pos_embed[:, 0]`` into ``cls_token``);
- Hugging Face ``facebook/dinov2-*`` safetensors or ``.bin``, both with transformers 5's
  in-memory names (``q_proj``/``o_proj``, ``gate_proj``/``up_proj``) and the legacy on-disk names
  (``attention.attention.query``, ``mlp.weights_in``).

Every format is first rewritten into Meta's names, then into our parameter tree. torch is
imported only to unpickle ``.pth``/``.bin`` files, always with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from attend_jax import paths
from attend_jax.errors import CheckpointError, WeightsDownloadError
from attend_jax.models import pretrained, vit

META_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_{v}/dinov2_{v}{reg}_pretrain.pth"


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


# ----------------------------------------------------------------------------------------------
# Meta's naming -> our parameter tree.
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Download.
# ----------------------------------------------------------------------------------------------


def meta_url(variant: str, registers: bool) -> str:
  if variant not in vit.VARIANTS:
    raise ValueError(f"Unknown DINOv2 variant {variant!r}; expected one of {vit.VARIANTS}.")
  return META_URL.format(v=variant, reg="_reg4" if registers else "")


def cache_dir() -> pathlib.Path:
  root = os.environ.get("ATTEND_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "attend_jax"
  )
  return pathlib.Path(root) / "dinov2"


def fetch(url: str, dest_dir: pathlib.Path | None = None,
          progress: Callable[[int, int], None] | None = None) -> pathlib.Path:
  """Returns the cached copy of ``url``, downloading it first if needed."""
  dest_dir = pathlib.Path(dest_dir or cache_dir())
  dest = dest_dir / url.rstrip("/").rsplit("/", 1)[-1]
  if dest.exists():
    return dest
  dest_dir.mkdir(parents=True, exist_ok=True)
  manual = (
      f"Download it by hand and put it at {dest} (e.g. `curl -L -o {dest} {url}`), "
      "or pass --checkpoint with the file's path."
  )
  tmp = tempfile.NamedTemporaryFile(dir=dest_dir, suffix=".part", delete=False)
  try:
    with urllib.request.urlopen(url, timeout=60) as response, tmp:
      total = int(response.headers.get("Content-Length") or 0)
      done = 0
      while chunk := response.read(1 << 20):
        tmp.write(chunk)
        done += len(chunk)
        if progress:
          progress(done, total)
    if total and done != total:
      raise WeightsDownloadError(url, f"download stopped at {done} of {total} bytes. {manual}")
    os.replace(tmp.name, dest)
  except (urllib.error.URLError, OSError) as e:
    raise WeightsDownloadError(url, f"could not download ({e}). {manual}") from e
  finally:
    if os.path.exists(tmp.name):
      os.unlink(tmp.name)
  return dest


# ----------------------------------------------------------------------------------------------
# The whole conversion, as run by tools/convert_dinov2.py.
# ----------------------------------------------------------------------------------------------


def resolve_source(checkpoint: str | None, variant: str, registers: bool,
                   progress: Callable[[int, int], None] | None = None) -> pathlib.Path:
  """A local file for ``checkpoint``: a path, a URL (downloaded and cached), or None for Meta's."""
  if not checkpoint:
    checkpoint = meta_url(variant, registers)
  if re.match(r"^(https?|file)://", checkpoint):
    return fetch(checkpoint, progress=progress)
  return pathlib.Path(checkpoint).expanduser()


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
