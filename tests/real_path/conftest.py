"""The real-path tier: every shipped config's ``:tiny`` variant, from its dataset's on-disk layout
(tools/make_synthetic.py --layout), through the commands users run: tools/prepare_data.py,
``python -m attend_jax.main`` with a DINOv2 backbone that tools/convert_dinov2.py converted from
a Meta-format file made here, then evaluate and predict on the layout's DICOMs; the two-stage
configs after their detector. ``:tiny`` shrinks sizes only (tests/test_configs.py checks that),
so these runs take the path a user's run takes."""

import pytest
import torch

from configs import common
import flow
import torch_refs


@pytest.fixture(scope="session")
def backbone(tmp_path_factory) -> flow.Backbone:
  """A DINOv2 of the :tiny size with random weights, saved under Meta's hub names as
  ``dinov2_vitb14_pretrain.pth`` is, then converted by the CLI docs/backbone.md gives."""
  folder = tmp_path_factory.mktemp("backbone")
  size = common.TINY_VIT
  model = torch_refs.hf_dinov2(width=size["width"], depth=size["depth"], heads=size["num_heads"],
                               image_size=size["pretrained_grid"] * 14, seed=7)
  state = torch_refs.meta_state_from_hf(model)
  torch.save(state, folder / "dinov2_tiny_pretrain.pth")
  out = folder / "converted"
  flow.ok("tools/convert_dinov2.py", "--variant=vitb14", f"--width={size['width']}",
          f"--depth={size['depth']}", f"--num_heads={size['num_heads']}",
          f"--checkpoint={folder / 'dinov2_tiny_pretrain.pth'}", f"--out={out}")
  return flow.Backbone(out, {k: v.detach().numpy() for k, v in state.items()})
