"""What every part of the synthetic generator shares: its error, argument checks, seed tag and
the image vocabulary (lateralities, views, the smallest size)."""

from __future__ import annotations

import numpy as np

MANUFACTURER = "attend_jax synthetic"
MIN_SIZE = 64  # Below this the lesions no longer fit inside the breast.
LATERALITIES = ("L", "R")
VIEWS = ("CC", "MLO")
SEED_TAG = 0x5E7A  # Keeps these streams apart from other seeded users of the same seed.


class SyntheticError(ValueError):
  """Generator arguments that cannot work, or an output folder that cannot take a dataset."""


def check(ok: bool, message: str) -> None:
  if not ok:
    raise SyntheticError(message)


def check_seed(seed) -> None:
  check(isinstance(seed, (int, np.integer)) and seed >= 0,
        f"seed {seed!r} is not a non-negative integer")
