"""Attention dispatch: the kernel chosen per backend and dtype, and every kernel's numbers against
a plain softmax(q k^T / sqrt(d)) v written here in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attend_jax.models import attention, vit
from attend_jax.train import sharding


def _reference(q, k, v):
  """softmax(q k^T / sqrt(d)) v in float64 numpy: (B, N, H, D)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  p = np.exp(scores - scores.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def _qkv(b=2, n=37, h=2, d=16, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, (b, n, h, d)).astype(dtype) for key in keys)


@pytest.mark.parametrize("backend, cc, dtype, head_dim, expected", [
    ("tpu", None, jnp.bfloat16, 64, "splash"),
    ("tpu", None, jnp.float32, 64, "splash"),
    ("gpu", "9.0", jnp.bfloat16, 64, "cudnn"),
    ("gpu", "8.0", jnp.float16, 128, "cudnn"),
    ("gpu", "9.0", jnp.float32, 64, "xla"),      # cuDNN flash attention is 16-bit only.
    ("gpu", "7.5", jnp.bfloat16, 64, "xla"),     # Colab's T4.
    ("gpu", "9.0", jnp.bfloat16, 192, "xla"),    # Heads wider than cuDNN takes.
    ("cpu", None, jnp.bfloat16, 64, "cpu"),
])
def test_the_kernel_is_chosen_per_backend_dtype_and_head_size(backend, cc, dtype, head_dim,
                                                              expected):
  with attention.attention_as_on(backend, cc or "9.0"):
    impl, reason = attention.choose(dtype, head_dim)
  assert impl == expected, reason
  assert reason  # Logged beside the choice.


def test_a_kernel_set_in_the_config_is_taken_and_a_wrong_name_is_refused():
  assert attention.choose(jnp.float32, 64, "xla")[0] == "xla"
  with pytest.raises(ValueError, match="model.attention must be one of"):
    attention.choose(jnp.float32, 64, "flash")


@pytest.mark.parametrize("implementation", ["xla", "cpu"])
@pytest.mark.parametrize("chunk", [0, 16])
def test_xla_and_cpu_paths_equal_the_reference(implementation, chunk):
  q, k, v = _qkv()
  out = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, implementation,
                                                                chunk))(q, k, v)
  np.testing.assert_allclose(out, _reference(q, k, v), atol=2e-6, rtol=0)


@pytest.mark.parametrize("group_bytes, group", [(128 * 128 * 4, 1), (2 * 128 * 128 * 4, 2),
                                                 (1 << 20, 4)])
def test_the_cpu_path_differentiates_like_xla_and_keeps_no_scores_for_the_backward(
    monkeypatch, group_bytes, group):
  """Its backward computes the probabilities again from the saved log-sum-exp, as flash
  attention does: the same gradients as autodiff of XLA's attention, while the pullback holds
  no (N, N) array per (batch, head) pair (autodiff of the loop kept them all). So with one, two
  or all four pairs in each iteration of the loop."""
  b, n, h, d = 2, 128, 2, 8
  monkeypatch.setattr(attention, "PAIR_GROUP_BYTES", group_bytes)
  assert attention.pair_group(b * h, n) == group
  q, k, v = _qkv(b, n, h, d)
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(attention.dot_product_attention(
      q, k, v, impl)))
  want = jax.jit(jax.grad(loss("xla"), argnums=(0, 1, 2)))(q, k, v)
  got = jax.jit(jax.grad(loss("cpu"), argnums=(0, 1, 2)))(q, k, v)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, atol=2e-6, rtol=0)
  def held(fn):  # Floats the pullback keeps for the backward.
    _, pullback = jax.vjp(fn, q, k, v)
    return sum(x.size for x in jax.tree.leaves(pullback) if hasattr(x, "size"))

  autodiff = lambda q, k, v: jnp.sum(jnp.sin(attention._xla(q, k, v, n, per_head=True)))
  assert held(loss("cpu")) < b * h * n * n <= held(autodiff), (held(loss("cpu")),
                                                               held(autodiff))
  bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  got16 = jax.jit(jax.grad(lambda *a: loss("cpu")(*a).astype(jnp.float32),
                           argnums=(0, 1, 2)))(*bf16)
  for g, w in zip(got16, want, strict=True):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("pairs, length, group", [
    (30, 257, 3),   # ViT-S at 224 px, 5 RoIs: three 264 kB score blocks fit 1 MiB.
    (30, 1025, 1),  # At 448 px one 4.2 MB block is already past the budget.
    (7, 300, 1),    # Two would fit, but 7 pairs do not split into twos.
    (80, 128, 4),   # At most MAX_PAIR_GROUP copies of the loop body...
    (6, 17, 1)])    # ... and none for a tiny model's short sequences.
