r"""Runs a DINOv2 ViT on a synthetic batch of breast-like RoIs and plots where it attends.

  python tools/demo_vit.py                        # random ViT-S/14, 5 RoIs at 224 px
  python tools/demo_vit.py --weights weights/dinov2_vits14 --size 448

This is the demo `make demo` runs until the classifier trainer lands. It writes
``<out>/attention.png``: each RoI beside its last-block CLS attention (mean over heads).
"""

import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from attend_jax.models import pretrained, vit

_WEIGHTS = flags.DEFINE_string("weights", None, "Converted checkpoint (tools/convert_dinov2.py).")
_VARIANT = flags.DEFINE_enum("variant", "vits14", vit.VARIANTS, "Backbone when no --weights.")
_SIZE = flags.DEFINE_integer("size", 224, "RoI side in pixels (a multiple of 14).")
_ROIS = flags.DEFINE_integer("rois", 5, "Number of RoIs in the batch.")
_OUT = flags.DEFINE_string("out", "workdirs/demo_vit", "Output folder.")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def synthetic_rois(n: int, size: int, seed: int = 0) -> np.ndarray:
  """Grey, breast-like crops: a bright elliptical region with blobby texture and a mass."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  rois = []
  for _ in range(n):
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(-0.1, 0.2), rng.uniform(0.6, 0.9)
    tissue = np.clip(1.2 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2, 0, 1)
    texture = sum(np.sin(rng.uniform(5, 40) * (xx * np.cos(a) + yy * np.sin(a)) + rng.uniform(0, 6))
                  for a in rng.uniform(0, np.pi, 6)) / 12
    my, mx, mr = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.03, 0.08)
    mass = np.exp(-((yy - my) ** 2 + (xx - mx) ** 2) / (2 * mr**2))
    rois.append(np.clip(0.6 * tissue + 0.15 * texture * tissue + 0.5 * mass, 0, 1))
  grey = np.stack(rois).astype(np.float32)[..., None]
  return (np.repeat(grey, 3, axis=-1) - IMAGENET_MEAN) / IMAGENET_STD


def main(argv):
  del argv
  if _WEIGHTS.value:
    model = pretrained.load(_WEIGHTS.value)
  else:
    model = vit.create(vit.config_for(_VARIANT.value))
  cfg = model.cfg
  images = synthetic_rois(_ROIS.value, _SIZE.value)
  print(f"{jax.device_count()} {jax.default_backend()} device(s); ViT width {cfg.width}, depth"
        f" {cfg.depth}, {cfg.num_registers} registers; input {images.shape}")

  forward = jax.jit(lambda x: model(x, return_attention=True))
  start = time.perf_counter()
  cls, aux = jax.block_until_ready(forward(images))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(forward(images))
    times.append(time.perf_counter() - start)
  print(f"compile+first run {compile_s:.1f} s; forward {1e3 * np.median(times):.0f} ms"
        f" ({_ROIS.value / np.median(times):.1f} RoIs/s)")
  print(f"cls {cls.shape}, patch_tokens {aux['patch_tokens'].shape},"
        f" register_tokens {aux['register_tokens'].shape}, attention {aux['attention'].shape}")
  if not np.isfinite(np.asarray(cls)).all():
    raise SystemExit("error: non-finite CLS embeddings")

  grid = _SIZE.value // vit.PATCH_SIZE
  first_patch = 1 + cfg.num_registers
  attn = np.asarray(jnp.mean(aux["attention"][:, :, 0, first_patch:], axis=1))
  attn = attn.reshape(-1, grid, grid)
  path = os.path.join(_OUT.value, "attention.png")
  os.makedirs(_OUT.value, exist_ok=True)
  _plot(images, attn, path)
  print(f"wrote {path}")


def _plot(images, attn, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  n = len(images)
  fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
  grey = images[..., 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
  for i in range(n):
    axes[0, i].imshow(grey[i], cmap="gray", vmin=0, vmax=1)
    axes[0, i].set_title(f"RoI {i}", fontsize=9)
    axes[1, i].imshow(attn[i], cmap="magma")
    axes[1, i].set_title("CLS attention", fontsize=9)
  for ax in axes.flat:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  app.run(main)
