"""DINOv2 vision transformers (ViT-S/B/L/g, patch 14, optional registers) in Flax NNX.

Numerically this follows Meta's ``dinov2/models/vision_transformer.py``: pre-LN blocks with
LayerScale, fused qkv attention, exact-erf GELU (SwiGLU for g/14), LayerNorm eps 1e-6, and
register tokens inserted after the CLS token once position embeddings are added. Parameter
names follow Meta's so that checkpoint conversion stays a readable table.

Images are NHWC, already normalised, with height and width multiples of 14. Position
embeddings are stored on the pretrained grid and resized inside ``__call__`` with the source
model's own algorithm (see ``interpolate.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attend_jax.models import attention, interpolate

PATCH_SIZE = 14


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture of one DINOv2 backbone."""

  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp: str = "gelu"  # "gelu" (Mlp) or "swiglu" (SwiGLUFFNFused, g/14).
  mlp_ratio: float = 4.0
  num_registers: int = 0
  pretrained_grid: int = 37  # Position-embedding grid: 518 px / 14.
  pos_embed_interp: str = "meta_v1"
  layerscale_init: float = 1.0
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  # Queries per attention chunk; 0 computes all scores at once. Chunking bounds the score
  # matrix so it stays in cache on CPU, and changes nothing numerically.
  attention_chunk: int = 0
  attention: str = "auto"  # The kernel: attention.IMPLEMENTATIONS; "auto" picks per backend.
  # Rematerialisation of each block in the backward pass (REMAT_POLICIES): "none" keeps every
  # activation, "dots" keeps the matmul outputs and recomputes the rest (attention scores,
  # norms, GELU), "full" keeps only each block's input.
  remat: str = "none"
  # Run the blocks as one lax.scan over their stacked parameters: XLA compiles one block instead
  # of ``depth``, for a much shorter compile (ViT-g: 40 blocks). The parameters stay a list of
  # blocks (checkpoints and converted DINOv2 weights are unchanged); each step stacks them, one
  # copy of the backbone's weights in the compute dtype's memory.
  scan_blocks: bool = False

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    hidden = int(self.width * self.mlp_ratio)
    if self.mlp == "swiglu":
      hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    return hidden


_VARIANTS = {
    "vits14": dict(width=384, depth=12, num_heads=6),
    "vitb14": dict(width=768, depth=12, num_heads=12),
    "vitl14": dict(width=1024, depth=24, num_heads=16),
    "vitg14": dict(width=1536, depth=40, num_heads=24, mlp="swiglu"),
}
VARIANTS = tuple(_VARIANTS)


def config_for(variant: str, registers: bool = False, **overrides) -> ViTConfig:
  """The config of a Meta hub model, e.g. ``config_for("vitb14", registers=True)``.

  Meta's v1 models resize position embeddings with the +0.1 offset; the register models
  resize with antialiasing. ``overrides`` replaces any field (e.g. ``dtype``).
  """
  if variant not in _VARIANTS:
    raise ValueError(f"Unknown DINOv2 variant {variant!r}; expected one of {VARIANTS}.")
  fields = dict(_VARIANTS[variant])
  fields["num_registers"] = 4 if registers else 0
  fields["pos_embed_interp"] = "antialias" if registers else "meta_v1"
  fields.update(overrides)
  return ViTConfig(**fields)


def _sharded(init, names):
  # Annotation only: shardings are applied where the state is created under a mesh
  # (train/sharding.py), so the model also builds on one device with no mesh set.
  return nnx.with_partitioning(init, names, eager_sharding=False)


_TRUNC_NORMAL = nnx.initializers.truncated_normal(0.02)


class Linear(nnx.Linear):
  """nnx.Linear (same parameters) with the leading axes of its input merged into one.

  A (B, N, C) input contracts over one axis either way, but the weight gradient of the
  three-dimensional form contracts over two (B and N), and XLA:CPU lays that product out with
  transposed copies of the activations: the ViT-S/14 train step is ~7 % slower at 224 and
  448 px (tools/bench_vit.py). On accelerators the reshape is free.
  """

  def __call__(self, inputs, out_sharding=None):
    y = super().__call__(inputs.reshape(-1, inputs.shape[-1]), out_sharding)
    return y.reshape(*inputs.shape[:-1], y.shape[-1])


