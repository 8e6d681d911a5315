"""The NNX DINOv2 equals transformers' PyTorch Dinov2 on the same random weights."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attend_jax.convert import dinov2 as conv
from attend_jax.models import vit
from torch_refs import hf_dinov2, hf_state_numpy, run_hf, use_meta_v1_interpolation

ATOL = 1e-4


def _ours(hf_model, variant="vits14", registers=False, interp=None, **overrides):
  meta, fmt = conv.to_meta_names(hf_state_numpy(hf_model))
  grid = int(round((meta["pos_embed"].shape[1] - 1) ** 0.5))
  cfg = vit.config_for(variant, registers, pretrained_grid=grid,
                       pos_embed_interp=interp or conv.DEFAULT_INTERP[(fmt, registers)],
                       **overrides)
  conv.check_state_dict(meta, cfg, "test")
  return conv.model_from_params(cfg, conv.meta_to_params(meta, cfg))


def _images(size, batch=2, seed=0):
  h, w = size if isinstance(size, tuple) else (size, size)
  return np.random.default_rng(seed).normal(size=(batch, h, w, 3)).astype(np.float32)


def _compare(hf_model, ours, images, num_registers):
  ref = run_hf(hf_model, images)
  cls, aux = nnx.jit(lambda m, x: m(x))(ours, images)  # Weights as arguments, not constants.
  np.testing.assert_allclose(cls, ref[:, 0], atol=ATOL, rtol=0)
  np.testing.assert_allclose(aux["patch_tokens"], ref[:, 1 + num_registers:], atol=ATOL, rtol=0)
  np.testing.assert_allclose(aux["register_tokens"], ref[:, 1:1 + num_registers], atol=ATOL,
                             rtol=0)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "reg4"])
def vits14_pair(request):
  hf_model = hf_dinov2(registers=request.param)
  return hf_model, _ours(hf_model, registers=request.param), request.param


@pytest.mark.parametrize("size", [518, 448])
def test_vits14_matches_transformers(vits14_pair, size):
  hf_model, ours, registers = vits14_pair
  _compare(hf_model, ours, _images(size), 4 if registers else 0)


def test_swiglu_mlp_of_vitg_matches_transformers():
  hf_model = hf_dinov2(width=96, depth=2, heads=4, swiglu=True, image_size=224)
  ours = _ours(hf_model, "vitg14", width=96, depth=2, num_heads=4)
  assert isinstance(ours.blocks[0].mlp, vit.SwiGLU)
  _compare(hf_model, ours, _images(224), 0)


def test_meta_v1_resize_matches_meta_model_at_448():
  hf_model = hf_dinov2(depth=2)
  use_meta_v1_interpolation(hf_model)
  ours = _ours(hf_model, interp="meta_v1", depth=2)
  _compare(hf_model, ours, _images(448), 0)


def test_non_square_input_and_last_block_attention():
  hf_model = hf_dinov2(width=64, depth=2, heads=4, image_size=224, registers=True)
  hf_model.set_attn_implementation("eager")
  ours = _ours(hf_model, registers=True, width=64, depth=2, num_heads=4)
  images = _images((154, 210))
  _compare(hf_model, ours, images, 4)
  import torch

  with torch.no_grad():
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    ref = hf_model(pixel_values=pixels, output_attentions=True).attentions[-1].numpy()
  _, aux = ours(images, return_attention=True)
  assert aux["attention"].shape == (2, 4, 1 + 4 + 11 * 15, 1 + 4 + 11 * 15)
  np.testing.assert_allclose(aux["attention"], ref, atol=1e-5, rtol=0)


def test_size_not_multiple_of_patch_is_rejected():
  model = vit.create(vit.ViTConfig(width=32, depth=1, num_heads=2, pretrained_grid=4))
  with pytest.raises(ValueError, match="multiple of the patch size 14"):
    model(jnp.zeros((1, 50, 56, 3)))


# DINOv2's hub models as Meta's code builds them: width, depth and the MLP's hidden width
# (4 x width; g/14's SwiGLU: 2/3 of that, rounded up to a multiple of 8, 6144 -> 4096).
META_ARCHITECTURE = {"vits14": (384, 12, 1536, False), "vitb14": (768, 12, 3072, False),
                     "vitl14": (1024, 24, 4096, False), "vitg14": (1536, 40, 4096, True)}


def _meta_shapes(variant: str, registers: bool) -> dict[str, tuple[int, ...]]:
  """The tensors of Meta's state dict (no mask_token) on the 518 px pretraining grid."""
  w, depth, hidden, swiglu = META_ARCHITECTURE[variant]
  shapes = {"cls_token": (1, 1, w), "pos_embed": (1, 1 + 37 * 37, w),
            "patch_embed.proj.weight": (w, 3, 14, 14), "patch_embed.proj.bias": (w,),
            "norm.weight": (w,), "norm.bias": (w,)}
  if registers:
    shapes["register_tokens"] = (1, 4, w)
  mlp = ({"w12.weight": (2 * hidden, w), "w12.bias": (2 * hidden,), "w3.weight": (w, hidden),
          "w3.bias": (w,)} if swiglu else
         {"fc1.weight": (hidden, w), "fc1.bias": (hidden,), "fc2.weight": (w, hidden),
          "fc2.bias": (w,)})
  block = {"norm1.weight": (w,), "norm1.bias": (w,), "attn.qkv.weight": (3 * w, w),
           "attn.qkv.bias": (3 * w,), "attn.proj.weight": (w, w), "attn.proj.bias": (w,),
           "ls1.gamma": (w,), "norm2.weight": (w,), "norm2.bias": (w,), "ls2.gamma": (w,),
           **{f"mlp.{k}": v for k, v in mlp.items()}}
  for i in range(depth):
    shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
  return shapes


