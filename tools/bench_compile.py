"""Times tracing and compiling a ViT train step with its blocks looped and with
``model.scan_blocks`` (one ``lax.scan`` over the stacked blocks), side by side in one run.

The weights are abstract (nothing is allocated), so ViT-g/14 fits any machine. It prints the
seconds of each stage and the ratio looped/scanned (> 1: the scan is faster).

  .venv/bin/python tools/bench_compile.py --variant=vitg14
  .venv/bin/python tools/bench_compile.py --dry_run     # 3 narrow blocks: a check
"""

from __future__ import annotations

import dataclasses
import time

from absl import app, flags
from flax import nnx
import jax
import jax.numpy as jnp

from attend_jax.models import vit

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "vitg14", "The DINOv2 backbone (vits14 ... vitg14).")
flags.DEFINE_integer("image_size", 224, "Pixels per side of a RoI.")
flags.DEFINE_integer("batch", 2, "RoIs per step.")
flags.DEFINE_bool("dry_run", False, "3 blocks of width 64 at 56 px: a check.")


def _seconds(cfg: vit.ViTConfig, size: int) -> tuple[float, float]:
  """Seconds to trace and lower, and to compile, the gradient of a loss of ``cfg``'s ViT."""
  graph, state = nnx.split(vit.abstract(cfg))
  images = jax.ShapeDtypeStruct((FLAGS.batch, size, size, 3), jnp.float32)

  def loss(state, images):
    return jnp.sum(nnx.merge(graph, state)(images)[0])

  start = time.perf_counter()
  lowered = jax.jit(jax.grad(loss)).lower(state, images)
  lowered_at = time.perf_counter()
  lowered.compile()
  return lowered_at - start, time.perf_counter() - lowered_at


def main(argv):
  del argv
  overrides, size = {}, FLAGS.image_size
  if FLAGS.dry_run:
    overrides, size = dict(width=64, depth=3, num_heads=2), 56
  cfg = vit.config_for(FLAGS.variant, pretrained_grid=size // vit.PATCH_SIZE, **overrides)
  looped = _seconds(cfg, size)
  scanned = _seconds(dataclasses.replace(cfg, scan_blocks=True), size)
  print(f"{FLAGS.variant} ({cfg.depth} blocks), {FLAGS.batch} x {size} px, train step;"
        f" backend {jax.default_backend()}")
  print(f"{'stage':<16}{'looped s':>10}{'scanned s':>11}{'ratio':>8}")
  for stage, a, b in zip(("trace + lower", "compile"), looped, scanned):
    print(f"{stage:<16}{a:>10.2f}{b:>11.2f}{a / b:>8.2f}")


if __name__ == "__main__":
  app.run(main)