def test_the_cpu_loop_takes_as_many_pairs_as_fit_the_cache_and_divide_the_pairs(
    pairs, length, group):
  assert attention.pair_group(pairs, length) == group


def _loss(implementation):
  return lambda q, k, v: jnp.sum(jnp.sin(attention.dot_product_attention(
      q, k, v, implementation).astype(jnp.float32)))


def test_splash_in_its_interpreter_equals_xla_forward_and_backward():
  """37 tokens: padded to 128, the padding masked out; values and all three gradients."""
  q, k, v = _qkv(n=37)
  out = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, "splash"))(q, k, v)
  np.testing.assert_allclose(out, _reference(q, k, v), atol=2e-6, rtol=0)
  grads = jax.jit(jax.grad(_loss("splash"), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(_loss("xla"), argnums=(0, 1, 2)))(q, k, v)
  for g, w in zip(grads, want, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


def test_splash_in_bfloat16_is_within_bfloat16_tolerance():
  q, k, v = _qkv(n=130, dtype=jnp.bfloat16)  # Just over one tile: padded to 256.
  out = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, "splash"))(q, k, v)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _reference(q, k, v), atol=3e-2,
                             rtol=0)


def test_splash_on_the_mesh_runs_per_device_and_equals_one_device():
  mesh = sharding.make_mesh(4, 2)
  q, k, v = _qkv(b=8, n=37)
  one = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, "splash"))(q, k, v)
  spec = jax.sharding.NamedSharding(mesh, sharding.BATCH_SPEC)
  with jax.set_mesh(mesh):
    placed = [jax.device_put(x, spec) for x in (q, k, v)]
    hlo = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, "splash")).lower(
        *placed).as_text()
    many = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, "splash"))(*placed)
  assert "shard_map" in hlo or "manual" in hlo.lower()
  np.testing.assert_allclose(many, one, atol=1e-6, rtol=0)


def test_the_splash_kernel_is_what_a_tpu_program_contains():
  q, k, v = _qkv(n=37)
  with attention.attention_as_on("tpu"):
    exported = jax.export.export(jax.jit(jax.grad(_loss("auto"), argnums=(0, 1, 2))),
                                 platforms=["tpu"])(q, k, v)
  module = exported.mlir_module()
  assert "tpu_custom_call" in module
  assert "splash_mha_fwd" in module


def test_cudnn_where_it_cannot_run_falls_back_to_xla_saying_why(capsys):
  attention._LOGGED.clear()
  q, k, v = _qkv(dtype=jnp.bfloat16)
  with attention.attention_as_on("gpu", "9.0"):  # A CPU has no cuDNN: JAX refuses at trace.
    out = attention.dot_product_attention(q, k, v)
  np.testing.assert_allclose(np.asarray(out, np.float32), _reference(q, k, v), atol=3e-2,
                             rtol=0)
  assert "Attention: xla (cuDNN refused: cuDNN is not detected" in capsys.readouterr().out


def test_the_choice_is_logged_once_per_process(capsys):
  attention._LOGGED.clear()
  q, k, v = _qkv()
  for _ in range(3):
    attention.dot_product_attention(q, k, v, "auto")
  out = capsys.readouterr().out
  said = "Attention: cpu (CPU: the fused kernel of models/cpu_attention.cc)"
  assert out.count(said) == 1, out


def test_a_vit_with_splash_attention_equals_the_default():
  cfg = vit.config_for("vits14", width=32, depth=2, num_heads=2, pretrained_grid=2)
  images = np.random.default_rng(0).normal(size=(2, 28, 42, 3)).astype(np.float32)
  default = vit.create(cfg)
  splash = vit.create(vit.ViTConfig(**{**cfg.__dict__, "attention": "splash"}))
  run = nnx.jit(lambda m, x: m(x)[0])
  np.testing.assert_allclose(run(splash, images), run(default, images), atol=2e-5, rtol=0)