@pytest.mark.parametrize("variant", vit.VARIANTS)
@pytest.mark.parametrize("registers", [False, True])
def test_every_variant_has_the_shapes_of_meta_checkpoints(variant, registers):
  cfg = vit.config_for(variant, registers)
  params = nnx.to_flat_state(nnx.state(vit.abstract(cfg), nnx.Param))
  # Our layout transposes and reshapes some tensors (kernels are (in, out)), so what must hold
  # is tensor for tensor: the same sizes.
  sizes = sorted(int(np.prod(v.shape)) for _, v in params)
  expected = _meta_shapes(variant, registers)
  assert sizes == sorted(int(np.prod(s)) for s in expected.values())
  ours = sum(sizes)
  # Published sizes of the hub models without mask_token: exact for S and B, and in millions
  # as timm's model cards round them for L and g.
  published = {"vits14": 22.056192, "vitb14": 86.579712, "vitl14": 304.37, "vitg14": 1136.48}
  tolerance = 1e-6 if variant in ("vits14", "vitb14") else 0.005
  ours_without_registers = (ours - (4 * cfg.width if registers else 0)) / 1e6
  assert abs(ours_without_registers - published[variant]) <= tolerance


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
  cfg = vit.ViTConfig(width=64, depth=2, num_heads=4, pretrained_grid=4)
  f32 = vit.create(cfg, seed=3)
  bf16 = vit.create(vit.ViTConfig(**{**cfg.__dict__, "dtype": jnp.bfloat16}), seed=3)
  x = _images(56)
  a, _ = f32(x)
  b, _ = bf16(x)
  assert b.dtype == jnp.bfloat16
  assert np.abs(np.asarray(a) - np.asarray(b, np.float32)).max() < 0.1


def _max_fusion_operands(depth: int) -> int:
  cfg = vit.config_for("vits14", width=32, depth=depth, num_heads=2, pretrained_grid=2)
  graphdef, params, rest = nnx.split(vit.create(cfg), nnx.Param, ...)
  loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p, rest)(x)[0] ** 2)
  hlo = jax.jit(jax.grad(loss)).lower(params, jnp.ones((2, 28, 28, 3))).compile().as_text()
  fusions = [line.split(" fusion(", 1)[1].split(")", 1)[0] for line in hlo.splitlines()
             if " fusion(" in line]
  return max(f.count("%") for f in fusions)


def test_backward_fusions_do_not_grow_with_depth():
  # Without residual_barrier, XLA:CPU recomputed the residual stream's gradient (a sum over every
  # later block) inside each block's backward fusions: their operands grew by 4 per block.
  assert _max_fusion_operands(8) == _max_fusion_operands(3)


def test_linear_layers_are_nnx_linear_and_their_weight_gradients_contract_one_axis():
  # The same layer as nnx.Linear, on a (B, N, C) input: output and gradients.
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  ours = vit.Linear(8, 12, rngs=nnx.Rngs(0))
  plain = nnx.Linear(8, 12, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6, atol=1e-6)
  grads = [nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(m) for m in (ours, plain)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # In the ViT's train step no matmul contracts over two axes: with nnx.Linear's (B, N, C)
  # matmuls each weight gradient contracted over B and N, which XLA:CPU runs ~7 % slower.
  cfg = vit.config_for("vits14", width=32, depth=2, num_heads=2, pretrained_grid=2)
  graphdef, params, rest = nnx.split(vit.create(cfg), nnx.Param, ...)
  loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p, rest)(x)[0] ** 2)
  text = jax.jit(jax.grad(loss)).lower(params, jnp.ones((2, 28, 28, 3))).as_text()
  dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
  assert len(dots) >= 2 * 4 * cfg.depth  # Each linear's forward and two gradients at least.
  contracting = [re.search(r"contracting_dims = (\[[^]]*\])", line)[1] for line in dots]
  assert all("," not in c for c in contracting), contracting


