"""PyTorch reference models with random weights, built offline for parity tests."""

from __future__ import annotations

import numpy as np
import torch
import transformers

transformers.logging.set_verbosity_error()


def hf_dinov2(width=384, depth=12, heads=6, registers=False, swiglu=False, image_size=518,
              seed=0):
  """A transformers Dinov2(WithRegisters)Model with every parameter randomised.

  Norm scales and LayerScale gammas are set around 1 and biases away from 0, so a mapping
  error in any tensor shows up in the outputs.
  """
  common = dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                image_size=image_size, patch_size=14, use_swiglu_ffn=swiglu,
                layerscale_value=1.0, attn_implementation="sdpa")
  torch.manual_seed(seed)
  if registers:
    model = transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **common))
  else:
    model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen) * 0.05
      if name.endswith(("norm1.weight", "norm2.weight", "layernorm.weight", "lambda1")):
        p.copy_(1.0 + noise)
      elif name.endswith("mask_token"):
        p.zero_()
      else:
        p.copy_(p + noise)
  return model.eval()


def hf_state_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def run_hf(model, images_nhwc: np.ndarray) -> np.ndarray:
  """last_hidden_state for NHWC numpy images."""
  with torch.no_grad():
    pixels = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    return model(pixel_values=pixels).last_hidden_state.numpy()


def meta_v1_interpolate(pos_embed: torch.Tensor, h0: int, w0: int) -> torch.Tensor:
  """Meta's DinoVisionTransformer.interpolate_pos_encoding for v1 hub models, verbatim args."""
  m = int(np.sqrt(pos_embed.shape[1] - 1))
  dim = pos_embed.shape[-1]
  patch = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
  patch = torch.nn.functional.interpolate(
      patch, mode="bicubic", antialias=False,
      scale_factor=(float(h0 + 0.1) / m, float(w0 + 0.1) / m))
  assert patch.shape[-2:] == (h0, w0)
  patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim)
  return torch.cat([pos_embed[:, :1], patch], dim=1)


def use_meta_v1_interpolation(model) -> None:
  """Makes a transformers Dinov2Model resize positions exactly like Meta's v1 hub model."""
  emb = model.embeddings

  def interpolate_pos_encoding(embeddings, height, width):
    n = embeddings.shape[1] - 1
    if n == emb.position_embeddings.shape[1] - 1 and height == width:
      return emb.position_embeddings
    return meta_v1_interpolate(emb.position_embeddings, height // 14, width // 14)

  emb.interpolate_pos_encoding = interpolate_pos_encoding


def meta_state_from_hf(model) -> dict[str, torch.Tensor]:
  """The same weights under Meta's hub names, as in dinov2_vit*14_pretrain.pth files.

  Written out by hand, independently of the converter under test.
  """
  sd = model.state_dict()
  out = {
      "cls_token": sd["embeddings.cls_token"],
      "pos_embed": sd["embeddings.position_embeddings"],
      "mask_token": sd["embeddings.mask_token"],
      "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
      "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
      "norm.weight": sd["layernorm.weight"],
      "norm.bias": sd["layernorm.bias"],
  }
  if "embeddings.register_tokens" in sd:
    out["register_tokens"] = sd["embeddings.register_tokens"]
  for i in range(model.config.num_hidden_layers):
    src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
    for kind in ("weight", "bias"):
      out[dst + f"attn.qkv.{kind}"] = torch.cat(
          [sd[src + f"attention.{p}_proj.{kind}"] for p in "qkv"], dim=0)
      out[dst + f"attn.proj.{kind}"] = sd[src + f"attention.o_proj.{kind}"]
      out[dst + f"norm1.{kind}"] = sd[src + f"norm1.{kind}"]
      out[dst + f"norm2.{kind}"] = sd[src + f"norm2.{kind}"]
      if model.config.use_swiglu_ffn:
        out[dst + f"mlp.w12.{kind}"] = torch.cat(
            [sd[src + f"mlp.gate_proj.{kind}"], sd[src + f"mlp.up_proj.{kind}"]], dim=0)
        out[dst + f"mlp.w3.{kind}"] = sd[src + f"mlp.down_proj.{kind}"]
      else:
        out[dst + f"mlp.fc1.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
        out[dst + f"mlp.fc2.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    out[dst + "ls1.gamma"] = sd[src + "layer_scale1.lambda1"]
    out[dst + "ls2.gamma"] = sd[src + "layer_scale2.lambda1"]
  return {k: v.detach().clone().contiguous() for k, v in out.items()}


def timm_state_from_meta(meta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
  """timm's checkpoint_filter_fn applied to a Meta state dict."""
  out = {}
  swiglu = any(".mlp.w12." in k for k in meta)
  for k, v in meta.items():
    if k == "mask_token":
      continue
    if k == "register_tokens":
      k = "reg_token"
    if swiglu:
      k = k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
    out[k] = v
  if "reg_token" in out:  # no_embed_class: the class position is folded into cls_token.
    out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
    out["pos_embed"] = out["pos_embed"][:, 1:].contiguous()
  return out


def reference_crop(image_u16: np.ndarray, box, out_size: int) -> np.ndarray:
  """docs/method.md's crop: int() corner, zero canvas, /65535, torch antialiased bilinear resize."""
  import torch.nn.functional as F

  cx, cy, w, h = box[:4]
  side = max(w, h)
  x0, y0, size = int(cx - side / 2 - 20), int(cy - side / 2 - 20), int(side + 40)
  canvas = np.zeros((size, size), np.float32)
  H, W = image_u16.shape
  ys, xs = max(0, y0), max(0, x0)
  ye, xe = min(H, y0 + size), min(W, x0 + size)
  if ye > ys and xe > xs:
    canvas[ys - y0:ye - y0, xs - x0:xe - x0] = image_u16[ys:ye, xs:xe]
  t = torch.from_numpy(canvas / 65535.0)[None, None]
  return F.interpolate(t, size=(out_size, out_size), mode="bilinear", align_corners=False,
                       antialias=True)[0, 0].numpy()
