"""Synthetic lesions: the finding kinds, their random draws and the density patches that draw
them, in the default mode (the kind decides the look) and the fine-grained mode (one malignancy
number between benign and malignant)."""

from __future__ import annotations

import dataclasses

import numpy as np

SPICULATED_MASS = "spiculated_mass"
CALCIFICATION_CLUSTER = "calcification_cluster"
ROUND_MASS = "round_mass"
BENIGN_CALCIFICATIONS = "benign_calcifications"  # Fine-grained mode only.
MALIGNANT_KINDS = (SPICULATED_MASS, CALCIFICATION_CLUSTER)
KINDS = MALIGNANT_KINDS + (ROUND_MASS,)  # The default renderers'.
BENIGN_KINDS = (ROUND_MASS, BENIGN_CALCIFICATIONS)  # The fine-grained mode's look-alikes.
CALCIFICATIONS = (CALCIFICATION_CLUSTER, BENIGN_CALCIFICATIONS)


@dataclasses.dataclass(frozen=True)
class Lesion:
  box: tuple[int, int, int, int]  # x0, y0, x1, y1; x1 and y1 exclusive.
  kind: str  # One of KINDS.

  def to_json(self) -> dict:
    return {"box": list(self.box), "kind": self.kind}


@dataclasses.dataclass(frozen=True)
class Finding:
  kind: str
  size: float  # Radius (masses) or cluster radius, as a fraction of the image height.
  contrast: float  # Density added at the centre, in display units.
  depth: float  # Distance from the chest wall as a fraction of the breast's depth.
  # Fine-grained mode: how malignant the finding looks, 0 (benign) .. 1; None: the default
  # renderers, where the kind alone decides.
  malignancy: float | None = None


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
  t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def draw_finding(rng: np.random.Generator, kind: str) -> Finding:
  size, contrast = {
      SPICULATED_MASS: ((0.022, 0.045), (0.12, 0.24)),
      ROUND_MASS: ((0.02, 0.04), (0.1, 0.22)),
      CALCIFICATION_CLUSTER: ((0.015, 0.03), (0.35, 0.6)),
  }[kind]
  return Finding(kind, rng.uniform(*size), rng.uniform(*contrast), rng.uniform(0.3, 0.75))


def _round_mass(rng, dx, dy, radius, contrast):
  rx, ry = radius * rng.uniform(0.85, 1.15, 2)
  phi = rng.uniform(0, np.pi)
  c, s = np.cos(phi), np.sin(phi)
  q2 = ((dx * c + dy * s) / rx) ** 2 + ((dy * c - dx * s) / ry) ** 2
  # Flat-topped dome with a sharp margin: benign masses are well circumscribed.
  patch = contrast * np.clip(1.0 - q2, 0.0, 1.0) ** 0.35
  hx, hy = np.hypot(rx * c, ry * s), np.hypot(rx * s, ry * c)
  return patch, (-hx, -hy, hx, hy)


def _spiculated_mass(rng, dx, dy, radius, contrast):
  angle = np.arctan2(dy, dx)
  k = np.arange(2, 12)
  amp = rng.uniform(0.0, 0.22, k.size) / k**0.8
  phase = rng.uniform(0, 2 * np.pi, k.size)
  outline = np.ones_like(angle)
  for ki, ai, pi in zip(k, amp, phase):
    outline += ai * np.cos(ki * angle + pi)
  outline *= radius
  q = np.hypot(dx, dy) / outline
  # A dense centre with an ill-defined margin, unlike the benign masses.
  patch = contrast * (0.65 * np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0))
                      + 0.35 * (1.0 - _smoothstep(0.5, 1.25, q)))
  spicules = np.zeros_like(patch)
  n = rng.integers(10, 25)
  for theta, length, width, bend, strength in zip(
      rng.uniform(0, 2 * np.pi, n), radius * rng.uniform(1.5, 3.0, n),
      np.maximum(0.6, radius * rng.uniform(0.04, 0.08, n)), rng.normal(0, 0.15, n),
      rng.uniform(0.6, 1.0, n)):
    frac = (dx * np.cos(theta) + dy * np.sin(theta)) / length
    # Slightly curved: the offset grows with the square of the distance along the spicule.
    perp = dy * np.cos(theta) - dx * np.sin(theta) - bend * length * frac * frac
    taper = np.clip(1.0 - frac, 0.0, 1.0) * (frac > 0)
    line = strength * np.exp(-(perp / (width * taper + 0.35)) ** 2) * np.sqrt(taper)
    np.maximum(spicules, line, out=spicules)
  np.maximum(patch, contrast * rng.uniform(0.6, 0.85) * spicules, out=patch)
  # The box frames the core, as radiologists draw them; spicules reach beyond it.
  r = float(outline.max())
  return patch, (-r, -r, r, r)


