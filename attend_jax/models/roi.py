"""On-device RoI crops and box position embeddings, with the reference's exact semantics.

The reference crops each RoI on the host, every epoch: a square of side ``max(w, h)`` grown by
20 px, zero where it leaves the image, resized to 448 x 448 with antialiased bilinear
(torchvision ``Resize(antialias=True)``), repeated to 3 channels and ImageNet-normalised.

Here the crop and the resize are one linear map per axis. For each RoI we build the (S, H)
row-weight and (S, W) column-weight matrices of torch's antialiased bilinear filter over the
square crop, with rows and columns outside the image contributing zeros (they are zero pixels
of the crop, so they still count in the normalisation). The RoI is then ``Wy @ image @ Wx.T``:
static shapes, batched over RoIs and images, jit-compiled, no host work per RoI.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

CROP_PADDING = 20.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def square_crop(boxes: jax.Array, padding: float = CROP_PADDING) -> tuple[jax.Array, jax.Array,
                                                                            jax.Array]:
  """(…, 4) ``cx cy w h`` -> (x0, y0, size): Python ``int()`` truncation, as the reference."""
  side = jnp.maximum(boxes[..., 2], boxes[..., 3])
  x0 = jnp.trunc(boxes[..., 0] - side / 2 - padding)
  y0 = jnp.trunc(boxes[..., 1] - side / 2 - padding)
  size = jnp.trunc(side + 2 * padding)
  return x0, y0, jnp.maximum(size, 1.0)


def _axis_weights(start: jax.Array, size: jax.Array, extent: jax.Array, out_size: int,
                  in_size: int, num_taps: int) -> jax.Array:
  """(out_size, in_size) antialiased-bilinear weights from image pixels to one crop axis.

  ``start`` and ``size`` place the crop on this axis; ``extent`` is the image's real length.
  Like torch, each output pixel's triangle taps are normalised over the crop's pixels; taps
  outside the image are zeros of the crop, so they count in the sum but carry no pixel.
  """
  scale = size / out_size  # Crop pixels per output pixel.
  support = jnp.maximum(scale, 1.0)  # The triangle widens when downsampling (antialias).
  center = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale  # In crop coordinates.
  first = jnp.floor(center - support)
  taps = first[:, None] + jnp.arange(num_taps, dtype=jnp.float32)[None, :]  # Crop coordinates.
  w = jnp.maximum(0.0, 1.0 - jnp.abs(taps + 0.5 - center[:, None]) / support)
  w = jnp.where((taps >= 0) & (taps < size), w, 0.0)
  w = w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-12)
  pixel = (taps + start).astype(jnp.int32)
  w = jnp.where((pixel >= 0) & (pixel < extent), w, 0.0)
  one_hot = pixel[:, :, None] == jnp.arange(in_size)[None, None, :]
  return jnp.sum(jnp.where(one_hot, w[:, :, None], 0.0), axis=1)


def crop_rois(image: jax.Array, image_hw: jax.Array, boxes: jax.Array, out_size: int,
              padding: float = CROP_PADDING) -> jax.Array:
  """RoI crops of one image.

  Args:
    image: (H, W) float grey levels in [0, 1]; pixels beyond ``image_hw`` are ignored.
    image_hw: (2,) the real height and width inside the padded buffer.
    boxes: (K, 4) ``cx cy w h`` in image pixels.
    out_size: S, the side of each crop.

  Returns:
    (K, S, S) float32 crops.
  """
  h, w = image.shape
  x0, y0, size = square_crop(boxes.astype(jnp.float32), padding)
  # Static tap count: a crop is at most the padded image plus its padding on each side.
  max_size = max(h, w) + 2 * padding
  size = jnp.minimum(size, max_size)
  num_taps = int(math.ceil(2 * max(1.0, max_size / out_size))) + 2
  rows = jax.vmap(lambda s, n: _axis_weights(s, n, image_hw[0], out_size, h, num_taps))(y0, size)
  cols = jax.vmap(lambda s, n: _axis_weights(s, n, image_hw[1], out_size, w, num_taps))(x0, size)
  hi = jax.lax.Precision.HIGHEST
  tmp = jnp.einsum("kyh,hw->kyw", rows, image.astype(jnp.float32), precision=hi)
  return jnp.einsum("kyw,kxw->kyx", tmp, cols, precision=hi)


def normalize_rois(crops: jax.Array) -> jax.Array:
  """(…, S, S) grey crops in [0, 1] -> (…, S, S, 3) ImageNet-normalised, channels last."""
  mean = jnp.asarray(IMAGENET_MEAN, crops.dtype)
  std = jnp.asarray(IMAGENET_STD, crops.dtype)
  return (crops[..., None] - mean) / std


def box_positions(boxes: jax.Array, image_hw: jax.Array) -> jax.Array:
  """(…, 4) ``cx cy w h`` -> (cx/W, cy/H, side/W, side/H); the crop padding is not included."""
  hw = image_hw.astype(jnp.float32)  # (..., 2), broadcastable against boxes[..., 0].
  h, w = hw[..., 0], hw[..., 1]
  side = jnp.maximum(boxes[..., 2], boxes[..., 3])
  return jnp.stack([boxes[..., 0] / w, boxes[..., 1] / h, side / w, side / h], axis=-1)


def sine_embedding(positions: jax.Array, dims: int = 64, temperature: float = 10000.0
                   ) -> jax.Array:
  """DAB-DETR sine embedding of (…, 4) positions -> (…, 4 * dims), in (y, x, w, h) order.

  Per coordinate: ``p = c * 2π / 10000 ** (2 * (i // 2) / dims)``, then the interleave
  ``[sin p0, cos p1, sin p2, cos p3, …]``.
  """
  i = jnp.arange(dims, dtype=jnp.float32)
  dim_t = temperature ** (2 * (i // 2) / dims)
  p = positions[..., None].astype(jnp.float32) * (2 * math.pi) / dim_t  # (…, 4, dims)
  even = jnp.arange(dims) % 2 == 0
  emb = jnp.where(even, jnp.sin(p), jnp.cos(p))
  x, y, w, h = emb[..., 0, :], emb[..., 1, :], emb[..., 2, :], emb[..., 3, :]
  return jnp.concatenate([y, x, w, h], axis=-1)
