"""The whole config checked before any data or model work, so that a typo costs a second and one
line, not a minute, a traceback and empty checkpoint folders.

The models and the pipeline check their own arguments too; this module only exists so that
every such mistake surfaces at start-up, named by its config key.
"""

from __future__ import annotations

import numpy as np

from attend_jax import tasks
from attend_jax.errors import DataError
from attend_jax.models import attend, attention, build, roi, vit


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key (``config.proposals.source``)."""


def _one_of(config, key: str, choices) -> None:
  value = config
  for part in key.split("."):
    value = value[part]
  if value not in choices:
    raise ConfigError(f"config.{key} must be one of {tuple(choices)}, got {value!r}.")


def _positive_int(config, key: str, allow_zero: bool = False) -> None:
  value = config
  for part in key.split("."):
    value = value[part]
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  if not ok or value < (0 if allow_zero else 1):
    kind = "a non-negative" if allow_zero else "a positive"
    raise ConfigError(f"config.{key} must be {kind} integer, got {value!r}.")


def check(config) -> None:
  """Raises ConfigError for the first setting that cannot work."""
  try:
    tasks.name(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for key in ("data.batch_size", "data.eval_batch_size", "data.image_size", "train.steps",
              "train.log_every", "train.eval_every", "train.checkpoint_every", "train.patience",
              "proposals.topk", "model.roi_size", "optim.grad_accum"):
    _positive_int(config, key)
  _positive_int(config, "data.worker_count", allow_zero=True)
  if not config.data.name:
    raise ConfigError("config.data.name is empty: name the prepared dataset, e.g."
                      " --config.data.name=cbis_ddsm_2048.")
  _one_of(config, "proposals.source", roi.PROPOSAL_SOURCES)
  _one_of(config, "model.pool", attend.POOLS)
  _one_of(config, "model.variant", vit.VARIANTS)
  _one_of(config, "model.dtype", ("float32", "bfloat16"))
  _one_of(config, "model.attention", attention.IMPLEMENTATIONS)
  _one_of(config, "model.remat", tuple(vit.REMAT_POLICIES))
  _one_of(config, "model.crop", tuple(roi.CROPS))
  _one_of(config, "model.num_classes", (1, 2))
  _one_of(config, "optim.schedule", ("constant", "cosine"))
  if config.train.get("preemption_grace_s", 1.0) <= 0:
    raise ConfigError("config.train.preemption_grace_s must be positive (seconds), got"
                      f" {config.train.preemption_grace_s!r}.")
  if config.optim.lr <= 0:
    raise ConfigError(f"config.optim.lr must be positive, got {config.optim.lr!r}.")
  source, topk, grid = config.proposals.source, config.proposals.topk, config.proposals.grid
  if source == "breast_only" and topk != 1:
    raise ConfigError("config.proposals.source='breast_only' needs config.proposals.topk=1.")
  if source == "grid" and (topk != grid * grid + 1 or not config.proposals.anchor):
    raise ConfigError(f"config.proposals.source='grid' with grid={grid} gives {grid * grid}"
                      f" tiles after the breast anchor: set config.proposals.topk={grid * grid + 1}"
                      " and config.proposals.anchor=True.")
  if source == "detector" and not config.proposals.get("detector"):
    raise ConfigError("config.proposals.source='detector' needs config.proposals.detector: the"
                      " workdir of a trained detector.")
  if source not in ("files", "detector") and not config.proposals.anchor:
    raise ConfigError("config.proposals.anchor=False (the top-k boxes as they are, as the"
                      " reference does) needs proposals.source 'files' or 'detector'.")
  if not 1 <= config.model.pool_attn_block <= 3:
    raise ConfigError("config.model.pool_attn_block must be 1, 2 or 3 (an aggregator block),"
                      f" got {config.model.pool_attn_block!r}.")
  for name in ("mesh.data", "mesh.fsdp"):
    value = config.mesh[name.split(".")[1]]
    if not isinstance(value, int) or (value < 1 and not (name == "mesh.data" and value == -1)):
      raise ConfigError(f"config.{name} must be a positive integer (mesh.data may be -1: all"
                        f" devices), got {value!r}.")
  try:  # The model's own checks (patch size, detector levels, ...), without building it.
    tasks.get(config).check()
  except (ValueError, TypeError, KeyError) as e:
    raise ConfigError(f"config.model / config.detector: {e}") from None
  try:  # A converted backbone that is missing or of another size: a second, not a minute.
    build.pretrained_vit(config)
  except DataError as e:
    raise ConfigError(f"config.model.pretrained={e.path}: {e.reason}.") from None
