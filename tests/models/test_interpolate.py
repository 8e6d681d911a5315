"""Position-embedding resizing equals torch's F.interpolate for each source's algorithm."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attend_jax.models import interpolate
from torch_refs import meta_v1_interpolate


def _grid(m, d=16, seed=0):
  return np.random.default_rng(seed).normal(size=(m, m, d)).astype(np.float32)


@pytest.mark.parametrize("out_hw", [(32, 32), (16, 20), (64, 48), (37, 37)])
def test_meta_v1_matches_meta_interpolate_call(out_hw):
  grid = _grid(37)
  pos = torch.from_numpy(np.concatenate([np.zeros((1, 16), np.float32), grid.reshape(-1, 16)]))
  expected = meta_v1_interpolate(pos[None], *out_hw)[0, 1:].numpy().reshape(*out_hw, 16)
  got = interpolate.resize_pos_grid(grid, out_hw, "meta_v1")
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_meta_v1_offset_changes_positions_not_only_size():
  grid = _grid(37)
  meta = interpolate.resize_pos_grid(grid, (32, 32), "meta_v1")
  plain = interpolate.resize_pos_grid(grid, (32, 32), "hf_v1")
  assert np.abs(meta - plain).max() > 1e-2


@pytest.mark.parametrize("method", ["antialias", "hf_v1"])
@pytest.mark.parametrize("m,out_hw", [(37, (32, 32)), (37, (16, 20)), (37, (64, 48)), (16, (37, 37))])
def test_size_based_methods_match_torch(method, m, out_hw):
  grid = _grid(m)
  x = torch.from_numpy(grid).permute(2, 0, 1)[None].contiguous()
  expected = F.interpolate(x, size=out_hw, mode="bicubic", align_corners=False,
                           antialias=method == "antialias")[0].permute(1, 2, 0).numpy()
  got = interpolate.resize_pos_grid(grid, out_hw, method)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_unknown_method_is_a_clear_error():
  with pytest.raises(ValueError, match="meta_v1"):
    interpolate.resize_matrix("bilinear", 37, 32)
