"""The backbone on a (data, fsdp) mesh of 8 simulated devices equals one device."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attend_jax.models import vit
from attend_jax.train import sharding

CFG = vit.ViTConfig(width=64, depth=2, num_heads=4, pretrained_grid=4, num_registers=4,
                    pos_embed_interp="antialias")


def _loss(model, images):
  cls, aux = model(images)
  return jnp.mean(cls**2) + jnp.mean(aux["patch_tokens"] ** 2)


def test_eight_devices_are_simulated():
  assert jax.device_count() == 8


@pytest.mark.slow
@pytest.mark.parametrize("scan_blocks", [False, True])
def test_fsdp_sharded_backbone_matches_one_device(scan_blocks):
  images = np.random.default_rng(0).normal(size=(8, 42, 56, 3)).astype(np.float32)
  single = vit.create(CFG, seed=7)  # Looped.
  ref_loss, ref_grads = nnx.value_and_grad(_loss)(single, images)
  ref_cls, _ = single(images)

  mesh = sharding.make_mesh(data=2, fsdp=4)
  with jax.set_mesh(mesh):
    cfg = dataclasses.replace(CFG, scan_blocks=scan_blocks)
    model = sharding.create_sharded(lambda: vit.create(cfg, seed=7), mesh)
    qkv = model.blocks[0].attn.qkv.kernel[...]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert qkv.addressable_shards[0].data.shape == (64, 3 * 64 // 4)
    fc2 = model.blocks[1].mlp.fc2.kernel[...]
    assert fc2.addressable_shards[0].data.shape == (256 // 4, 64)

    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, images):
      m = nnx.merge(graphdef, state)
      loss, grads = nnx.value_and_grad(_loss)(m, images)
      return m(images)[0], loss, grads

    batch = sharding.to_global({"images": images}, mesh)["images"]
    cls, loss, grads = step(state, batch)

  assert len(cls.sharding.device_set) == 8
  np.testing.assert_allclose(cls, ref_cls, atol=1e-5, rtol=0)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for (path, g), (_, r) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(ref_grads)):
    np.testing.assert_allclose(g[...], r[...], atol=1e-6, rtol=1e-4, err_msg=str(path))


def test_dimensions_the_axis_does_not_divide_are_replicated():
  mesh = sharding.make_mesh(data=1, fsdp=8)
  spec = sharding.fit_spec(jax.sharding.PartitionSpec(None, "fsdp"), (64, 12), mesh)
  assert spec == jax.sharding.PartitionSpec(None, None)
  with jax.set_mesh(mesh):
    model = sharding.create_sharded(
        lambda: vit.create(vit.ViTConfig(width=36, depth=1, num_heads=3, pretrained_grid=2)),
        mesh)
    out, _ = jax.jit(lambda s, x: nnx.merge(*s)(x))(nnx.split(model), jnp.zeros((1, 28, 28, 3)))
  assert out.shape == (1, 36)


def test_clear_errors_for_mesh_and_batch_sizes():
  with pytest.raises(ValueError, match="needs 12 devices; 8 are available"):
    sharding.make_mesh(data=3, fsdp=4)
  with pytest.raises(ValueError, match="fsdp=3 does not divide"):
    sharding.make_mesh(fsdp=3)
  mesh = sharding.make_mesh(data=-1, fsdp=2)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  with pytest.raises(ValueError, match="Batch size 6 is not divisible by the 8 devices"):
    sharding.to_global({"images": np.zeros((6, 14, 14, 3))}, mesh)


def _tiny_bf16_config(dtype="bfloat16"):
  from configs import vindr

  c = vindr.get_config("smoke")
  c.model.dtype = dtype
  c.model.vit_overrides.update({"width": 64, "depth": 2, "num_heads": 2})
  c.mesh.data, c.mesh.fsdp = 1, 8
  c.data.batch_size = c.data.eval_batch_size = 8
  c.data.image_size, c.model.roi_size = 128, 56
  return c


def _compile_trainer_step(config, options=None):
  """The trainer's own step (its state layout and shardings) compiled for config's mesh, and the
  warnings compiling it raised."""
  import warnings

  from attend_jax.train import memory, trainer

  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  with jax.set_mesh(mesh), warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = trainer.init_state(config, mesh, abstract=True)
    step = trainer.train_step_for(config, state, mesh)
    batch = memory.abstract_batch(config, mesh, config.data.batch_size)
    compiled = step.lower(state.params, state.stats, state.opt_state, state.rngs, 0,
                          batch).compile(options)
  return compiled, state, [str(w.message) for w in caught]


def _unusable_donations(messages):
  return [m for m in messages if "donated buffers were not usable" in m]


@pytest.mark.slow
def test_the_train_step_reuses_every_donated_buffer():
  _, _, messages = _compile_trainer_step(_tiny_bf16_config())
  assert not _unusable_donations(messages), _unusable_donations(messages)
  # The check can fail: a donation XLA cannot reuse is reported the same way.
  import warnings

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jax.jit(lambda x: x.sum(), donate_argnums=0).lower(jnp.ones(4)).compile()
  assert _unusable_donations([str(w.message) for w in caught])


@pytest.mark.slow
def test_fsdp_gathers_the_vit_weights_in_bfloat16(tmp_path):
  """What the SPMD partitioner emits (XLA's HLO dump after it): every all-gather of a ViT
  weight moves 16 bits. (XLA:CPU, having no bfloat16 matmuls, later widens them to float32
  again, so its final HLO cannot show this; an accelerator's keeps them.)"""
  import re

  from flax import nnx

  # Compiled afresh: from the suite's persistent cache, XLA would not run and dump nothing.
  cached = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    _, state, _ = _compile_trainer_step(_tiny_bf16_config(), {
        "xla_dump_to": str(tmp_path), "xla_dump_hlo_pass_re": "spmd-partitioning"})
  finally:
    jax.config.update("jax_enable_compilation_cache", cached)
  dumps = [p for p in tmp_path.iterdir() if "after_spmd-partitioning" in p.name]
  assert dumps, sorted(p.name for p in tmp_path.iterdir())
  gathered = re.findall(r"= \(?(\w+)\[([0-9,]*)\][^ ]* all-gather(?:-start)?\(",
                        dumps[0].read_text())
  specs = nnx.get_partition_spec(state.params)
  kernels = {",".join(map(str, a.shape)) for a, s in zip(jax.tree.leaves(state.params),
                                                           jax.tree.leaves(specs))
             if "fsdp" in jax.tree.leaves(tuple(s))}
  weights = [(dtype, shape) for dtype, shape in gathered if shape in kernels]
  assert len(weights) >= 8, gathered  # qkv, proj, fc1, fc2 in each of the 2 blocks.
  assert {dtype for dtype, _ in weights} == {"bf16"}, weights
