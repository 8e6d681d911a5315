"""A PyTorch model of the reference architecture, written from docs/method.md: parity tests and
tools/bench_train.py (dev-only; torch is not a runtime dependency).

State-dict names are the authors' (``vision_model.*``, ``fc_positions``,
``transformer_block{1,2,3}.attention_layer.{q,k,v,out}_proj``, ``layer_norm1``, ``mlp_layer``,
``layer_norm2``, ``bn_vision``, ``fc1``, ``fc2``, ``cls_token``). The backbone is a transformers
Dinov2Model here; its CLS output plays the role of Meta's hub model's.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _rope(x):
  """Rotary embedding over the token index, rotate-half convention, base 10000."""
  length, dim = x.shape[-2], x.shape[-1]
  inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
  angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
  angles = torch.cat([angles, angles], dim=-1)
  half = dim // 2
  rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
  return x * angles.cos() + rotated * angles.sin()


class Attention(nn.Module):

  def __init__(self, width, dropout):
    super().__init__()
    self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
    self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)
    self.dropout = nn.Dropout(dropout)
    self.weights = None

  def forward(self, x):
    q, k = _rope(self.q_proj(x)), _rope(self.k_proj(x))
    probs = self.dropout(F.softmax(q @ k.transpose(-2, -1) / math.sqrt(x.shape[-1]), dim=-1))
    self.weights = probs
    return self.out_proj(probs @ self.v_proj(x))


class Block(nn.Module):

  def __init__(self, width, dropout):
    super().__init__()
    self.attention_layer = Attention(width, dropout)
    self.layer_norm1 = nn.LayerNorm(width)
    self.mlp_layer = nn.Linear(width, width)
    self.layer_norm2 = nn.LayerNorm(width)

  def forward(self, x):
    h = self.layer_norm1(self.attention_layer(x) + x)
    return self.layer_norm2(F.relu(self.mlp_layer(h)) + h)


def sine_embedding(pos, dims=64):
  dim_t = 10000 ** (2 * (torch.arange(dims, dtype=torch.float32) // 2) / dims)

  def one(c):
    p = c[..., None] * 2 * math.pi / dim_t
    return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

  return torch.cat([one(pos[..., 1]), one(pos[..., 0]), one(pos[..., 2]), one(pos[..., 3])], -1)


class ReferenceAttend(nn.Module):

  def __init__(self, vision_model, vision_width, pool="anchor", pool_attn_block=3, dropout=0.25):
    super().__init__()
    width = vision_width + 256
    self.vision_model = vision_model
    self.fc_positions = nn.Linear(256, 256)
    self.transformer_block1 = Block(width, dropout)
    self.transformer_block2 = Block(width, dropout)
    self.transformer_block3 = Block(width, dropout)
    self.bn_vision = nn.BatchNorm1d(width)
    self.fc1, self.fc2 = nn.Linear(width, 256), nn.Linear(256, 1)
    self.dropout = nn.Dropout(dropout)
    self.pool, self.pool_attn_block = pool, pool_attn_block
    self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, width)) if pool == "cls" else None

  def forward(self, crops, positions):
    """crops (B, K, 3, S, S); positions (B, K, 4) normalised boxes."""
    b, k = crops.shape[:2]
    cls = self.vision_model(pixel_values=crops.flatten(0, 1)).last_hidden_state[:, 0]
    x = torch.cat([cls.view(b, k, -1), self.fc_positions(sine_embedding(positions))], dim=2)
    if self.cls_token is not None:
      x = torch.cat([x, self.cls_token.expand(b, -1, -1)], dim=1)
    blocks = (self.transformer_block1, self.transformer_block2, self.transformer_block3)
    for block in blocks:
      x = block(x)
    rois = x[:, :k]
    if self.pool == "anchor":
      pooled = rois[:, 0]
    elif self.pool == "avg":
      pooled = rois.mean(1)
    elif self.pool == "attn":
      pooled = (blocks[self.pool_attn_block - 1].attention_layer.weights[:, 0, :k, None] * rois).sum(1)
    else:
      pooled = x[:, -1]
    logits = self.fc2(F.relu(self.fc1(self.dropout(self.bn_vision(pooled))))).view(-1)
    return logits, rois


def randomize_(module, seed=0):
  """Every parameter and BatchNorm statistic random, so any mapping error shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))
    for m in module.modules():
      if isinstance(m, nn.BatchNorm1d):
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
  return module
