"""Position-embedding resizing that reproduces each DINOv2 source bit-for-bit.

The pretrained position embeddings live on a fixed grid (37 x 37 at 518 px). Each upstream
implementation resizes them to another grid with a *different* bicubic algorithm, and at 448 px
the variants disagree by up to 0.07 in the output features, so loading a checkpoint means using
its own algorithm:

- ``"meta_v1"``: Meta's v1 hub models (``dinov2_vit*14``), the ones the paper used.
  ``F.interpolate(mode="bicubic", antialias=False, scale_factor=((h0 + 0.1) / M, (w0 + 0.1) / M))``.
  The +0.1 offset changes the sampling positions, not only the output size.
- ``"antialias"``: Meta's, timm's and transformers' register models.
  ``F.interpolate(mode="bicubic", antialias=True, size=(h0, w0))``.
- ``"hf_v1"``: ``transformers.Dinov2Model``.
  ``F.interpolate(mode="bicubic", antialias=False, size=(h0, w0))``.

Bicubic resizing is separable and linear, so each algorithm is a pair of (out, in) matrices
built once in numpy from the grid sizes; applying them is two tiny matmuls inside the model, and
gradients reach the native-resolution parameter exactly as in PyTorch.
"""

from __future__ import annotations

import functools
import math

import numpy as np

POS_EMBED_INTERPOLATIONS = ("meta_v1", "antialias", "hf_v1")

# torch's plain bicubic uses a = -0.75; its antialiased path uses a = -0.5 (the PIL kernel).
_A_PLAIN = -0.75
_A_ANTIALIAS = -0.5


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _plain_bicubic_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
  """torch ``upsample_bicubic2d`` along one axis, ``align_corners=False``.

  ``scale`` is input/output (torch uses 1/scale_factor when a scale factor is given).
  """
  # torch computes the sampling position as one fused multiply-add in float32; rounding the
  # exact value once to float32 reproduces it (a two-step float32 version is off by 1e-5).
  dst = np.arange(out_size, dtype=np.float64)
  src = np.float32(np.float64(np.float32(scale)) * (dst + 0.5) - 0.5).astype(np.float64)
  base = np.floor(src)  # Not clamped at 0: cubic reads clamped neighbours instead.
  t = src - base
  weights = np.zeros((out_size, in_size), dtype=np.float64)
  rows = np.arange(out_size)
  for offset in range(-1, 3):
    index = np.clip(base.astype(np.int64) + offset, 0, in_size - 1)
    np.add.at(weights, (rows, index), _cubic(t - offset, _A_PLAIN))
  return weights


def _antialias_bicubic_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
  """torch ``_upsample_bicubic2d_aa`` along one axis (PIL-style support and normalisation).

  Positions and weights follow torch's float32 arithmetic step by step; float64 here would
  drift by 1e-5 from torch when upsampling.
  """
  f32 = np.float32
  scale = f32(scale)
  support = f32(2.0) * scale if scale >= 1.0 else f32(2.0)
  invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
  weights = np.zeros((out_size, in_size), dtype=np.float64)
  for i in range(out_size):
    center = f32(scale * f32(i + 0.5))
    # C++ static_cast<int64_t> truncates toward zero.
    xmin = max(math.trunc(float(center - support + f32(0.5))), 0)
    xmax = min(math.trunc(float(center + support + f32(0.5))), in_size)
    taps = np.arange(xmin, xmax, dtype=f32)
    w = _cubic(((taps - center + f32(0.5)) * invscale).astype(np.float64), _A_ANTIALIAS)
    w = w.astype(f32)
    total = w.sum(dtype=f32)
    weights[i, xmin:xmax] = w / total if total != 0 else w
  return weights


@functools.lru_cache(maxsize=64)
def resize_matrix(method: str, in_size: int, out_size: int) -> np.ndarray:
  """The (out_size, in_size) float64 matrix that resizes one axis of a position grid."""
  if method == "meta_v1":
    return _plain_bicubic_matrix(in_size, out_size, in_size / (out_size + 0.1))
  if method == "antialias":
    return _antialias_bicubic_matrix(in_size, out_size, in_size / out_size)
  if method == "hf_v1":
    return _plain_bicubic_matrix(in_size, out_size, in_size / out_size)
  raise ValueError(
      f"Unknown position-embedding interpolation {method!r}; expected one of"
      f" {POS_EMBED_INTERPOLATIONS}."
  )


def resize_pos_grid(grid: np.ndarray, out_hw: tuple[int, int], method: str) -> np.ndarray:
  """Resizes a (M, M, D) grid to (h, w, D) in numpy, for load-time use and tests."""
  in_h, in_w = grid.shape[:2]
  rows = resize_matrix(method, in_h, out_hw[0])
  cols = resize_matrix(method, in_w, out_hw[1])
  return np.einsum("oi,ijd,pj->opd", rows, grid.astype(np.float64), cols)
