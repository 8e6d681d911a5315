"""Softmax attention, one function for every backend: which kernel runs is chosen here.

``dot_product_attention(q, k, v, implementation)`` takes (B, N, H, D) queries, keys and values
and picks, for ``implementation="auto"``:

- GPUs with cuDNN's fused (flash) attention, sm80+ in bfloat16 or float16 with head_dim <= 128:
  ``jax.nn.dot_product_attention(implementation="cudnn")``. Nothing of (N, N) goes to memory.
- TPUs: the Pallas splash attention kernel (``jax.experimental.pallas.ops.tpu``), the sequence
  padded to a multiple of 128 and the padding masked out through segment ids.
- CPUs: the fused kernel of cpu_attention.cc (float32, head_dim a multiple of 16 up to 128),
  compiled once per machine; where it cannot be built or does not take the shape, the loop over
  (batch, head) pairs that XLA:CPU runs fastest.
- Otherwise (float32 on GPUs; older GPUs such as Colab's T4, sm75): XLA's attention.

The choice and its reason are logged once per process. ``attention_as_on`` traces as on
another backend (tools/scale_report.py compiles an accelerator's program on a CPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from attend_jax.models import cpu_attention
from attend_jax.progress import log

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "cpu")
SPLASH_MULTIPLE = 128  # Splash attention's tiles: the sequence is padded to a multiple.
CUDNN_MAX_HEAD_DIM = 128

# (backend, device kind, compute capability) traced as, instead of the default device's.
_AS_ON = contextvars.ContextVar("attention_as_on", default=None)


@contextlib.contextmanager
def attention_as_on(backend: str, compute_capability: str = "9.0"):
  """Traces attention (and the ViT's CPU-only ``residual_barrier``) as on ``backend`` ("gpu",
  "tpu" or "cpu"), whatever the default backend is; a "gpu" is taken to have
  ``compute_capability`` (an H100 by default)."""
  token = _AS_ON.set((backend, compute_capability))
  try:
    yield
  finally:
    _AS_ON.reset(token)


def backend() -> str:
  """The backend a step is traced for: ``attention_as_on``'s, else JAX's default."""
  forced = _AS_ON.get()
  return forced[0] if forced else jax.default_backend()


def _compute_capability() -> str | None:
  forced = _AS_ON.get()
  if forced:
    return forced[1]
  return getattr(jax.devices()[0], "compute_capability", None)


def choose(dtype, head_dim: int, requested: str = "auto") -> tuple[str, str]:
  """``(implementation, reason)`` for attention in ``dtype`` with ``head_dim`` on this
  backend; ``requested`` other than "auto" is taken as it is."""
  if requested not in IMPLEMENTATIONS:
    raise ValueError(f"model.attention must be one of {IMPLEMENTATIONS}, got {requested!r}.")
  if requested != "auto":
    return requested, "set by model.attention"
  on = backend()
  dtype = jnp.dtype(dtype)
  if on == "tpu":
    return "splash", "TPU: Pallas splash attention"
  if on in ("gpu", "cuda"):
    cc = _compute_capability()
    major = int(str(cc).split(".")[0]) if cc else 0
    if major < 8:
      return "xla", f"GPU sm{str(cc).replace('.', '')}: cuDNN flash attention needs sm80+"
    if dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
      return "xla", f"GPU in {dtype.name}: cuDNN flash attention needs bfloat16 or float16"
    if head_dim > CUDNN_MAX_HEAD_DIM or head_dim % 8:
      return "xla", f"head_dim {head_dim}: cuDNN flash attention needs a multiple of 8 <= 128"
    return "cudnn", f"GPU sm{str(cc).replace('.', '')} in {dtype.name}: cuDNN flash attention"
  if on == "cpu":
    why_not = cpu_attention.unavailable()
    if why_not is None and cpu_attention.supports(dtype, head_dim):
      return "cpu", "CPU: the fused kernel of models/cpu_attention.cc"
    why_not = why_not or "it takes float32 with head_dim a multiple of 16 up to 128"
    return "cpu", f"CPU: XLA's loop over (batch, head) pairs (no fused kernel: {why_not})"
  return "xla", f"backend {on}: XLA's attention"


_LOGGED: set = set()


def _log_once(implementation: str, reason: str) -> None:
  if (implementation, reason) not in _LOGGED:
    _LOGGED.add((implementation, reason))
    log("Attention: %s (%s)", implementation, reason)


def dot_product_attention(q, k, v, implementation: str = "auto", chunk: int = 0,
                          interpret: bool = False):
  """Softmax attention over (B, N, H, D) inputs, scaled by 1/sqrt(D); (B, N, H, D) out.

  ``chunk`` > 0 computes the XLA and CPU paths in blocks of ``chunk`` queries. The splash
  kernel runs in Pallas's interpreter where the step is not traced for a TPU (slow: for tests
  on a CPU), or with ``interpret``.
  """
  impl, reason = choose(q.dtype, q.shape[-1], implementation)
  if impl == "cudnn":
    try:
      out = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    except (ValueError, NotImplementedError, RuntimeError) as e:  # Not on this GPU or shape.
      impl, reason = "xla", f"cuDNN refused: {str(e).splitlines()[0]}"
    else:
      _log_once(impl, reason)
      return out
  _log_once(impl, reason)
  if impl == "splash":
    return _splash(q, k, v, interpret or backend() != "tpu")
  return _xla(q, k, v, chunk, per_head=impl == "cpu")


# --- XLA, and the CPU's loop -------------------------------------------------------------------


def attention_weights(q, k):
  """Softmax attention probabilities, (B, H, Nq, Nk), from (B, N, H, D) queries and keys."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  scores = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k)
  return jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)


