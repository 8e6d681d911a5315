"""Times one layer's attention, forward and backward, against PyTorch's fused CPU kernel.

The ViT-S/14 shapes of tools/bench_vit.py (5 RoIs, 6 heads of 64) at 224 and 448 px: 257 and
1,025 tokens. For each it times, alternating, ``attention.dot_product_attention`` with each
kernel in ``--kernels`` (on a CPU, ``cpu`` is the fused kernel the ViT uses, ``loop`` XLA's loop
over (batch, head) pairs that it replaced, ``xla`` XLA's own attention) and
``torch.nn.functional.scaled_dot_product_attention`` (its flash kernel for CPU), forward alone
and forward + backward, and prints ms per call and the ratio torch/jax (> 1: JAX is faster).
Like bench_vit.py it runs with glibc tunables that keep freed memory for reuse.

  .venv/bin/python tools/bench_attention.py
  .venv/bin/python tools/bench_attention.py --dry_run     # 17 tokens, one timed call each
"""

from __future__ import annotations

import contextlib
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import torch

from attend_jax.models import attention
from bench_util import MALLOC_REUSE, interleaved, reuse_freed_memory

FLAGS = flags.FLAGS
flags.DEFINE_list("tokens", ["257", "1025"], "Sequence lengths (ViT-S/14 at 224 and 448 px).")
flags.DEFINE_integer("batch", 5, "Images (RoIs).")
flags.DEFINE_integer("heads", 6, "Heads.")
flags.DEFINE_integer("head_dim", 64, "Width of a head.")
flags.DEFINE_list("kernels", ["cpu", "loop"],
                  "attention.dot_product_attention kernels to time; on a CPU `cpu` is the fused"
                  " kernel of models/cpu_attention.cc, `loop` XLA's loop over (batch, head) pairs"
                  " that it replaces (the fused kernel switched off) and `xla` XLA's attention.")
flags.DEFINE_integer("reps", 10, "Timed calls of each, alternating.")
flags.DEFINE_bool("dry_run", False, "17 tokens, one timed call each: a check.")


@contextlib.contextmanager
def _fused_kernel(on: bool):
  """The fused CPU kernel (models/cpu_attention.cc) on or off for the steps traced inside."""
  before = os.environ.get("ATTEND_JAX_CPU_ATTENTION")
  os.environ["ATTEND_JAX_CPU_ATTENTION"] = "1" if on else "0"
  try:
    yield
  finally:
    if before is None:
      del os.environ["ATTEND_JAX_CPU_ATTENTION"]
    else:
      os.environ["ATTEND_JAX_CPU_ATTENTION"] = before


def _case(tokens: int, reps: int, warmup: int) -> dict[str, float]:
  rng = np.random.default_rng(0)
  shape = (FLAGS.batch, tokens, FLAGS.heads, FLAGS.head_dim)
  q, k, v, g = (rng.normal(size=shape).astype(np.float32) for _ in range(4))
  fns = {}
  jq, jk, jv = map(jnp.asarray, (q, k, v))
  for kernel in FLAGS.kernels:
    impl = "cpu" if kernel == "loop" else kernel
    attend = lambda q, k, v, impl=impl: attention.dot_product_attention(q, k, v, impl)  # noqa
    with _fused_kernel(kernel != "loop"):  # Chosen as the step is traced: compile it here.
      fwd = jax.jit(attend).lower(jq, jk, jv).compile()
      grad = jax.jit(jax.grad(lambda q, k, v, attend=attend: jnp.sum(attend(q, k, v) * g),
                              argnums=(0, 1, 2))).lower(jq, jk, jv).compile()
    fns[f"jax {kernel} forward"] = lambda fwd=fwd: fwd(jq, jk, jv).block_until_ready()
    fns[f"jax {kernel} train"] = lambda grad=grad: jax.block_until_ready(grad(jq, jk, jv))
  head_major = [torch.tensor(a.transpose(0, 2, 1, 3)) for a in (q, k, v)]
  tq, tk, tv = (t.clone().requires_grad_() for t in head_major)
  tg = torch.tensor(g.transpose(0, 2, 1, 3))

  def torch_forward():
    with torch.no_grad():
      torch.nn.functional.scaled_dot_product_attention(*head_major)

  def torch_train():
    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).backward(tg)

  fns["torch forward"], fns["torch train"] = torch_forward, torch_train
  return {name: seconds * 1e3 for name, seconds in interleaved(fns, reps, warmup).items()}


def main(argv):
  del argv
  tunables = reuse_freed_memory("reuse")
  torch.set_num_threads(max(1, torch.get_num_threads()))
  tokens = [17] if FLAGS.dry_run else [int(t) for t in FLAGS.tokens]
  reps, warmup = (1, 1) if FLAGS.dry_run else (FLAGS.reps, 2)
  print(f"jax {jax.__version__} on {jax.default_backend()}; torch {torch.__version__},"
        f" {torch.get_num_threads()} threads; glibc malloc: {tunables or 'default'}"
        f"{'' if tunables == MALLOC_REUSE else ' (not the reuse tunables)'}")
  print(f"{'tokens':>6} {'part':8} {'kernel':6} {'jax ms':>8} {'torch ms':>9} {'torch/jax':>9}")
  for n in tokens:
    ms = _case(n, reps, warmup)
    for part in ("forward", "train"):
      for kernel in FLAGS.kernels:
        jax_ms, torch_ms = ms[f"jax {kernel} {part}"], ms[f"torch {part}"]
        print(f"{n:>6} {part:8} {kernel:6} {jax_ms:8.1f} {torch_ms:9.1f}"
              f" {torch_ms / jax_ms:9.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