def _linear(din: int, dout: int, shard_out: bool, rngs: nnx.Rngs, dtype) -> nnx.Linear:
  # FSDP shards the wide side of each matrix; the mesh may have fsdp=1, which replicates.
  names = (None, "fsdp") if shard_out else ("fsdp", None)
  return Linear(din, dout, dtype=dtype, kernel_init=_sharded(_TRUNC_NORMAL, names), rngs=rngs)


class LayerNorm(nnx.LayerNorm):
  """nnx.LayerNorm (same parameters, same two-pass statistics) written out in plain jnp.

  On XLA:CPU flax's version made the ViT-S/14 train step ~25% slower; the forward is unchanged.
  """

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    centred = x32 - x32.mean(-1, keepdims=True)
    var = jnp.mean(centred * centred, -1, keepdims=True)
    y = centred * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
    return y.astype(self.dtype or x.dtype)


def _layer_norm(width: int, rngs: nnx.Rngs, dtype) -> nnx.LayerNorm:
  return LayerNorm(width, epsilon=1e-6, use_fast_variance=False, dtype=dtype, rngs=rngs)


class LayerScale(nnx.Module):

  def __init__(self, width: int, init_value: float):
    self.gamma = nnx.Param(jnp.full((width,), init_value, jnp.float32))

  def __call__(self, x):
    return x * self.gamma[...].astype(x.dtype)


@jax.custom_vjp
def residual_barrier(x):
  """The identity; in the backward pass its cotangent is materialised (a fusion boundary).

  The gradient of the residual stream is a sum over every later block. Unbarriered, XLA:CPU
  fuses that whole sum into each block's backward fusions and recomputes it there: the fusion at
  block i of 12 read 4 + 4 (12 - i) arrays, quadratic in depth, and the ViT-S/14 train step at
  224 px spent 13 % of its time in 24 such fusions (tools/bench_vit.py --profile).
  """
  return x


def _materialised(g):
  # XLA:CPU drops optimisation barriers before fusion, and folds a conditional whose branches
  # are the same; one on a value it cannot know at compile time, with branches that differ, is
  # a fusion boundary it keeps. The other branch only runs on a gradient that is already not
  # finite, and keeps it so.
  pred = jnp.isfinite(g.reshape(-1)[0])
  return jax.lax.cond(pred, lambda t: t, lambda t: jnp.full_like(t, jnp.nan), g)


residual_barrier.defvjp(lambda x: (x, None), lambda _, g: (_materialised(g),))


class Attention(nnx.Module):

  def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
    self.num_heads = cfg.num_heads
    self.chunk = cfg.attention_chunk
    self.implementation = cfg.attention
    self.qkv = _linear(cfg.width, 3 * cfg.width, True, rngs, cfg.dtype)
    self.proj = _linear(cfg.width, cfg.width, False, rngs, cfg.dtype)

  def __call__(self, x, return_weights: bool = False):
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if return_weights:
      weights = attention.attention_weights(q, k)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    else:
      weights = None
      out = attention.dot_product_attention(q, k, v, self.implementation, self.chunk)
    return self.proj(out.reshape(b, n, d)), weights


@jax.custom_jvp
def gelu(x):
  """The exact GELU, x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2, as Meta's nn.GELU().

  jax.nn.gelu(approximate=False) writes it with erfc, which XLA:CPU computes at half erf's
  rate, and its autodiff derivative evaluates the erfc again. This is the same function, with
  the derivative Phi(x) + x phi(x) written out: 2.6x faster forward and backward on a CPU
  (ViT-S/14's MLP at 448 px), equal to it within 6e-7.
  """
  x32 = x.astype(jnp.float32)
  return (x32 * _gelu_cdf(x32)).astype(x.dtype)