def _calcification_cluster(rng, dx, dy, radius, contrast, speck_sigma):
  n = rng.integers(5, 21)
  rho, theta = radius * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
  px, py = rho * np.cos(theta), rho * np.sin(theta)
  sigma = speck_sigma * rng.uniform(0.8, 1.6, n)
  patch = np.zeros_like(dx)
  for x, y, s, a in zip(px, py, sigma, contrast * rng.uniform(0.6, 1.0, n)):
    patch += a * np.exp(-((dx - x) ** 2 + (dy - y) ** 2) / (2 * s * s))
  np.minimum(patch, 1.2 * contrast, out=patch)
  m = 2 * sigma
  return patch, (float((px - m).min()), float((py - m).min()),
                 float((px + m).max()), float((py + m).max()))


# ---------------------------------------------------------------------------------------------
# Fine-grained mode: benign and malignant findings drawn by the same functions from the same
# random draws, apart by one number, the finding's malignancy m (the dataset's ``difference``
# for cancers, 0 for look-alikes). At m = 0 a cancer is drawn exactly as a benign finding.


def _fine_mass(rng, dx, dy, radius, contrast, m):
  """A mass between benign (m = 0: an oval with a sharp margin) and malignant (m = 1: a lobulated
  outline, an ill-defined margin and radiating spicules)."""
  rx, ry = radius * rng.uniform(0.85, 1.15, 2)
  phi = rng.uniform(0, np.pi)
  k = np.arange(2, 12)
  amp, phase = rng.uniform(0.0, 0.22, k.size) / k**0.8, rng.uniform(0, 2 * np.pi, k.size)
  n = 25
  spicules = (rng.uniform(0, 2 * np.pi, n), rng.uniform(1.5, 3.0, n), rng.uniform(0.04, 0.08, n),
              rng.normal(0, 0.15, n), rng.uniform(0.6, 1.0, n))
  count, level = rng.integers(10, 26), rng.uniform(0.6, 0.85)
  c, s = np.cos(phi), np.sin(phi)
  u, v = (dx * c + dy * s) / rx, (dy * c - dx * s) / ry
  angle = np.arctan2(v, u)
  outline = 1.0 + m * sum(a * np.cos(ki * angle + p) for ki, a, p in zip(k, amp, phase))
  q = np.hypot(u, v) / outline
  sharp = np.clip(1.0 - q * q, 0.0, 1.0) ** 0.35
  blurred = 0.65 * np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0)) + 0.35 * (1.0 - _smoothstep(0.5, 1.25, q))
  patch = contrast * ((1.0 - m) * sharp + m * blurred)
  if m > 0:
    lines = np.zeros_like(patch)
    for theta, length, width, bend, strength in zip(*(p[:count] for p in spicules)):
      length, width = radius * length, max(0.6, radius * width)
      frac = (dx * np.cos(theta) + dy * np.sin(theta)) / length
      perp = dy * np.cos(theta) - dx * np.sin(theta) - bend * length * frac * frac
      taper = np.clip(1.0 - frac, 0.0, 1.0) * (frac > 0)
      np.maximum(lines, strength * np.exp(-(perp / (width * taper + 0.35)) ** 2) * np.sqrt(taper),
                 out=lines)
    np.maximum(patch, m * contrast * level * lines, out=patch)
  # The box frames the core outline, as radiologists draw it.
  t = np.linspace(-np.pi, np.pi, 181)
  r = 1.0 + m * sum(a * np.cos(ki * t + p) for ki, a, p in zip(k, amp, phase))
  ox, oy = r * np.cos(t) * rx, r * np.sin(t) * ry
  xs, ys = ox * c - oy * s, ox * s + oy * c
  return patch, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def _fine_calcifications(rng, dx, dy, radius, contrast, speck_sigma, m):
  """Calcifications between benign (m = 0: a few coarse, round, even specks, scattered) and
  malignant (m = 1: many fine, elongated, uneven specks in a tight cluster)."""
  u = rng.uniform()
  n = int(round((3 + 5 * u) * (1 - m) + (8 + 12 * u) * m))
  rho, theta = np.sqrt(rng.uniform(0, 1, 20)), rng.uniform(0, 2 * np.pi, 20)
  spread = radius * (2.0 - m)
  px, py = (spread * rho * np.cos(theta))[:n], (spread * rho * np.sin(theta))[:n]
  size = speck_sigma * rng.uniform(0.8, 1.6, 20)[:n] * (2.5 - 1.5 * m)
  aspect = 1.0 + m * rng.uniform(0.0, 1.5, 20)[:n]
  turn = rng.uniform(0, np.pi, 20)[:n]
  brightness = contrast * (1.0 - 0.4 * m * rng.uniform(0, 1, 20)[:n])
  patch = np.zeros_like(dx)
  for x, y, sz, a, phi, b in zip(px, py, size, aspect, turn, brightness):
    ax = (dx - x) * np.cos(phi) + (dy - y) * np.sin(phi)
    ay = (dy - y) * np.cos(phi) - (dx - x) * np.sin(phi)
    patch += b * np.exp(-(ax * ax / (a * a) + ay * ay) / (2 * sz * sz))
  np.minimum(patch, 1.2 * contrast, out=patch)
  reach = 2 * size * aspect
  return patch, (float((px - reach).min()), float((py - reach).min()),
                 float((px + reach).max()), float((py + reach).max()))


