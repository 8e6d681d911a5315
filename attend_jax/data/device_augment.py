"""The batch as the accelerator sees it: float images, and the augmentations that run there,
inside the jitted step, from host-drawn factors."""

import jax.numpy as jnp


def valid_mask(image_hw: jnp.ndarray, size: int) -> jnp.ndarray:
  """(B, S, S) bool: True on each image's real pixels, False on the padding."""
  rows = jnp.arange(size)[None, :, None] < image_hw[:, 0, None, None]
  cols = jnp.arange(size)[None, None, :] < image_hw[:, 1, None, None]
  return rows & cols


def intensity_jitter(images: jnp.ndarray, image_hw: jnp.ndarray, brightness: jnp.ndarray,
                     contrast: jnp.ndarray) -> jnp.ndarray:
  """torchvision's ColorJitter(brightness, contrast) on grey (B, S, S) images in [0, 1].

  Brightness scales the pixels; contrast blends with the image's mean grey level, taken over the
  real pixels only (padding excluded). Results are clipped to [0, 1] after each step, and the
  padding stays 0.
  """
  mask = valid_mask(image_hw, images.shape[-1])
  x = jnp.clip(images * brightness[:, None, None], 0.0, 1.0)
  count = jnp.maximum(jnp.sum(mask, axis=(1, 2)), 1)
  mean = jnp.sum(jnp.where(mask, x, 0.0), axis=(1, 2)) / count
  x = jnp.clip(mean[:, None, None] + contrast[:, None, None] * (x - mean[:, None, None]), 0.0, 1.0)
  return jnp.where(mask, x, 0.0)


def images(batch: dict, train: bool) -> jnp.ndarray:
  """A batch's uint16 breast crops as (B, S, S) float32 in [0, 1], jittered when training."""
  x = batch["image"].astype(jnp.float32) / 65535.0
  if train:
    x = intensity_jitter(x, batch["image_hw"], batch["brightness"], batch["contrast"])
  return x