def _gelu_cdf(x32):
  return 0.5 * (1.0 + jax.lax.erf(x32 * (1.0 / np.sqrt(2.0))))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  x32 = x.astype(jnp.float32)
  cdf = _gelu_cdf(x32)
  pdf = jnp.exp(-0.5 * x32 * x32) * (1.0 / np.sqrt(2.0 * np.pi))
  return ((x32 * cdf).astype(x.dtype),
          ((cdf + x32 * pdf) * dx.astype(jnp.float32)).astype(dx.dtype))


class Mlp(nnx.Module):

  def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
    self.fc1 = _linear(cfg.width, cfg.mlp_hidden, True, rngs, cfg.dtype)
    self.fc2 = _linear(cfg.mlp_hidden, cfg.width, False, rngs, cfg.dtype)

  def __call__(self, x):
    return self.fc2(gelu(self.fc1(x)))


class SwiGLU(nnx.Module):
  """Meta's SwiGLUFFNFused: one packed projection for gate and value."""

  def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
    self.w12 = _linear(cfg.width, 2 * cfg.mlp_hidden, True, rngs, cfg.dtype)
    self.w3 = _linear(cfg.mlp_hidden, cfg.width, False, rngs, cfg.dtype)

  def __call__(self, x):
    gate, value = jnp.split(self.w12(x), 2, axis=-1)
    return self.w3(jax.nn.silu(gate) * value)


