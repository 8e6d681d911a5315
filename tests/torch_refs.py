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
