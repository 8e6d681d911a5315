"""Times one layer's attention, forward and backward, against PyTorch's fused CPU kernel.

The ViT-S/14 shapes of tools/bench_vit.py (5 RoIs, 6 heads of 64) at 224 and 448 px: 257 and
1,025 tokens. For each it times, alternating, ``attention.dot_product_attention`` with each
kernel in ``--kernels`` (on a CPU, ``cpu`` is the loop the ViT uses and ``xla`` XLA's own) and
``torch.nn.functional.scaled_dot_product_attention`` (its flash kernel for CPU), forward alone
and forward + backward, and prints ms per call and the ratio torch/jax (> 1: JAX is faster).
Like bench_vit.py it runs with glibc tunables that keep freed memory for reuse.

  .venv/bin/python tools/bench_attention.py
  .venv/bin/python tools/bench_attention.py --dry_run     # 17 tokens, one timed call each
"""

from __future__ import annotations

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
flags.DEFINE_list("kernels", ["cpu", "xla"], "attention.dot_product_attention kernels to time.")
flags.DEFINE_integer("reps", 10, "Timed calls of each, alternating.")
flags.DEFINE_bool("dry_run", False, "17 tokens, one timed call each: a check.")


def _case(tokens: int, reps: int, warmup: int) -> dict[str, float]:
  rng = np.random.default_rng(0)
  shape = (FLAGS.batch, tokens, FLAGS.heads, FLAGS.head_dim)
  q, k, v, g = (rng.normal(size=shape).astype(np.float32) for _ in range(4))
  fns = {}
  for kernel in FLAGS.kernels:
    fwd = jax.jit(lambda q, k, v, kernel=kernel: attention.dot_product_attention(q, k, v, kernel))
    grad = jax.jit(jax.grad(
        lambda q, k, v, kernel=kernel: jnp.sum(attention.dot_product_attention(q, k, v, kernel)
                                               * g), argnums=(0, 1, 2)))
    jq, jk, jv = map(jnp.asarray, (q, k, v))
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