def _attend(q, k, v):
  """Softmax attention over head-major (..., N, D) inputs; ``q`` is already scaled.

  The (Nq, D) output is normalised instead of the (Nq, Nk) probabilities, which saves a pass
  over the scores. The max is a constant shift for softmax, so it needs no gradient.
  """
  scores = jnp.einsum("...qd,...kd->...qk", q, k).astype(jnp.float32)
  e = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
  out = jnp.einsum("...qk,...kd->...qd", e.astype(v.dtype), v)
  return (out / e.sum(-1, keepdims=True).astype(out.dtype)).astype(v.dtype)


def _attend_chunked(q, k, v, chunk: int):
  # lax.map over blocks of queries bounds the live score block to (..., chunk, Nk).
  n = q.shape[-2]
  if chunk <= 0 or chunk >= n:
    return _attend(q, k, v)
  num_chunks = -(-n // chunk)
  qp = jnp.pad(q, [(0, 0)] * (q.ndim - 2) + [(0, num_chunks * chunk - n), (0, 0)])
  blocks = jnp.moveaxis(qp.reshape(*q.shape[:-2], num_chunks, chunk, q.shape[-1]), -3, 0)
  out = jax.lax.map(lambda qb: _attend(qb, k, v), blocks)
  out = jnp.moveaxis(out, 0, -3).reshape(*q.shape[:-2], num_chunks * chunk, q.shape[-1])
  return out[..., :n, :]


def _xla(q, k, v, chunk: int, per_head: bool):
  if not per_head and not chunk:
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")
  if per_head and cpu_attention.supports(q.dtype, q.shape[-1]) \
     and not cpu_attention.unavailable():
    # The fused kernel keeps BLOCK_Q rows of scores at a time, whatever `chunk` says.
    return _per_device(cpu_attention.dot_product_attention, q.shape[0], 3)(q, k, v)
  b, n, h, d = q.shape
  # Head-major layout, with the scale folded into q (the smallest operand).
  q = (q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)).transpose(0, 2, 1, 3)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  if per_head:
    # XLA:CPU runs batched matmuls at half the rate of plain 2-D ones, and a full (B, H, N, N)
    # score tensor does not stay in cache. A loop over plain 2-D (batch, head) pairs fixes both.
    flat = lambda t: t.reshape(b * h, *t.shape[2:])  # noqa: E731
    if chunk:
      out = jax.lax.map(lambda qkv: _attend_chunked(*qkv, chunk), (flat(q), flat(k), flat(v)))
    else:
      out = _per_pair(flat(q), flat(k), flat(v))
    out = out.reshape(b, h, n, d)
  else:
    out = _attend_chunked(q, k, v, chunk)
  return out.transpose(0, 2, 1, 3)


# The CPU's loop, differentiated as flash attention is: the forward keeps each row's
# log-sum-exp, and the backward computes the probabilities again, a few (batch, head) pairs at
# a time. Autodiff of the loop would keep every pair's (N, N) probabilities for the backward:
# 12 x 126 MB a step for ViT-S at 448 px and 5 RoIs, which XLA:CPU allocates afresh, and the
# kernel faults in page by page, at every step.
#
# Each iteration takes as many pairs as keep their (N, N) scores within one core's L2 cache
# (PAIR_GROUP_BYTES), written out as independent ops that XLA:CPU runs on both cores at once:
# at 257 tokens (224 px) three pairs an iteration run the loop 1.6x faster than one; at 1,025
# tokens one pair already fills the cache.
# Each pair of a group is a copy of the loop body in the compiled program: at most
# MAX_PAIR_GROUP, and none below MIN_GROUP_LENGTH tokens, where tiny models (the tests') would
# pay in compile time what they cannot gain in run time.
PAIR_GROUP_BYTES = 1 << 20
MAX_PAIR_GROUP = 4
MIN_GROUP_LENGTH = 128


