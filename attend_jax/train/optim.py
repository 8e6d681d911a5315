"""AdamW with warmup + cosine or constant lr, clipping, frozen blocks and layer-wise lr decay."""

from __future__ import annotations

import re

import jax
import optax


def _path_str(path) -> str:
  """A tree path as ``vision_model/blocks/3/attn/...``."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _block_index(path: str) -> int | None:
  m = re.search(r"vision_model/blocks/(\d+)/", path)
  return int(m.group(1)) if m else None


def is_frozen(path: str, freeze_blocks: int) -> bool:
  """The reference freezes DINOv2's patch embedding and its first ``freeze_blocks`` blocks."""
  if freeze_blocks < 0:
    return False
  if path.startswith("vision_model/patch_embed/"):
    return True
  block = _block_index(path)
  return block is not None and block < freeze_blocks


def trainable(cfg, params):
  """A tree like ``params``: True where the optimiser updates the parameter."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not is_frozen(_path_str(path), cfg.model.freeze_blocks), params)


def schedule(cfg) -> optax.Schedule:
  if cfg.optim.schedule == "constant":
    if cfg.optim.warmup_steps:
      return optax.linear_schedule(0.0, cfg.optim.lr, cfg.optim.warmup_steps)
    return optax.constant_schedule(cfg.optim.lr)
  if cfg.optim.schedule == "cosine":
    warmup = max(1, min(cfg.optim.warmup_steps, cfg.train.steps // 2))
    return optax.warmup_cosine_decay_schedule(0.0, cfg.optim.lr, warmup,
                                              max(cfg.train.steps, warmup + 1))
  raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {cfg.optim.schedule!r}.")


def make(cfg, params, vit_depth: int) -> optax.GradientTransformation:
  """The optimizer for ``params`` (an nnx.State of Params).

  Frozen parameters get zero updates (and no weight decay); the rest are grouped by their
  layer-wise lr scale, each group an AdamW on ``schedule * scale``. Clipping uses the global
  norm of the trainable gradients.
  """
  base = schedule(cfg)

  def label(path, _):
    path = _path_str(path)
    if is_frozen(path, cfg.model.freeze_blocks):
      return "frozen"
    block = _block_index(path)
    if cfg.optim.layer_decay >= 1.0 or block is None:
      return "scale_1"
    return f"scale_{cfg.optim.layer_decay ** (vit_depth - block):.8g}"

  labels = jax.tree_util.tree_map_with_path(label, params)
  groups = {"frozen": optax.set_to_zero()}
  for name in set(jax.tree.leaves(labels)) - {"frozen"}:
    factor = float(name.split("_", 1)[1])
    groups[name] = optax.adamw(lambda step, f=factor: base(step) * f,
                               weight_decay=cfg.optim.weight_decay)
  frozen = jax.tree.map(lambda l: l == "frozen", labels)
  steps = [optax.masked(optax.set_to_zero(), frozen)]
  if cfg.optim.clip_norm > 0:
    steps.append(optax.clip_by_global_norm(cfg.optim.clip_norm))
  steps.append(optax.multi_transform(groups, labels))
  tx = optax.chain(*steps)
  if cfg.optim.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.optim.grad_accum)
  return tx