def test_gelu_is_the_exact_gelu_and_its_derivative():
  x = jnp.linspace(-8.0, 8.0, 4001)
  np.testing.assert_allclose(vit.gelu(x), jax.nn.gelu(x, approximate=False), atol=1e-6, rtol=0)
  grad = jax.vmap(jax.grad(vit.gelu))(x)
  want = jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(x)
  np.testing.assert_allclose(grad, want, atol=1e-6, rtol=0)
  x16 = x.astype(jnp.bfloat16)
  assert vit.gelu(x16).dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(vit.gelu(x16), np.float32),
                             jax.nn.gelu(x16.astype(jnp.float32), approximate=False),
                             atol=0.02, rtol=0.01)


def test_residual_barrier_is_the_identity_and_keeps_a_non_finite_gradient():
  x = jnp.arange(6.0).reshape(2, 3)
  f = lambda x, c: jnp.sum(c * vit.residual_barrier(x) ** 2)
  np.testing.assert_array_equal(vit.residual_barrier(x), x)
  np.testing.assert_array_equal(jax.jit(jax.grad(f))(x, 1.0), 2 * x)
  assert not np.isfinite(jax.jit(jax.grad(f))(x, jnp.inf)).any()


def _grads_and_saved_bytes(remat: str):
  """The gradients of a small loss, and the bytes the forward keeps for the backward pass (the
  pullback's residuals, as jax.vjp holds them: what remat changes, on any backend; XLA:CPU's
  own buffer figures cannot show it, as it drops the optimisation barriers that keep the
  recomputation apart)."""
  cfg = vit.config_for("vits14", width=64, depth=3, num_heads=2, pretrained_grid=4, remat=remat)
  graph, state = nnx.split(vit.create(cfg))
  images = _images(112, batch=4)

  def loss(state, images):
    cls, aux = nnx.merge(graph, state)(images)
    return jnp.sum(jnp.sin(cls)) + jnp.mean(aux["patch_tokens"] ** 2)

  _, pullback = jax.jit(lambda s, x: jax.vjp(loss, s, x))(state, images)
  grads = jax.jit(jax.grad(loss))(state, images)
  return grads, sum(x.nbytes for x in jax.tree.leaves(pullback))


def test_remat_leaves_gradients_unchanged_and_keeps_fewer_activations():
  none, none_bytes = _grads_and_saved_bytes("none")
  dots, dots_bytes = _grads_and_saved_bytes("dots")
  full, full_bytes = _grads_and_saved_bytes("full")
  for grads in (dots, full):
    for a, b in zip(jax.tree.leaves(none), jax.tree.leaves(grads), strict=True):
      # Recomputed in other fusions, a sum of terms as large as the array's largest rounds
      # differently: float32 rounding of that scale, not of each (cancelled) element.
      np.testing.assert_allclose(a, b, atol=1e-6 * max(1.0, float(np.abs(a).max())), rtol=1e-5)
  assert full_bytes < dots_bytes < none_bytes, (full_bytes, dots_bytes, none_bytes)


def test_an_unknown_remat_policy_is_refused():
  model = vit.create(vit.config_for("vits14", width=32, depth=1, num_heads=2, pretrained_grid=2,
                                    remat="some"))
  with pytest.raises(ValueError, match="model.remat must be one of"):
    model(_images(28))


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_scanned_blocks_give_the_loop_s_outputs_and_gradients_from_one_compiled_block(remat):
  cfg = vit.config_for("vits14", width=64, depth=3, num_heads=2, pretrained_grid=4, remat=remat)
  graph, state = nnx.split(vit.create(cfg))
  scanned_graph, _ = nnx.split(vit.create(dataclasses.replace(cfg, scan_blocks=True)))
  images = _images(56, batch=2)

  def loss(graph, state, images):
    cls, aux = nnx.merge(graph, state)(images, return_attention=True)
    return jnp.sum(jnp.sin(cls)) + jnp.mean(aux["attention"] ** 2)

  looped = jax.jit(jax.value_and_grad(functools.partial(loss, graph)))
  scanned = jax.jit(jax.value_and_grad(functools.partial(loss, scanned_graph)))
  (a, grads_a), (b, grads_b) = looped(state, images), scanned(state, images)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  for x, y in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True):
    np.testing.assert_allclose(x, y, atol=1e-6 * max(1.0, float(np.abs(x).max())), rtol=1e-5)
  # The scan holds the first two blocks (the last returns its attention): the program has one
  # block's matmuls fewer than the loop's.
  dots = lambda f: f.lower(state, images).as_text().count("stablehlo.dot_general")
  assert dots(scanned) < dots(looped), (dots(scanned), dots(looped))