def pair_group(pairs: int, length: int, itemsize: int = 4) -> int:
  """Pairs per loop iteration: the largest divisor of ``pairs`` whose fp32 (N, N) scores
  together fit PAIR_GROUP_BYTES, at least 1 and at most MAX_PAIR_GROUP; 1 for sequences
  shorter than MIN_GROUP_LENGTH."""
  if length < MIN_GROUP_LENGTH:
    return 1
  fit = min(MAX_PAIR_GROUP, max(1, PAIR_GROUP_BYTES // (length * length * itemsize)))
  return max(g for g in range(1, min(fit, pairs) + 1) if pairs % g == 0)


def _grouped_map(fn, arrays):
  """``lax.map`` of ``fn`` over the leading (pair) axis, pair_group(...) pairs per iteration."""
  pairs, length = arrays[0].shape[:2]
  group = pair_group(pairs, length)
  if group == 1:
    return jax.lax.map(lambda a: fn(*a), tuple(arrays))
  split = lambda t: t.reshape(pairs // group, group, *t.shape[1:])  # noqa: E731

  def body(chunk):
    outs = [fn(*(t[i] for t in chunk)) for i in range(group)]
    return tuple(jnp.stack(column) for column in zip(*outs))

  out = jax.lax.map(body, tuple(split(t) for t in arrays))
  return tuple(t.reshape(pairs, *t.shape[2:]) for t in out)


@jax.custom_vjp
def _per_pair(q, k, v):
  """Softmax attention of (P, N, D) pairs, ``q`` already scaled: (P, N, D)."""
  return _per_pair_fwd(q, k, v)[0]


def _pair_forward(q, k, v):
  scores = jnp.einsum("qd,kd->qk", q, k).astype(jnp.float32)
  top = scores.max(-1, keepdims=True)
  e = jnp.exp(scores - top)
  total = e.sum(-1, keepdims=True)
  out = jnp.einsum("qk,kd->qd", e.astype(v.dtype), v).astype(jnp.float32) / total
  return out.astype(v.dtype), (top + jnp.log(total))[:, 0]


def _per_pair_fwd(q, k, v):
  out, lse = _grouped_map(_pair_forward, (q, k, v))
  return out, (q, k, v, out, lse)


def _pair_backward(q, k, v, out, lse, g):
  # Keys-major, (Nk, Nq): XLA:CPU multiplies a matrix contracted over its first axis (the
  # (Nq, Nk) form's dv = p^T g and dk = ds^T q) at about half the rate of a plain product.
  # Here only dq is such a product; at 1,025 tokens the backward runs 8 % faster.
  f32 = jnp.float32
  g32 = g.astype(f32)
  p_t = jnp.exp(jnp.einsum("kd,qd->kq", k, q).astype(f32) - lse[None, :])
  dv = jnp.einsum("kq,qd->kd", p_t, g32)
  dp_t = jnp.einsum("kd,qd->kq", v.astype(f32), g32)
  ds_t = p_t * (dp_t - jnp.sum(g32 * out.astype(f32), -1)[None, :])
  dk = jnp.einsum("kq,qd->kd", ds_t, q.astype(f32))
  dq = jnp.einsum("kq,kd->qd", ds_t, k.astype(f32))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _per_pair_bwd(residuals, g):
  return _grouped_map(_pair_backward, (*residuals, g))


_per_pair.defvjp(_per_pair_fwd, _per_pair_bwd)


def _per_device(kernel, batch: int, operands: int):
  """``kernel`` of ``operands`` batch-major arrays, run by each device of the mesh on its own
  examples where the batch divides among them. A Pallas kernel or an FFI call is one device's
  program: XLA cannot partition it, and would otherwise gather the whole batch to every
  device."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(a for a in ("data", "fsdp") if not mesh.empty and a in mesh.axis_names)
  if not axes or batch % int(np.prod([mesh.shape[a] for a in axes])):
    return kernel
  spec = jax.sharding.PartitionSpec(axes)
  return jax.shard_map(kernel, in_specs=(spec,) * operands, out_specs=spec, check_vma=False)


# --- splash (TPU) ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _splash_kernel(length: int, heads: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  mask = sa.MultiHeadMask([sa.FullMask((length, length))] * heads)
  # Its mask tables are concrete arrays even when first built inside a trace, so the cached
  # kernel can serve every later trace.
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash(q, k, v, interpret: bool):
  b, n, h, d = q.shape
  t = -(-n // SPLASH_MULTIPLE) * SPLASH_MULTIPLE
  scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
  pad = lambda x: jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, t - n), (0, 0)))  # noqa
  segments = jnp.broadcast_to((jnp.arange(t) >= n).astype(jnp.int32), (b, t))
  run = _per_device(functools.partial(_splash_batch, interpret=interpret), b, 4)
  out = run(pad(q * scale), pad(k), pad(v), segments)
  return out[:, :, :n].transpose(0, 2, 1, 3)


def _splash_batch(q, k, v, segments, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

  kernel = _splash_kernel(q.shape[2], q.shape[1], interpret)
  return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=SegmentIds(s, s)))(
      q, k, v, segments)
