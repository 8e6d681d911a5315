"""RoI crops and box embeddings against the reference's PyTorch semantics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from attend_jax.models import roi
from torch_refs import reference_crop as _reference_crop


@pytest.mark.parametrize("box", [
    (150.3, 200.7, 180.0, 240.5),   # Inside, downsampled.
    (20.0, 30.0, 90.0, 50.0),       # Leaves the image at the top-left: zeros.
    (270.0, 380.0, 40.0, 30.0),     # Small: upsampled, leaves bottom-right.
    (150.0, 200.0, 300.0, 400.0),   # The whole image (the breast anchor).
])
@pytest.mark.parametrize("crop", sorted(roi.CROPS))
def test_crop_matches_reference_resize(box, crop):
  rng = np.random.default_rng(0)
  image = (rng.random((400, 300)) * 65535).astype(np.uint16)
  padded = np.zeros((512, 512), np.float32)
  padded[:400, :300] = image / 65535.0
  padded[400:, :] = 0.7  # Padding content must be ignored.
  out = jax.jit(roi.CROPS[crop], static_argnums=3)(
      jnp.asarray(padded), jnp.array([400, 300]), jnp.array([box]), 64)
  atol = {"dense": 2e-6, "bf16": 1e-2}[crop]
  np.testing.assert_allclose(np.asarray(out[0]), _reference_crop(image, box, 64), atol=atol)


def test_crop_is_batched_and_jittable():
  images = jnp.ones((2, 128, 128))
  boxes = jnp.array([[[64, 64, 50, 50], [10, 10, 20, 20]]] * 2, jnp.float32)
  hw = jnp.array([[128, 128], [100, 90]])
  f = jax.jit(jax.vmap(lambda im, h, b: roi.crop_rois(im, h, b, 32)))
  out = f(images, hw, boxes)
  assert out.shape == (2, 2, 32, 32)
  normalized = roi.normalize_rois(out)
  assert normalized.shape == (2, 2, 32, 32, 3)
  np.testing.assert_allclose(normalized[0, 0, 16, 16], (1 - np.array(roi.IMAGENET_MEAN))
                             / np.array(roi.IMAGENET_STD), rtol=1e-5)


def _reference_sine(pos, d_model=128):
  """The reference's gen_sineembed_for_position (DAB-DETR), for (N, 4) positions."""
  pos = torch.as_tensor(pos, dtype=torch.float32)
  scale = 2 * math.pi
  dim_t = torch.arange(d_model // 2, dtype=torch.float32)
  dim_t = 10000 ** (2 * (dim_t // 2) / (d_model // 2))

  def embed(c):
    p = c[:, None] * scale / dim_t
    return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

  return torch.cat((embed(pos[:, 1]), embed(pos[:, 0]), embed(pos[:, 2]), embed(pos[:, 3])), 1)


def test_sine_embedding_equals_reference():
  pos = np.random.default_rng(1).random((7, 4)).astype(np.float32)
  ours = roi.sine_embedding(jnp.asarray(pos))
  assert ours.shape == (7, 256)
  np.testing.assert_allclose(ours, _reference_sine(pos).numpy(), atol=1e-5)


def test_box_positions_normalise_by_width_and_height():
  pos = roi.box_positions(jnp.array([[50.0, 20.0, 10.0, 30.0]]), jnp.array([200, 100]))
  np.testing.assert_allclose(pos, [[0.5, 0.1, 0.3, 0.15]])


def test_make_rois_anchor_files_grid_and_padding():
  hw = jnp.array([[100, 80], [60, 40]])
  props = jnp.arange(2 * 3 * 5, dtype=jnp.float32).reshape(2, 3, 5) + 1
  mask = jnp.array([[True, True, False], [False, False, False]])
  whole = np.array([[40, 50, 80, 100], [20, 30, 40, 60]], np.float32)

  rois = np.asarray(roi.make_rois(hw, props, mask, "files", topk=4))
  np.testing.assert_array_equal(rois[:, 0], whole)
  # Two valid proposals are cycled in score order; none at all falls back on the whole image.
  np.testing.assert_array_equal(rois[0, 1:], np.asarray(props[0, [0, 1, 0], :4]))
  np.testing.assert_array_equal(rois[1, 1:], np.repeat(whole[1:], 3, 0))

  plain = np.asarray(roi.make_rois(hw, props, mask, "files", topk=3, anchor=False))
  np.testing.assert_array_equal(plain[0], np.asarray(props[0, [0, 1, 0], :4]))

  grid = np.asarray(roi.make_rois(hw, props, mask, "grid", topk=5, grid=2))
  np.testing.assert_array_equal(grid[0, 1], [20, 25, 40, 50])
  with pytest.raises(ValueError, match="topk=5"):
    roi.make_rois(hw, props, mask, "grid", topk=4, grid=2)
  with pytest.raises(ValueError, match="proposals are needed"):
    roi.make_rois(hw, props, mask, "files", topk=5, anchor=False)


def test_lesion_hits_by_coverage_and_by_iou():
  # One image, one 10 x 10 lesion at x 0..10, y 0..10; a second lesion slot that is masked off.
  lesions = jnp.array([[[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]]])
  mask = jnp.array([[True, False]])
  rois = jnp.array([[
      [5.0, 5.0, 10.0, 10.0],      # The lesion itself: coverage 1, IoU 1.
      [10.0, 5.0, 40.0, 40.0],     # Covers x 0..10 of it fully, y 0..10: coverage 1, IoU 100/1600.
      [12.5, 5.0, 5.0, 10.0],      # x 10..15: touches the edge only, coverage 0.
      [105.0, 105.0, 10.0, 10.0],  # On the masked-off slot: no hit at all.
      [2.5, 5.0, 5.0, 10.0],       # Left half: coverage 0.5, IoU 50/100.
  ]])
  iou = np.asarray(roi.lesion_iou(rois, lesions, mask))[0]
  np.testing.assert_allclose(iou, [1.0, 100 / 1600, 0.0, 0.0, 0.5], atol=1e-6)
  by_cover = np.asarray(roi.lesion_hits(rois, lesions, mask))[0]
  assert by_cover.tolist() == [True, True, False, False, True]
  by_iou = np.asarray(roi.lesion_hits(rois, lesions, mask, min_iou=0.3))[0]
  assert by_iou.tolist() == [True, False, False, False, True]
  no_lesions = roi.lesion_iou(rois, lesions, jnp.zeros_like(mask))
  assert not np.any(np.asarray(no_lesions))


def test_the_bf16_crop_multiplies_bf16_and_sums_in_float32_the_dense_one_at_highest():
  """What the accelerator is asked for, in the lowered program (XLA:CPU itself widens bf16)."""
  args = (jnp.zeros((256, 256)), jnp.array([256, 200]), jnp.array([[128, 128, 100, 80]],
                                                                 jnp.float32), 32)
  bf16 = jax.jit(roi.crop_rois_bf16, static_argnums=3).lower(*args).as_text()
  dots = [l for l in bf16.splitlines() if "dot_general" in l]
  assert len(dots) == 2 and all("bf16" in l and "-> tensor<" in l and "xf32>" in l.split("->")[-1]
                                for l in dots), dots
  dense = [l for l in jax.jit(roi.crop_rois, static_argnums=3).lower(*args).as_text()
           .splitlines() if "dot_general" in l]
  assert len(dense) == 2 and all("precision = [HIGHEST, HIGHEST]" in l and "bf16" not in l
                                 for l in dense), dense
