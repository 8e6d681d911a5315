"""The RoI aggregator: post-LN single-head transformer blocks with RoPE over the RoI index.

Per block, as in the reference: ``h = LN1(attn(x) + x)``, then ``out = LN2(relu(W h) + h)``.
The attention has one head of the full width, rotary position embedding (rotate-half
convention) on q and k after their projections, scores scaled by 1/sqrt(width), and dropout
on the attention probabilities. Module names follow the reference's state dict
(``attention_layer.{q,k,v,out}_proj``, ``layer_norm1``, ``mlp_layer``, ``layer_norm2``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def rope_tables(length: int, dim: int, base: float = 10000.0) -> tuple[jax.Array, jax.Array]:
  """(length, dim) cos and sin of ``t * inv_freq``, the frequencies repeated twice."""
  inv_freq = 1.0 / base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)


class SingleHeadAttention(nnx.Module):

  def __init__(self, width: int, dropout: float, *, rngs: nnx.Rngs, dtype=jnp.float32):
    if width % 2:
      raise ValueError(f"RoPE needs an even width, got {width}.")
    linear = lambda: nnx.Linear(width, width, dtype=dtype, rngs=rngs)
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = linear(), linear(), linear(), linear()
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, L, E) -> (output, attention probabilities (B, L, L) after dropout)."""
    cos, sin = rope_tables(x.shape[1], x.shape[2])
    q = apply_rope(self.q_proj(x), cos, sin)
    k = apply_rope(self.k_proj(x), cos, sin)
    v = self.v_proj(x)
    scores = jnp.einsum("bqe,bke->bqk", q, k) / math.sqrt(x.shape[-1])
    probs = self.dropout(jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(x.dtype))
    return self.out_proj(jnp.einsum("bqk,bke->bqe", probs, v)), probs


class AggregatorBlock(nnx.Module):

  def __init__(self, width: int, dropout: float, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.attention_layer = SingleHeadAttention(width, dropout, rngs=rngs, dtype=dtype)
    self.layer_norm1 = nnx.LayerNorm(width, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
    self.mlp_layer = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
    self.layer_norm2 = nnx.LayerNorm(width, epsilon=1e-5, use_fast_variance=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    attended, probs = self.attention_layer(x)
    h = self.layer_norm1(attended + x)
    return self.layer_norm2(jax.nn.relu(self.mlp_layer(h)) + h), probs