def draw_fine(rng: np.random.Generator, kind: str, difference: float) -> Finding:
  """A fine-grained finding: size and contrast from one range per type (mass or
  calcifications), whatever its class, so that only its look tells."""
  calc = kind in CALCIFICATIONS
  size, contrast = ((0.015, 0.03), (0.35, 0.6)) if calc else ((0.02, 0.045), (0.11, 0.23))
  return Finding(kind, rng.uniform(*size), rng.uniform(*contrast), rng.uniform(0.3, 0.75),
                  malignancy=difference if kind in MALIGNANT_KINDS else 0.0)


def reach(finding: Finding, h: int) -> float:
  """Half-size of the window a finding draws into, in pixels."""
  radius = radius_px(finding, h)
  m = finding.malignancy
  if m is not None:  # Fine-grained: spicules grow with m; benign calcifications spread wider.
    if finding.kind in CALCIFICATIONS:
      return (2.0 - m) * radius + 4 * 2.5 * _speck_sigma(h) + 2
    return (1.25 + 1.95 * m) * radius + 2
  return {SPICULATED_MASS: 3.2 * radius, ROUND_MASS: 1.25 * radius,
          CALCIFICATION_CLUSTER: radius + 4 * _speck_sigma(h)}[finding.kind] + 2


def radius_px(finding: Finding, h: int) -> float:
  return max(4.0, finding.size * h)


def _speck_sigma(h: int) -> float:
  # Real specks are 0.1-0.5 mm; at small sizes they stay a pixel wide so they remain visible.
  return max(0.6, 0.8 * h / 1500)


def draw(rng: np.random.Generator, finding: Finding, dx: np.ndarray, dy: np.ndarray,
         h: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
  """The finding's density over offsets ``dx``, ``dy`` from its centre in an image ``h`` pixels
  high, and its box (x0, y0, x1, y1) relative to the centre."""
  radius = radius_px(finding, h)
  if finding.malignancy is not None and finding.kind in CALCIFICATIONS:
    return _fine_calcifications(rng, dx, dy, radius, finding.contrast, _speck_sigma(h),
                                finding.malignancy)
  if finding.malignancy is not None:
    return _fine_mass(rng, dx, dy, radius, finding.contrast, finding.malignancy)
  if finding.kind == ROUND_MASS:
    return _round_mass(rng, dx, dy, radius, finding.contrast)
  if finding.kind == SPICULATED_MASS:
    return _spiculated_mass(rng, dx, dy, radius, finding.contrast)
  return _calcification_cluster(rng, dx, dy, radius, finding.contrast, _speck_sigma(h))