def batch_sharded(x):
  """Keeps activations split over the batch on a data x fsdp mesh, so that the partitioner
  gathers the fsdp-sharded weights instead of resharding activations; no-op without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "fsdp" not in mesh.axis_names or mesh.shape["fsdp"] == 1:
    return x
  if x.shape[0] % (mesh.shape["fsdp"] * mesh.shape.get("data", 1)):
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(("data", "fsdp")))


class Block(nnx.Module):

  def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
    self.norm1 = _layer_norm(cfg.width, rngs, cfg.dtype)
    self.attn = Attention(cfg, rngs)
    self.ls1 = LayerScale(cfg.width, cfg.layerscale_init)
    self.norm2 = _layer_norm(cfg.width, rngs, cfg.dtype)
    self.mlp = SwiGLU(cfg, rngs) if cfg.mlp == "swiglu" else Mlp(cfg, rngs)
    self.ls2 = LayerScale(cfg.width, cfg.layerscale_init)

  def __call__(self, x, return_weights: bool = False):
    barrier = residual_barrier if attention.backend() == "cpu" else lambda t: t
    x = barrier(batch_sharded(x))
    y, weights = self.attn(self.norm1(x), return_weights)
    x = barrier(x + self.ls1(y))
    x = x + self.ls2(self.mlp(self.norm2(x)))
    return batch_sharded(x), weights


REMAT_POLICIES = {
    "none": None,
    # Linear layers' outputs are dots without batch dimensions; attention's are batched.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def _block_forward(block: Block, x):
  return block(x)[0]


def _scanned_blocks(blocks: Sequence[Block], x, policy):
  """``blocks`` applied in turn to ``x`` as one ``lax.scan`` over their stacked state, each step
  rematerialised under ``policy`` (``REMAT_POLICIES``)."""
  graph, first = nnx.split(blocks[0])
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), first,
                         *(nnx.state(block) for block in blocks[1:]))

  def step(x, state):
    return _block_forward(nnx.merge(graph, state), x), None

  if policy is not None:  # None: remat "none", every activation kept.
    step = jax.checkpoint(step, policy=policy)
  return jax.lax.scan(step, x, stacked)[0]


class PatchEmbed(nnx.Module):
  """Conv(14, stride 14) as a matmul over flattened (row, col, channel) patches."""

  def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
    self.proj = _linear(PATCH_SIZE * PATCH_SIZE * 3, cfg.width, True, rngs, cfg.dtype)

  def __call__(self, images):
    b, h, w, c = images.shape
    gh, gw = h // PATCH_SIZE, w // PATCH_SIZE
    patches = images.reshape(b, gh, PATCH_SIZE, gw, PATCH_SIZE, c)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, PATCH_SIZE**2 * c)
    return self.proj(patches)


class DinoV2(nnx.Module):
  """A DINOv2 backbone. ``__call__`` returns ``(cls_token, aux)``.

  aux holds ``patch_tokens`` (B, h*w, D), ``register_tokens`` (B, R, D), both after the final
  norm, and with ``return_attention=True`` also ``attention`` (B, heads, T, T): the last block's
  attention probabilities over all T = 1 + R + h*w tokens.
  """

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, m = cfg.width, cfg.pretrained_grid
    self.patch_embed = PatchEmbed(cfg, rngs)
    self.cls_token = nnx.Param(1e-6 * jax.random.normal(rngs.params(), (1, 1, d)))
    self.pos_embed = nnx.Param(_TRUNC_NORMAL(rngs.params(), (1, 1 + m * m, d)))
    if cfg.num_registers:
      self.register_tokens = nnx.Param(
          1e-6 * jax.random.normal(rngs.params(), (1, cfg.num_registers, d))
      )
    else:
      self.register_tokens = None
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.depth)])
    self.norm = _layer_norm(d, rngs, cfg.dtype)

  def position_embedding(self, grid_hw: tuple[int, int]) -> jax.Array:
    """(1, 1 + h*w, D) position embeddings for a patch grid, resized like the source model."""
    pos = self.pos_embed[...]
    m = self.cfg.pretrained_grid
    if grid_hw == (m, m):
      return pos
    method = self.cfg.pos_embed_interp
    rows = interpolate.resize_matrix(method, m, grid_hw[0]).astype(np.float32)
    cols = interpolate.resize_matrix(method, m, grid_hw[1]).astype(np.float32)
    grid = pos[0, 1:].reshape(m, m, -1)
    resized = jnp.einsum(
        "oi,ijd,pj->opd", rows, grid, cols, precision=jax.lax.Precision.HIGHEST
    )
    return jnp.concatenate([pos[:, :1], resized.reshape(1, -1, pos.shape[-1])], axis=1)

  def __call__(self, images: jax.Array, return_attention: bool = False):
    b, h, w, _ = images.shape
    if h % PATCH_SIZE or w % PATCH_SIZE:
      raise ValueError(f"Image size {h}x{w} is not a multiple of the patch size {PATCH_SIZE}.")
    grid_hw = (h // PATCH_SIZE, w // PATCH_SIZE)
    dtype = self.cfg.dtype
    x = self.patch_embed(images.astype(dtype))
    cls = jnp.broadcast_to(self.cls_token[...], (b, 1, x.shape[-1])).astype(x.dtype)
    x = jnp.concatenate([cls, x], axis=1) + self.position_embedding(grid_hw).astype(dtype)
    num_reg = self.cfg.num_registers
    if num_reg:
      reg = jnp.broadcast_to(self.register_tokens[...], (b, num_reg, x.shape[-1]))
      x = jnp.concatenate([x[:, :1], reg.astype(dtype), x[:, 1:]], axis=1)
    if self.cfg.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat must be one of {tuple(REMAT_POLICIES)}, got"
                       f" {self.cfg.remat!r}.")
    policy = REMAT_POLICIES[self.cfg.remat]
    blocks = list(self.blocks)
    last = blocks.pop() if return_attention else None  # Returns its attention weights too.
    if self.cfg.scan_blocks and len(blocks) > 1:
      x = _scanned_blocks(blocks, x, policy)
    else:
      forward = _block_forward
      if self.cfg.remat != "none":
        forward = nnx.remat(_block_forward, policy=policy)
      for block in blocks:
        x = forward(block, x)
    weights = None
    if last is not None:
      x, weights = last(x, True)
    x = self.norm(x)
    aux = {"patch_tokens": x[:, 1 + num_reg :], "register_tokens": x[:, 1 : 1 + num_reg]}
    if weights is not None:
      aux["attention"] = weights
    return x[:, 0], aux


def create(cfg: ViTConfig, seed: int = 0) -> DinoV2:
  return DinoV2(cfg, rngs=nnx.Rngs(seed))


def abstract(cfg: ViTConfig) -> DinoV2:
  """A DinoV2 whose parameters are ShapeDtypeStructs: nothing is allocated."""
  return nnx.eval_shape(lambda: DinoV2(cfg, rngs=nnx.Rngs(0)))
