"""The fused CPU attention kernel (models/cpu_attention.cc): its numbers forward and backward
against float64 attention written here, its build, its fallback, and its place in the ViT's step
and on a mesh."""

import ctypes

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attend_jax.models import attention, cpu_attention, vit
from attend_jax.train import sharding


def _reference(q, k, v, g):
  """softmax(q k^T / sqrt(d)) v in float64, and the gradients of sum(out * g)."""
  q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, g))
  scale = 1 / np.sqrt(q.shape[-1])
  s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", p, v)
  dp = np.einsum("bqhd,bkhd->bhqk", g, v)
  ds = p * (dp - np.einsum("bqhd,bqhd->bhq", g, out)[..., None])
  dq = np.einsum("bhqk,bkhd->bqhd", ds, k) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
  dv = np.einsum("bhqk,bqhd->bkhd", p, g)
  return out, (dq, dk, dv)


def _inputs(b, n, h, d, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(b, n, h, d)).astype(np.float32)) for _ in range(4)]


@pytest.fixture(scope="module", autouse=True)
def _kernel():
  why_not = cpu_attention.unavailable()
  assert why_not is None, why_not  # The test machine has a C++ compiler: the kernel builds.


@pytest.mark.parametrize("b, n, h, d", [
    (2, 37, 2, 16),   # Rows not a multiple of the micro-kernels' 8, keys not of 16.
    (1, 5, 3, 32),    # Fewer tokens than one block of rows.
    (2, 257, 6, 64),  # ViT-S/14 at 224 px; several query blocks.
    (1, 130, 1, 48),
    (1, 70, 2, 128),  # The widest head taken.
])
def test_the_fused_kernel_equals_float64_attention_forward_and_backward(b, n, h, d):
  q, k, v, g = _inputs(b, n, h, d)
  want_out, want_grads = _reference(q, k, v, g)
  out, pullback = jax.vjp(jax.jit(cpu_attention.dot_product_attention), q, k, v)
  np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=0)
  for got, want in zip(pullback(g), want_grads, strict=True):
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=0)


def test_large_scores_neither_overflow_nor_lose_the_softmax(monkeypatch):
  """Scores in the thousands: the row maximum is subtracted before exp, and the smallest terms
  underflow to 0 instead of turning into NaN. The backward computes the probabilities again
  from the log-sum-exp, whose rounding at such scores bounds every flash-style backward's
  accuracy (PyTorch's CPU kernel's too): the kernel's error stays within XLA's loop's, which
  does the same in XLA's ops."""
  q, k, v, g = _inputs(1, 40, 1, 16, seed=1)
  q, k = 30 * q, 30 * k
  want_out, want_grads = _reference(q, k, v, g)
  out, pullback = jax.vjp(cpu_attention.dot_product_attention, q, k, v)
  monkeypatch.setenv("ATTEND_JAX_CPU_ATTENTION", "0")
  loop_out, loop_pullback = jax.vjp(
      lambda q, k, v: attention.dot_product_attention(q, k, v, "cpu"), q, k, v)
  error = lambda got, want: np.abs(np.asarray(got, np.float64) - want).max()  # noqa: E731
  assert np.isfinite(out).all()
  assert error(out, want_out) <= 1.5 * error(loop_out, want_out) + 1e-6
  for got, loop, want in zip(pullback(g), loop_pullback(g), want_grads, strict=True):
    assert np.isfinite(got).all()
    assert error(got, want) <= 1.5 * error(loop, want) + 1e-6, (error(got, want),
                                                                 error(loop, want))


def test_a_cpu_step_chooses_the_fused_kernel_and_says_so():
  impl, reason = attention.choose(jnp.float32, 64)
  assert (impl, reason) == ("cpu", "CPU: the fused kernel of models/cpu_attention.cc")
  _, reason16 = attention.choose(jnp.bfloat16, 64)
  assert "XLA's loop" in reason16 and "float32" in reason16
  _, narrow = attention.choose(jnp.float32, 8)
  assert "XLA's loop" in narrow and "multiple of 16" in narrow


