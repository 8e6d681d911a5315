"""Synthetic breast anatomy: the breast outline, fibroglandular texture, skin line and
pectoral muscle of one view, with its findings drawn in; ``phantom`` renders one in memory."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.special import expit

from attend_jax.data.synthetic import lesions as lesion_lib
from attend_jax.data.synthetic.base import (LATERALITIES, MIN_SIZE, SEED_TAG, VIEWS, check,
                                            check_seed)


@dataclasses.dataclass(frozen=True, eq=False)
class Phantom:
  image: np.ndarray  # (H, W) float32 in [0, 1], dense tissue bright, air exactly 0 (not on film).
  breast: np.ndarray  # (H, W) bool, the tissue (muscle included).
  lesions: tuple[lesion_lib.Lesion, ...]


def _power_law_noise(rng: np.random.Generator, h: int, w: int,
                     betas: Sequence[float]) -> list[np.ndarray]:
  """Unit-variance noises from one white field, each with a 1/f^beta power spectrum.

  Breast tissue measures beta ~ 3 (the large structures); lower betas add the fine detail.
  """
  fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
  fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
  # The low cut keeps the largest blobs at about a third of the image.
  f = np.maximum(np.hypot(fy, fx), np.float32(3.0 / max(h, w)))
  white = np.fft.rfft2(rng.standard_normal((h, w), dtype=np.float32))
  noises = []
  for beta in betas:
    spectrum = white * f ** (-beta / 2)
    spectrum[0, 0] = 0
    noise = np.fft.irfft2(spectrum, s=(h, w))
    noises.append((noise / noise.std()).astype(np.float32))
  return noises


def _place(rng, safe, stride, h, w, depth_x, box_half) -> tuple[float, float]:
  """A centre whose box lies well inside ``safe`` (a strided mask), near x = depth_x."""
  dist = ndimage.distance_transform_edt(safe) * stride
  ok = dist > 1.45 * box_half + 2 * stride
  if not ok.any():
    # A breast too small for this lesion: take its deepest point rather than fail.
    ok = dist >= dist.max()
  ys, xs = np.nonzero(ok)
  near = np.abs(xs * stride - depth_x) < 0.08 * w
  if near.any():
    ys, xs = ys[near], xs[near]
  i = rng.integers(ys.size)
  cy = min(ys[i] * stride + rng.uniform(0, stride), h - 1)
  cx = min(xs[i] * stride + rng.uniform(0, stride), w - 1)
  return float(cy), float(cx)


def draw(rng: np.random.Generator, h: int, w: int, laterality: str, view: str,
            findings: Sequence[lesion_lib.Finding], density: float) -> Phantom:
  """Draws with the chest wall at the left edge (an R breast), then mirrors L breasts."""
  y = np.arange(h, dtype=np.float32)[:, None]
  x = np.arange(w, dtype=np.float32)[None, :]
  depth = w * rng.uniform(0.62, 0.86)
  if view == "CC":
    cy = h * rng.uniform(0.45, 0.55)
    half = h * rng.uniform(0.36, 0.45)
    r = np.hypot(x / depth, (y - cy) / half)
  else:
    # MLO: a rounded lower bulge below the nipple line, and above it an outline that narrows
    # to the axilla, which reaches the top edge.
    cy = h * rng.uniform(0.52, 0.62)
    half = (h - cy) * rng.uniform(0.75, 0.92)
    top = depth * rng.uniform(0.3, 0.45)
    width_at = top + (depth - top) * np.sqrt(np.clip(1 - ((cy - y) / cy) ** 2, 0, 1))
    r = np.where(y < cy, x / width_at, np.hypot(x / depth, (y - cy) / half))
  outline_angle = np.arctan2(y - cy, x + 1.0)
  wobble = np.ones_like(outline_angle)
  for k in range(2, 6):
    wobble += rng.uniform(0, 0.025) * np.cos(k * outline_angle + rng.uniform(0, 2 * np.pi))
  r = (r / wobble).astype(np.float32)
  breast = r < 1.0

  # Path length through the rounded, compressed edge: a quarter circle over the falloff band.
  t = np.clip((1.0 - r) / rng.uniform(0.06, 0.12), 0.0, 1.0)
  thickness = np.sqrt(t * (2.0 - t))

  texture, fine = _power_law_noise(rng, h, w, betas=(3.0, 1.8))
  # Ducts and Cooper's ligaments converge on the nipple: noise along the angle seen from it.
  duct_profile = ndimage.gaussian_filter1d(rng.standard_normal(360), 1.0, mode="wrap")
  ducts = np.interp(np.arctan2(y - cy, depth - x), np.linspace(-np.pi, np.pi, 360),
                    duct_profile / duct_profile.std()).astype(np.float32)
  u, v = x / depth, (y - cy) / (0.45 * h)
  envelope = np.exp(-((u - 0.5) / 0.38) ** 2 - (v / 0.6) ** 2)
  gland = expit(2.2 * (0.75 * texture + 0.45 * ducts + 0.15 * fine)
                + 5.0 * (density - 0.5) + 4.0 * (envelope - 0.55))
  gland *= np.clip((0.95 - r) / 0.25, 0.0, 1.0)  # Subcutaneous fat has no glands.
  fat, dense = rng.uniform(0.2, 0.28), rng.uniform(0.24, 0.32)
  image = thickness * (fat + dense * gland + 0.025 * fine * (0.4 + gland))
  image += 0.05 * np.exp(-((r - 0.985) / 0.01) ** 2) * breast  # Skin line.

  safe = r < 0.8
  if view == "MLO":
    pw, ph = top * rng.uniform(0.55, 0.8), h * rng.uniform(0.35, 0.6)
    edge = x / pw + y / ph - 1.0 - rng.uniform(0.0, 0.3) * (x / pw) * (y / ph)
    sharpness = 1.0 / (1.5 * np.hypot(1 / pw, 1 / ph))  # About 1.5 px of blur.
    muscle = expit(-edge * sharpness)
    level = rng.uniform(0.62, 0.74) + 0.03 * texture
    image = image * (1 - muscle) + muscle * level * thickness
    safe &= edge > 0.15

  lesions = []
  stride = max(1, -(-max(h, w) // 256))  # Placement works on a grid of <= 256 px.
  safe_grid = safe[::stride, ::stride].copy()
  for finding in findings:
    radius, reach = lesion_lib.radius_px(finding, h), lesion_lib.reach(finding, h)
    box_half = reach if finding.kind in lesion_lib.CALCIFICATIONS else 1.2 * radius
    cy_l, cx_l = _place(rng, safe_grid, stride, h, w, finding.depth * depth, box_half)
    x0, x1 = max(0, int(cx_l - reach)), min(w, int(cx_l + reach) + 1)
    y0, y1 = max(0, int(cy_l - reach)), min(h, int(cy_l + reach) + 1)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx_l
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy_l
    dx, dy = np.broadcast_arrays(dx, dy)
    patch, ext = lesion_lib.draw(rng, finding, dx, dy, h)
    region = image[y0:y1, x0:x1]
    if finding.kind not in lesion_lib.CALCIFICATIONS:
      # A mass displaces fat: under it the tissue is at least fully glandular, so it shows
      # against dense surroundings too.
      glandular = thickness[y0:y1, x0:x1] * (fat + dense)
      region += patch / finding.contrast * np.maximum(glandular - region, 0.0)
    region += patch * thickness[y0:y1, x0:x1]
    box = (max(0, int(np.floor(cx_l + ext[0]))), max(0, int(np.floor(cy_l + ext[1]))),
           min(w, int(np.ceil(cx_l + ext[2])) + 1), min(h, int(np.ceil(cy_l + ext[3])) + 1))
    lesions.append(lesion_lib.Lesion(box, finding.kind))
    # Keep a second finding off the first.
    gx0, gy0 = max(0, int(cx_l - reach) // stride), max(0, int(cy_l - reach) // stride)
    safe_grid[gy0:int(cy_l + reach) // stride + 1, gx0:int(cx_l + reach) // stride + 1] = False

  # Quantum noise grows with the signal; air stays exactly black.
  noise = rng.standard_normal((h, w), dtype=np.float32)
  image += noise * (0.004 + 0.012 * np.sqrt(np.maximum(image, 0.0)))
  image = np.where(breast, np.clip(image, 0.0, 1.0), 0.0).astype(np.float32)
  if laterality == "L":
    image, breast = image[:, ::-1].copy(), breast[:, ::-1].copy()
    lesions = [lesion_lib.Lesion((w - l.box[2], l.box[1], w - l.box[0], l.box[3]), l.kind)
               for l in lesions]
  return Phantom(image, breast, tuple(lesions))


def phantom(height: int, width: int | None = None, *, laterality: str = "R", view: str = "CC",
            kinds: Sequence[str] = (), density: float = 0.5, seed: int = 0) -> Phantom:
  """One image in memory, with a lesion of each of ``kinds``; width defaults to 0.8 x height."""
  width = round(0.8 * height) if width is None else width
  check(height >= MIN_SIZE and 2 * width >= MIN_SIZE,
         f"image {height} x {width} is too small (height >= {MIN_SIZE}, width >= {MIN_SIZE // 2})")
  check(laterality in LATERALITIES, f"laterality {laterality!r} is not one of {LATERALITIES}")
  check(view in VIEWS, f"view {view!r} is not one of {VIEWS}")
  check(all(k in lesion_lib.KINDS for k in kinds),
        f"unknown lesion kind in {list(kinds)}; known: {lesion_lib.KINDS}")
  check(0.0 <= density <= 1.0, f"density {density} is outside [0, 1]")
  check_seed(seed)
  rng = np.random.default_rng([SEED_TAG, seed])
  findings = [lesion_lib.draw_finding(rng, k) for k in kinds]
  return draw(rng, height, width, laterality, view, findings, density)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