def test_the_vits_train_step_on_a_cpu_runs_the_kernel_forward_and_backward():
  cfg = vit.config_for("vits14", width=32, depth=2, num_heads=2, pretrained_grid=2)
  model = vit.create(cfg)
  images = jnp.zeros((2, 28, 28, 3))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss = lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(images)[0])  # noqa: E731
  hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
  assert hlo.count(f"@{cpu_attention.FORWARD}(") == cfg.depth, hlo.count(cpu_attention.FORWARD)
  assert hlo.count(f"@{cpu_attention.BACKWARD}(") == cfg.depth


def test_switched_off_attention_takes_xlas_loop_and_says_why(monkeypatch):
  monkeypatch.setenv("ATTEND_JAX_CPU_ATTENTION", "0")
  impl, reason = attention.choose(jnp.float32, 64)
  assert impl == "cpu" and "XLA's loop" in reason and "ATTEND_JAX_CPU_ATTENTION=0" in reason
  q, k, v, g = _inputs(2, 37, 2, 16)
  hlo = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, "cpu")).lower(
      q, k, v).as_text()
  assert cpu_attention.FORWARD not in hlo and "while" in hlo
  out = attention.dot_product_attention(q, k, v, "cpu")
  np.testing.assert_allclose(out, _reference(q, k, v, g)[0], atol=2e-6, rtol=0)
  with pytest.raises(RuntimeError, match="cannot run: switched off"):
    cpu_attention.dot_product_attention(q, k, v)


def test_without_a_compiler_the_build_says_so_in_one_line(monkeypatch, tmp_path):
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  monkeypatch.setattr(cpu_attention, "library_path", lambda: tmp_path / "kernel.so")
  why_not = cpu_attention._load.__wrapped__()  # The process's own load is cached; not this.
  assert why_not.startswith("RuntimeError: no C++ compiler") and "no-such-compiler" in why_not
  assert "\n" not in why_not and not (tmp_path / "kernel.so").exists()


def test_a_fresh_cache_builds_a_library_with_both_handlers(monkeypatch, tmp_path):
  monkeypatch.setenv("ATTEND_JAX_CACHE", str(tmp_path))
  path = cpu_attention.library_path()
  assert path.parent == tmp_path and path.name.startswith("cpu_attention-")
  cpu_attention.build(path)
  library = ctypes.CDLL(str(path))
  assert library.AttendJaxAttentionForward and library.AttendJaxAttentionBackward
  assert [p.name for p in tmp_path.iterdir()] == [path.name]  # No temporary file left.


def test_a_broken_build_raises_with_the_compilers_message(monkeypatch, tmp_path):
  broken = tmp_path / "broken.cc"
  broken.write_text("this is not C++\n")
  monkeypatch.setattr(cpu_attention, "SOURCE", broken)
  with pytest.raises(RuntimeError, match="failed: .*error"):
    cpu_attention.build(tmp_path / "kernel.so")
  assert [p.name for p in tmp_path.iterdir()] == ["broken.cc"]


def test_on_the_mesh_each_device_runs_the_kernel_on_its_examples():
  mesh = sharding.make_mesh(4, 2)
  q, k, v, g = _inputs(8, 37, 2, 16)
  loss = lambda q, k, v: jnp.sum(jnp.sin(attention.dot_product_attention(q, k, v, "cpu")))  # noqa
  one = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
  spec = jax.sharding.NamedSharding(mesh, sharding.BATCH_SPEC)
  with jax.set_mesh(mesh):
    placed = [jax.device_put(x, spec) for x in (q, k, v)]
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    compiled = step.lower(*placed).compile().as_text()
    many = step(*placed)
  # Each device's call takes its one example, (1, 37, 2, 16), not the gathered batch.
  calls = [line for line in compiled.splitlines() if cpu_attention.FORWARD in line]
  assert calls and all("f32[1,37,2,16]" in line for line in calls), calls
  for got, want in zip(jax.tree.leaves(many), jax.tree.leaves(one), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)  # The loss sums in another order.
