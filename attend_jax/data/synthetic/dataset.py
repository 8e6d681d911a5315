"""Synthetic mammograms: seeded, deterministic MG DICOM files with labels and lesion boxes.

The demo, the tests and the notebooks use this dataset when no real one is at hand. Every file
is a valid "Digital Mammography X-Ray Image - For Presentation" object, and a run mixes what
real archives mix: MONOCHROME1 and MONOCHROME2, BitsStored 12, 14 and 16, Explicit VR Little
Endian and JPEG 2000 lossless, full-range windows and windows a reader must apply (the tissue
then fills only part of the stored range), and image sizes.

The picture, in display convention (dense tissue bright):

- The breast touches the chest wall at one side edge: an R breast at the left edge, facing
  right; an L breast at the right edge, facing left. Lateral (CC) and axilla (MLO) are at the
  top, so PatientOrientation is A\\L (R CC), P\\R (L CC), A\\FL (R MLO) and P\\FR (L MLO).
- Air is black. The tissue fades out over a skin-line falloff; the fibroglandular pattern is
  1/f^3 noise plus streaks converging to the nipple, thresholded by a per-patient density.
- MLO views add the pectoral muscle, a bright triangle in the upper corner at the chest wall.
- Malignant breasts (label 1) carry spiculated masses (irregular core and thin radiating
  spicules) or microcalcification clusters; benign breasts carry round, smooth,
  well-circumscribed masses; normal breasts carry nothing. A breast's findings show in both its
  CC and MLO at the same distance from the chest wall.
- Film mode (``film_fraction``) makes studies look like digitised screen film (DDSM): fog,
  grain and scanner bands, bright film edges on 1 to 3 sides, burned-in labels ("RMLO") and
  markers; 16-bit RLE Lossless files without laterality, view or VOI tags, laterality and view
  in the file name. labels.csv then also records each image's true breast box and the label
  boxes, which the breast-crop tests check ``breast.find_breast`` against.

``generate`` writes ``<out>/images/<study_id>/<image_id>.dcm`` (4 images per study: CC and MLO
of each breast) and ``<out>/labels.csv`` with the columns in ``LABEL_COLUMNS``; ``lesions`` is a
JSON list of ``{"box": [x0, y0, x1, y1], "kind": ...}``. Boxes are in stored-image pixels, with
x1 and y1 exclusive: ``pixels[y0:y1, x0:x1]`` holds the lesion. ``phantom`` renders one image in
memory. The same seed gives byte-identical files with the same numpy, openjpeg and Pillow
versions.

``generate`` is ``plan`` (the draws, one ``ImageJob`` per image), ``render`` (pixels and truth)
and ``dicom_dataset`` (the file); ``attend_jax.data.layouts`` writes the same studies as the real
datasets ship them (CBIS-DDSM, VinDr-Mammo, RSNA, the reference's CSVs) with these pieces.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import uuid
import zlib
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from scipy import ndimage
from scipy.special import expit

from attend_jax.data import breast as breast_lib
from attend_jax.data import pool as pool_lib

SPICULATED_MASS = "spiculated_mass"
CALCIFICATION_CLUSTER = "calcification_cluster"
ROUND_MASS = "round_mass"
BENIGN_CALCIFICATIONS = "benign_calcifications"  # Fine-grained mode only.
MALIGNANT_KINDS = (SPICULATED_MASS, CALCIFICATION_CLUSTER)
KINDS = MALIGNANT_KINDS + (ROUND_MASS,)  # The default renderers'.
BENIGN_KINDS = (ROUND_MASS, BENIGN_CALCIFICATIONS)  # The fine-grained mode's look-alikes.
_CALCIFICATIONS = (CALCIFICATION_CLUSTER, BENIGN_CALCIFICATIONS)

LABEL_COLUMNS = ("image_id", "study_id", "patient_id", "laterality", "view", "label", "path",
                 "width", "height", "photometric", "bits_stored", "transfer_syntax", "lesions")
# Written after LABEL_COLUMNS when film_fraction > 0, so datasets without film stay as before.
FILM_COLUMNS = ("film", "breast_box", "label_boxes")
TEXT, MARKER = "text", "marker"  # Annotation kinds.
MANUFACTURER = "attend_jax synthetic"
MIN_SIZE = 64  # Below this the lesions no longer fit inside the breast.

_LATERALITIES = ("L", "R")
_VIEWS = ("CC", "MLO")
_BITS = (12, 14, 16)
_ASPECTS = (0.77, 0.8, 0.83)  # Width / height of common full-field detectors.
_DETECTOR_HEIGHT_MM = 300.0  # 0.1 mm pixels at 3000 px.
_SEED_TAG = 0x5E7A  # Keeps these streams apart from other seeded users of the same seed.
_ORIENTATION = {("R", "CC"): ["A", "L"], ("L", "CC"): ["P", "R"],
                ("R", "MLO"): ["A", "FL"], ("L", "MLO"): ["P", "FR"]}
_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


class SyntheticError(ValueError):
  """Generator arguments that cannot work, or an output folder that cannot take a dataset."""


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise SyntheticError(message)


def _check_seed(seed) -> None:
  _check(isinstance(seed, (int, np.integer)) and seed >= 0,
         f"seed {seed!r} is not a non-negative integer")


@dataclasses.dataclass(frozen=True)
class Lesion:
  box: tuple[int, int, int, int]  # x0, y0, x1, y1; x1 and y1 exclusive.
  kind: str  # One of KINDS.

  def to_json(self) -> dict:
    return {"box": list(self.box), "kind": self.kind}


@dataclasses.dataclass(frozen=True)
class Annotation:
  """A burned-in film label (``text``) or a bright marker, in the background of a film image."""

  box: tuple[int, int, int, int]  # x0, y0, x1, y1 of its bright pixels; x1 and y1 exclusive.
  kind: str  # TEXT or MARKER.
  text: str = ""  # The label, e.g. "RMLO"; empty for markers.

  def to_json(self) -> dict:
    return {"box": list(self.box), "kind": self.kind, "text": self.text}


@dataclasses.dataclass(frozen=True, eq=False)
class Phantom:
  image: np.ndarray  # (H, W) float32 in [0, 1], dense tissue bright, air exactly 0 (not on film).
  breast: np.ndarray  # (H, W) bool, the tissue (muscle included).
  lesions: tuple[Lesion, ...]


@dataclasses.dataclass(frozen=True)
class SyntheticImage:
  """One row of labels.csv."""

  image_id: str
  study_id: str
  patient_id: str
  laterality: str  # "L" / "R"
  view: str  # "CC" / "MLO"
  label: int  # 1 = malignant.
  path: str  # Relative to the dataset folder.
  width: int
  height: int
  photometric: str  # "MONOCHROME1" / "MONOCHROME2"
  bits_stored: int
  transfer_syntax: str  # UID.
  lesions: tuple[Lesion, ...]
  film: bool = False  # A digitised-film image (see ``_film``).
  # The tissue's x0, y0, x1, y1 before film edges and labels; recorded when film_fraction > 0.
  breast_box: tuple[int, int, int, int] | None = None
  label_boxes: tuple[Annotation, ...] = ()  # Film labels and markers.

  def row(self) -> dict[str, str]:
    """The LABEL_COLUMNS and FILM_COLUMNS values; the writer keeps the columns it writes."""
    row = {c: str(getattr(self, c)) for c in LABEL_COLUMNS}
    row["lesions"] = json.dumps([l.to_json() for l in self.lesions], separators=(",", ":"))
    row["film"] = str(int(self.film))
    row["breast_box"] = ("" if self.breast_box is None
                         else json.dumps(list(self.breast_box), separators=(",", ":")))
    row["label_boxes"] = json.dumps([a.to_json() for a in self.label_boxes],
                                    separators=(",", ":"))
    return row


@dataclasses.dataclass(frozen=True)
class _Finding:
  kind: str
  size: float  # Radius (masses) or cluster radius, as a fraction of the image height.
  contrast: float  # Density added at the centre, in display units.
  depth: float  # Distance from the chest wall as a fraction of the breast's depth.
  # Fine-grained mode: how malignant the finding looks, 0 (benign) .. 1; None: the default
  # renderers, where the kind alone decides.
  malignancy: float | None = None


# ---------------------------------------------------------------------------------------------
# Rendering.


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
  t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


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


def _draw_finding(rng: np.random.Generator, kind: str) -> _Finding:
  size, contrast = {
      SPICULATED_MASS: ((0.022, 0.045), (0.12, 0.24)),
      ROUND_MASS: ((0.02, 0.04), (0.1, 0.22)),
      CALCIFICATION_CLUSTER: ((0.015, 0.03), (0.35, 0.6)),
  }[kind]
  return _Finding(kind, rng.uniform(*size), rng.uniform(*contrast), rng.uniform(0.3, 0.75))


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


def _draw_fine(rng: np.random.Generator, kind: str, difference: float) -> _Finding:
  """A fine-grained finding: size and contrast from one range per type (mass or
  calcifications), whatever its class, so that only its look tells."""
  calc = kind in _CALCIFICATIONS
  size, contrast = ((0.015, 0.03), (0.35, 0.6)) if calc else ((0.02, 0.045), (0.11, 0.23))
  return _Finding(kind, rng.uniform(*size), rng.uniform(*contrast), rng.uniform(0.3, 0.75),
                  malignancy=difference if kind in MALIGNANT_KINDS else 0.0)


def _fine_kinds(rng: np.random.Generator, cls: str, lookalike_fraction: float) -> list[str]:
  """A malignant breast: one cancer (a mass 60 %), and with ``lookalike_fraction`` a benign
  look-alike of either type beside it; a benign breast: one or two benign findings."""
  benign = lambda: BENIGN_KINDS[int(rng.uniform() < 0.5)]  # noqa: E731
  if cls == "malignant":
    kinds = [MALIGNANT_KINDS[int(rng.uniform() < 0.4)]]
    return kinds + [benign()] * int(rng.uniform() < lookalike_fraction)
  if cls == "benign":
    return [benign() for _ in range(1 + int(rng.uniform() < 0.2))]
  return []


def _reach(finding: _Finding, h: int) -> float:
  """Half-size of the window a finding draws into, in pixels."""
  radius = _radius_px(finding, h)
  m = finding.malignancy
  if m is not None:  # Fine-grained: spicules grow with m; benign calcifications spread wider.
    if finding.kind in _CALCIFICATIONS:
      return (2.0 - m) * radius + 4 * 2.5 * _speck_sigma(h) + 2
    return (1.25 + 1.95 * m) * radius + 2
  return {SPICULATED_MASS: 3.2 * radius, ROUND_MASS: 1.25 * radius,
          CALCIFICATION_CLUSTER: radius + 4 * _speck_sigma(h)}[finding.kind] + 2


def _radius_px(finding: _Finding, h: int) -> float:
  return max(4.0, finding.size * h)


def _speck_sigma(h: int) -> float:
  # Real specks are 0.1-0.5 mm; at small sizes they stay a pixel wide so they remain visible.
  return max(0.6, 0.8 * h / 1500)


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


def _render(rng: np.random.Generator, h: int, w: int, laterality: str, view: str,
            findings: Sequence[_Finding], density: float) -> Phantom:
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
    radius, reach = _radius_px(finding, h), _reach(finding, h)
    box_half = reach if finding.kind in _CALCIFICATIONS else 1.2 * radius
    cy_l, cx_l = _place(rng, safe_grid, stride, h, w, finding.depth * depth, box_half)
    x0, x1 = max(0, int(cx_l - reach)), min(w, int(cx_l + reach) + 1)
    y0, y1 = max(0, int(cy_l - reach)), min(h, int(cy_l + reach) + 1)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx_l
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy_l
    dx, dy = np.broadcast_arrays(dx, dy)
    if finding.malignancy is not None and finding.kind in _CALCIFICATIONS:
      patch, ext = _fine_calcifications(rng, dx, dy, radius, finding.contrast, _speck_sigma(h),
                                        finding.malignancy)
    elif finding.malignancy is not None:
      patch, ext = _fine_mass(rng, dx, dy, radius, finding.contrast, finding.malignancy)
    elif finding.kind == ROUND_MASS:
      patch, ext = _round_mass(rng, dx, dy, radius, finding.contrast)
    elif finding.kind == SPICULATED_MASS:
      patch, ext = _spiculated_mass(rng, dx, dy, radius, finding.contrast)
    else:
      patch, ext = _calcification_cluster(rng, dx, dy, radius, finding.contrast, _speck_sigma(h))
    region = image[y0:y1, x0:x1]
    if finding.kind not in _CALCIFICATIONS:
      # A mass displaces fat: under it the tissue is at least fully glandular, so it shows
      # against dense surroundings too.
      glandular = thickness[y0:y1, x0:x1] * (fat + dense)
      region += patch / finding.contrast * np.maximum(glandular - region, 0.0)
    region += patch * thickness[y0:y1, x0:x1]
    box = (max(0, int(np.floor(cx_l + ext[0]))), max(0, int(np.floor(cy_l + ext[1]))),
           min(w, int(np.ceil(cx_l + ext[2])) + 1), min(h, int(np.ceil(cy_l + ext[3])) + 1))
    lesions.append(Lesion(box, finding.kind))
    # Keep a second finding off the first.
    gx0, gy0 = max(0, int(cx_l - reach) // stride), max(0, int(cy_l - reach) // stride)
    safe_grid[gy0:int(cy_l + reach) // stride + 1, gx0:int(cx_l + reach) // stride + 1] = False

  # Quantum noise grows with the signal; air stays exactly black.
  noise = rng.standard_normal((h, w), dtype=np.float32)
  image += noise * (0.004 + 0.012 * np.sqrt(np.maximum(image, 0.0)))
  image = np.where(breast, np.clip(image, 0.0, 1.0), 0.0).astype(np.float32)
  if laterality == "L":
    image, breast = image[:, ::-1].copy(), breast[:, ::-1].copy()
    lesions = [Lesion((w - l.box[2], l.box[1], w - l.box[0], l.box[3]), l.kind) for l in lesions]
  return Phantom(image, breast, tuple(lesions))


def phantom(height: int, width: int | None = None, *, laterality: str = "R", view: str = "CC",
            kinds: Sequence[str] = (), density: float = 0.5, seed: int = 0) -> Phantom:
  """One image in memory, with a lesion of each of ``kinds``; width defaults to 0.8 x height."""
  width = round(0.8 * height) if width is None else width
  _check(height >= MIN_SIZE and 2 * width >= MIN_SIZE,
         f"image {height} x {width} is too small (height >= {MIN_SIZE}, width >= {MIN_SIZE // 2})")
  _check(laterality in _LATERALITIES, f"laterality {laterality!r} is not one of {_LATERALITIES}")
  _check(view in _VIEWS, f"view {view!r} is not one of {_VIEWS}")
  _check(all(k in KINDS for k in kinds), f"unknown lesion kind in {list(kinds)}; known: {KINDS}")
  _check(0.0 <= density <= 1.0, f"density {density} is outside [0, 1]")
  _check_seed(seed)
  rng = np.random.default_rng([_SEED_TAG, seed])
  findings = [_draw_finding(rng, k) for k in kinds]
  return _render(rng, height, width, laterality, view, findings, density)


# ---------------------------------------------------------------------------------------------
# Digitised film.


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _text_pixels(text: str, scale: int) -> np.ndarray:
  """``text`` in PIL's built-in bitmap font, blown up ``scale`` times: blocky, like film labels.

  The bitmap font ships inside Pillow, so every machine draws the same pixels.
  """
  font = ImageFont.load_default_imagefont()
  _, _, right, bottom = font.getbbox(text)
  canvas = Image.new("1", (right, bottom))
  ImageDraw.Draw(canvas).text((0, 0), text, fill=1, font=font)
  glyphs = np.array(canvas)
  return np.kron(glyphs[np.ix_(glyphs.any(axis=1), glyphs.any(axis=0))],
                 np.ones((scale, scale), bool))


def _stamp(rng: np.random.Generator, image: np.ndarray, free: np.ndarray, shape: np.ndarray,
           gap: int) -> tuple[int, int, int, int] | None:
  """Paints ``shape`` brightly at a random place where ``free`` holds it whole; its box or None.

  ``free`` loses the box grown by ``gap``, so later stamps keep off it.
  """
  sh, sw = shape.shape
  h, w = free.shape
  if sh > h or sw > w:
    return None
  table = np.zeros((h + 1, w + 1), np.int64)
  table[1:, 1:] = np.cumsum(np.cumsum(free, axis=0), axis=1)
  inside = (table[sh:, sw:] - table[:-sh, sw:] - table[sh:, :-sw] + table[:-sh, :-sw])
  ys, xs = np.nonzero(inside == sh * sw)
  if ys.size == 0:
    return None
  i = rng.integers(ys.size)
  y, x = int(ys[i]), int(xs[i])
  image[y:y + sh, x:x + sw][shape] = rng.uniform(0.85, 1.0)
  free[max(0, y - gap):y + sh + gap, max(0, x - gap):x + sw + gap] = False
  return x, y, x + sw, y + sh


def _film(rng: np.random.Generator, h: int, w: int, laterality: str, view: str,
          findings: Sequence[_Finding], density: float
          ) -> tuple[Phantom, tuple[Annotation, ...]]:
  """A digitised screen-film mammogram, as in DDSM, and its labels and markers.

  The film has a fog level with a gentle tilt, grain, scanner bands (faint stripes across the
  whole film), bright unexposed edges on 1 to 3 sides (a strip at the chest wall or, in an MLO,
  at the top overlaps the breast), burned-in labels ("RMLO") and small bright markers. The breast
  is drawn narrower than the film, which leaves room for the labels beside it; labels and
  markers keep ``PADDING`` plus 3 % of the height off the breast's box, so a correct crop holds
  none. ``Phantom.breast`` is the tissue before the strips are painted over it.
  """
  breast_w = max(MIN_SIZE // 2, round(w * rng.uniform(0.6, 0.8)))
  ph = _render(rng, h, breast_w, laterality, view, findings, density)
  x_off = 0 if laterality == "R" else w - breast_w
  tissue = np.zeros((h, w), np.float32)
  tissue[:, x_off:x_off + breast_w] = ph.image
  breast = np.zeros((h, w), bool)
  breast[:, x_off:x_off + breast_w] = ph.breast
  lesions = tuple(Lesion((l.box[0] + x_off, l.box[1], l.box[2] + x_off, l.box[3]), l.kind)
                  for l in ph.lesions)

  y = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
  x = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
  tilt = rng.uniform(-0.3, 0.3, 2)
  image = rng.uniform(0.03, 0.08) * (1 + tilt[0] * x + tilt[1] * y)
  image = image + rng.uniform(0.8, 0.95) * tissue
  # Scanner bands run along the scan direction, over film and breast alike.
  along_rows = rng.uniform() < 0.5
  n = h if along_rows else w
  i = np.arange(n, dtype=np.float32)
  profile = np.zeros(n, np.float32)
  for _ in range(rng.integers(2, 7)):
    centre, half = rng.uniform(0, n), max(1.0, n * rng.uniform(0.002, 0.015))
    profile += rng.uniform(0.01, 0.04) * np.clip(half - np.abs(i - centre), 0.0, 1.0)
  image += profile[:, None] if along_rows else profile[None, :]
  image += rng.standard_normal((h, w), dtype=np.float32) * rng.uniform(0.003, 0.01)

  # Unexposed film edges: bright strips, as thick as 1-3.5 % of the film's width.
  strips = np.zeros((h, w), bool)
  for side in rng.permutation(4)[:rng.integers(1, 4)]:
    d = max(2, round(w * rng.uniform(0.01, 0.035)))
    edge = [(slice(None), slice(0, d)), (slice(None), slice(w - d, w)),
            (slice(0, d), slice(None)), (slice(h - d, h), slice(None))][side]
    strips[edge] = True
    image[edge] = rng.uniform(0.8, 0.97) + 0.01 * rng.standard_normal(image[edge].shape)

  bx0, by0, bx1, by1 = mask_box(breast)
  free = ~ndimage.binary_dilation(strips, iterations=2)
  clear = breast_lib.PADDING + max(4, round(0.03 * h))
  free[max(0, by0 - clear):by1 + clear, max(0, bx0 - clear):bx1 + clear] = False
  gap = max(2, round(0.01 * h))
  annotations = []
  texts = (laterality + view, view)
  for _ in range(rng.integers(1, 3)):
    text = texts[rng.integers(len(texts))]
    # The bitmap font's capitals are 6 px tall: letters 2.5-5 % of the film's height.
    shape = _text_pixels(text, max(1, round(h * rng.uniform(0.025, 0.05) / 6)))
    box = _stamp(rng, image, free, shape, gap)
    if box is not None:
      annotations.append(Annotation(box, TEXT, text))
  for _ in range(rng.integers(0, 3)):
    side = max(3, round(h * rng.uniform(0.012, 0.03)))
    shape = np.ones((side, side), bool)
    if rng.uniform() < 0.5:
      yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
      shape = np.hypot(yy, xx) <= side / 2
    box = _stamp(rng, image, free, shape, gap)
    if box is not None:
      annotations.append(Annotation(box, MARKER))
  image = np.clip(image, 0.0, 1.0).astype(np.float32)
  return Phantom(image, breast, lesions), tuple(annotations)


# ---------------------------------------------------------------------------------------------
# DICOM.


def hex_id(seed: int, *parts) -> str:
  return hashlib.sha256("/".join(map(str, (MANUFACTURER, seed) + parts)).encode()).hexdigest()[:32]


def _uid(seed: int, *parts) -> str:
  # A UUID-derived UID (2.25.<int>) from a name-based UUID: stable for a seed, needs no root.
  # pydicom's generate_uid ignores its entropy sources when the prefix is 2.25.
  name = "/".join(map(str, (MANUFACTURER, seed) + parts))
  return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def _code(value: str, meaning: str) -> Dataset:
  item = Dataset()
  item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
  return item


def _ds(value: float) -> str:
  return f"{value:.10g}"


def _stored(image: np.ndarray, photometric: str, bits: int, window: tuple[float, float]):
  """Stored uint16 values and the (centre, width) that maps the tissue range back to display.

  ``window`` is the part of the stored range, as fractions, that display 0..1 occupies.
  """
  top = 2**bits - 1
  lo, hi = round(window[0] * top), round(window[1] * top)
  values = np.rint(lo + image * (hi - lo)).astype(np.uint16)
  if photometric == "MONOCHROME1":
    values = (top - values).astype(np.uint16)
    lo, hi = top - hi, top - lo
  # DICOM's linear window maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] onto the output range.
  return values, (lo + hi + 1) / 2, hi - lo + 1


def _dataset(meta: SyntheticImage, pixels: np.ndarray, *, seed: int, study: int, instance: int,
             study_date: str, window: tuple[float, float], spacing_mm: float) -> Dataset:
  sop_uid = _uid(seed, "image", meta.image_id)
  file_meta = FileMetaDataset()
  file_meta.MediaStorageSOPClassUID = dcm_uid.DigitalMammographyXRayImageStorageForPresentation
  file_meta.MediaStorageSOPInstanceUID = sop_uid
  file_meta.TransferSyntaxUID = dcm_uid.ExplicitVRLittleEndian
  file_meta.ImplementationClassUID = dcm_uid.PYDICOM_IMPLEMENTATION_UID

  ds = Dataset()
  ds.file_meta = file_meta
  ds.SpecificCharacterSet = "ISO_IR 100"
  ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
  ds.SOPClassUID = dcm_uid.DigitalMammographyXRayImageStorageForPresentation
  ds.SOPInstanceUID = sop_uid
  ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study_date
  ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
  ds.AccessionNumber = meta.study_id[:16]
  ds.Modality = "MG"
  ds.PresentationIntentType = "FOR PRESENTATION"
  ds.Manufacturer = MANUFACTURER
  ds.ManufacturerModelName = "breast phantom"
  ds.ReferringPhysicianName = ""
  ds.StudyDescription = "Screening mammography (synthetic)"
  ds.PatientName = f"SYNTHETIC^{meta.patient_id[:8]}"
  ds.PatientID = meta.patient_id
  ds.PatientBirthDate = ""
  ds.PatientSex = "F"
  ds.BodyPartExamined = "BREAST"
  ds.StudyInstanceUID = _uid(seed, "study", meta.study_id)
  ds.SeriesInstanceUID = _uid(seed, "series", meta.study_id)
  ds.StudyID = str(study + 1)
  ds.SeriesNumber = 1
  ds.InstanceNumber = instance
  if not meta.film:
    # Digitised films (DDSM) carry neither: laterality and view are in their file names.
    ds.PatientOrientation = _ORIENTATION[(meta.laterality, meta.view)]
    ds.ImageLaterality = meta.laterality
    ds.ViewPosition = meta.view
  ds.AnatomicRegionSequence = [_code("76752008", "Breast")]
  if not meta.film:
    view = _code(*_VIEW_CODES[meta.view])
    view.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [view]
  ds.OrganExposed = "BREAST"
  ds.PositionerType = "MAMMOGRAPHIC"
  ds.BreastImplantPresent = "NO"
  ds.PartialView = "NO"
  ds.DetectorType = "FILM" if meta.film else "DIRECT"
  ds.ImagerPixelSpacing = ds.PixelSpacing = [_ds(spacing_mm)] * 2
  ds.AcquisitionContextSequence = []
  ds.BurnedInAnnotation = "YES" if meta.film else "NO"
  ds.LossyImageCompression = "00"

  mono1 = meta.photometric == "MONOCHROME1"
  values, center, width = _stored(pixels, meta.photometric, meta.bits_stored, window)
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = meta.photometric
  ds.Rows, ds.Columns = values.shape
  # 8 bits (ROI masks) take a byte per pixel, as in CBIS-DDSM; images take two.
  ds.BitsAllocated = 8 if meta.bits_stored <= 8 else 16
  ds.BitsStored = meta.bits_stored
  ds.HighBit = meta.bits_stored - 1
  ds.PixelRepresentation = 0
  ds.PixelIntensityRelationship = "LOG"
  # +1: lower values are less X-ray intensity, i.e. denser tissue, which is MONOCHROME1.
  ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
  ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
  ds.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"
  if not meta.film:  # Film scans have no VOI window: the stored range is the display range.
    ds.WindowCenter, ds.WindowWidth = _ds(center), _ds(width)
    ds.WindowCenterWidthExplanation = "FULL RANGE" if window == (0.0, 1.0) else "TISSUE"
    ds.VOILUTFunction = "LINEAR"
  if meta.transfer_syntax in (dcm_uid.JPEG2000Lossless, dcm_uid.RLELossless):
    ds.compress(meta.transfer_syntax, values, generate_instance_uid=False)
  else:
    data = values.astype("u1" if ds.BitsAllocated == 8 else "<u2").tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)  # Values have even lengths.
  return ds


def _exact_mix(rng: np.random.Generator, n: int, rest, mix: Sequence[tuple[object, float]]):
  """``n`` shuffled picks: round(fraction * n) of each value in ``mix``, then ``rest``.

  Exact counts, unlike independent draws, guarantee every kind shows up in a short run.
  """
  picks = [value for value, fraction in mix for _ in range(round(fraction * n))]
  picks += [rest] * (n - len(picks))
  return [picks[i] for i in rng.permutation(n)]


def _breast_kinds(rng: np.random.Generator, cls: str) -> list[str]:
  """Lesion kinds of a "malignant", "benign" or "normal" breast."""
  if cls == "malignant":
    # One cancer (sometimes two), 60 % spiculated masses; a few carry a benign mass as well.
    kinds = [MALIGNANT_KINDS[int(rng.uniform() < 0.4)] for _ in range(1 + (rng.uniform() < 0.2))]
    return kinds + [ROUND_MASS] * int(rng.uniform() < 0.15)
  if cls == "benign":
    return [ROUND_MASS] * (1 + int(rng.uniform() < 0.2))
  return []


def generate(out_dir: str | os.PathLike, num_studies: int = 16, *, seed: int = 0,
             size_range: tuple[int, int] = (600, 3000), malignant_fraction: float = 0.4,
             benign_fraction: float = 0.2, jpeg2000_fraction: float = 0.3,
             monochrome1_fraction: float = 0.3, windowed_fraction: float = 0.5,
             conspicuity: float = 1.0, film_fraction: float = 0.0,
             difference: float | None = None, lookalike_fraction: float = 0.0,
             progress: Callable[[int, int], None] | None = None,
             workers: int | None = None) -> list[SyntheticImage]:
  """Writes ``num_studies`` four-view studies and labels.csv into ``out_dir``.

  ``size_range`` bounds the long (vertical) side in pixels, drawn per study; width is about 0.8
  of it. Fractions are exact counts after rounding: ``malignant_fraction`` and
  ``benign_fraction`` of the breasts, ``jpeg2000_fraction`` and ``windowed_fraction`` (VOI
  window narrower than the stored range) of the images, ``monochrome1_fraction`` of the
  studies. BitsStored is spread evenly over 12, 14 and 16 by study. ``conspicuity`` scales
  every lesion's contrast (1: about as subtle as real findings against the texture).
  ``film_fraction`` of the studies are digitised films (``_film``): 16-bit, RLE Lossless, no VOI
  window, no laterality or view tags, laterality and view in the file name
  (``<image_id>_LEFT_CC.dcm``); they override the draws above for their images. With
  ``film_fraction`` > 0, labels.csv adds FILM_COLUMNS: ``film`` (0 / 1), ``breast_box`` (the
  tissue's ``[x0, y0, x1, y1]``, every image) and ``label_boxes`` (JSON list of
  ``{"box", "kind", "text"}``, film images); with 0 the output is what it was before film mode.
  ``difference`` (0 .. 1) switches on the fine-grained mode, where cancers and look-alikes
  share images: malignant breasts carry a spiculated mass or a malignant calcification cluster
  and, with ``lookalike_fraction``, a benign look-alike beside it; benign breasts (label 0)
  carry benign masses (oval, sharply margined) or benign calcifications (few, coarse, round,
  scattered). Every finding is drawn by the same functions from the same random draws, and a
  cancer's look is ``difference`` of the way from benign to malignant: at 1 the classes differ
  in outline, margin, spicules, speck count, size and shape; at 0 they are identical, and only
  the labels tell them apart. Size and contrast come from one range per type for both classes.
  ``progress(done, total)`` is called after each image. ``workers`` processes render in
  parallel (default: every core); the files are the same for any number. Raises SyntheticError
  for bad arguments, a folder that already holds a dataset, or a missing JPEG 2000 encoder.
  """
  jobs = plan(out_dir, num_studies, seed=seed, size_range=size_range,
              malignant_fraction=malignant_fraction, benign_fraction=benign_fraction,
              jpeg2000_fraction=jpeg2000_fraction, monochrome1_fraction=monochrome1_fraction,
              windowed_fraction=windowed_fraction, conspicuity=conspicuity,
              film_fraction=film_fraction, difference=difference,
              lookalike_fraction=lookalike_fraction)
  out = pathlib.Path(out_dir)
  _check(not (out / "labels.csv").exists() and not (out / "images").exists(),
         f"{out} already holds a dataset (labels.csv or images/); choose an empty folder")
  images = map_jobs(_write_image, jobs, workers=workers, progress=progress)
  with open(out / "labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS + FILM_COLUMNS * (film_fraction > 0),
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(im.row() for im in images)
  return images


def plan(out_dir: str | os.PathLike, num_studies: int = 16, *, seed: int = 0,
         size_range: tuple[int, int] = (600, 3000), malignant_fraction: float = 0.4,
         benign_fraction: float = 0.2, jpeg2000_fraction: float = 0.3,
         monochrome1_fraction: float = 0.3, windowed_fraction: float = 0.5,
         conspicuity: float = 1.0, film_fraction: float = 0.0, difference: float | None = None,
         lookalike_fraction: float = 0.0) -> list[ImageJob]:
  """``generate``'s draws (same arguments), one job per image, nothing written yet.

  Jobs come study by study, each as L CC, L MLO, R CC, R MLO. ``render`` turns a job into
  pixels and ``dicom_dataset`` into a DICOM; a dataset layout (``attend_jax.data.layouts``) may
  give a job's ``meta`` other ids, a path and a file format first, which changes no pixel.
  Raises SyntheticError for bad arguments or a missing JPEG 2000 encoder.
  """
  lo, hi = size_range
  _check(isinstance(num_studies, (int, np.integer)) and num_studies >= 1,
         f"num_studies must be a positive integer, got {num_studies!r}")
  _check_seed(seed)
  _check(MIN_SIZE <= lo <= hi, f"size range {lo}..{hi} must satisfy {MIN_SIZE} <= min <= max")
  for name, f in (("malignant_fraction", malignant_fraction), ("benign_fraction", benign_fraction),
                  ("jpeg2000_fraction", jpeg2000_fraction),
                  ("monochrome1_fraction", monochrome1_fraction),
                  ("windowed_fraction", windowed_fraction), ("film_fraction", film_fraction)):
    _check(0.0 <= f <= 1.0, f"{name} {f} is outside [0, 1]")
  _check(conspicuity > 0, f"conspicuity must be positive, got {conspicuity}")
  _check(difference is None or 0.0 <= difference <= 1.0,
         f"difference {difference} is outside [0, 1]")
  _check(0.0 <= lookalike_fraction <= 1.0, f"lookalike_fraction {lookalike_fraction} is outside"
         " [0, 1]")
  _check(malignant_fraction + benign_fraction <= 1.0,
         f"malignant_fraction + benign_fraction = {malignant_fraction + benign_fraction} > 1")
  encoder = get_encoder(dcm_uid.JPEG2000Lossless)
  _check(jpeg2000_fraction == 0 or encoder.is_available,
         "writing JPEG 2000 needs pylibjpeg and pylibjpeg-openjpeg (pip install pylibjpeg"
         " pylibjpeg-openjpeg), or set jpeg2000_fraction to 0")
  out = pathlib.Path(out_dir)

  rng = np.random.default_rng([_SEED_TAG, seed, 1])
  n_images = 4 * num_studies
  classes = _exact_mix(rng, 2 * num_studies, "normal",
                       (("malignant", malignant_fraction), ("benign", benign_fraction)))
  bits = [_BITS[i] for i in rng.permutation(num_studies) % len(_BITS)]
  mono1 = _exact_mix(rng, num_studies, False, ((True, monochrome1_fraction),))
  j2k = _exact_mix(rng, n_images, False, ((True, jpeg2000_fraction),))
  windowed = _exact_mix(rng, n_images, False, ((True, windowed_fraction),))
  # A stream of its own, so that film_fraction = 0 leaves every other draw as it was.
  film = _exact_mix(np.random.default_rng([_SEED_TAG, seed, 5]), num_studies, False,
                    ((True, film_fraction),))

  # Study-level draws come from one sequential stream, here; each image then renders from its
  # own seeded stream, so the pool's order cannot change a pixel.
  jobs = []
  for study in range(num_studies):
    study_id, patient_id = hex_id(seed, "study", study), hex_id(seed, "patient", study)[:16]
    height = int(rng.integers(lo, hi + 1))
    width = round(height * _ASPECTS[rng.integers(len(_ASPECTS))])
    study_date = (datetime.date(2020, 1, 1)
                  + datetime.timedelta(days=int(rng.integers(0, 5 * 365)))).strftime("%Y%m%d")
    patient_density = rng.beta(2.0, 2.0)
    for b, laterality in enumerate(_LATERALITIES):
      breast_rng = np.random.default_rng([_SEED_TAG, seed, 2, study, b])
      cls = classes[2 * study + b]
      if difference is None:
        drawn = [_draw_finding(breast_rng, k) for k in _breast_kinds(breast_rng, cls)]
      else:
        drawn = [_draw_fine(breast_rng, k, difference)
                 for k in _fine_kinds(breast_rng, cls, lookalike_fraction)]
      findings = [dataclasses.replace(f, contrast=f.contrast * conspicuity) for f in drawn]
      density = float(np.clip(patient_density + breast_rng.normal(0, 0.05), 0, 1))
      for v, view in enumerate(_VIEWS):
        index = len(jobs)
        image_id = hex_id(seed, "image", study, laterality, view)
        name = (f"{image_id}_{'LEFT' if laterality == 'L' else 'RIGHT'}_{view}" if film[study]
                else image_id)
        syntax = (dcm_uid.RLELossless if film[study] else dcm_uid.JPEG2000Lossless if j2k[index]
                  else dcm_uid.ExplicitVRLittleEndian)
        meta = SyntheticImage(
            image_id=image_id, study_id=study_id, patient_id=patient_id,
            laterality=laterality, view=view, label=int(cls == "malignant"),
            path=f"images/{study_id}/{name}.dcm", width=width, height=height,
            photometric="MONOCHROME1" if mono1[study] else "MONOCHROME2",
            bits_stored=16 if film[study] else bits[study], transfer_syntax=syntax, lesions=(),
            film=film[study])
        jobs.append(ImageJob(out, meta, (_SEED_TAG, seed, 3, study, b, v), findings, density,
                             windowed[index] and not film[study], seed, study, 2 * b + v + 1,
                             study_date, film_fraction > 0))
  return jobs


def map_jobs(fn: Callable[[object], object], jobs: Sequence, *, workers: int | None = None,
             progress: Callable[[int, int], None] | None = None,
             preload: Sequence[str] = ()) -> list:
  """``fn(job)`` for every job, in order, from ``workers`` processes (default: every core).

  ``fn`` must be a module-level function; its module goes into ``preload`` when it is not this
  one. ``progress(done, total)`` is called after each job.
  """
  results = []
  workers = pool_lib.worker_count(workers, len(jobs))
  if workers > 1:
    with pool_lib.process_pool(workers, [__name__, *preload]) as pool:
      for result in pool.map(fn, jobs, chunksize=2):
        results.append(result)
        if progress is not None:
          progress(len(results), len(jobs))
  else:
    for job in jobs:
      results.append(fn(job))
      if progress is not None:
        progress(len(results), len(jobs))
  return results


@dataclasses.dataclass(frozen=True)
class ImageJob:
  """One image to render: its truth so far, its random stream and its study's draws."""

  out: pathlib.Path
  meta: SyntheticImage  # Lesions are filled in once rendered.
  seed_words: tuple[int, ...]
  findings: list[_Finding]  # One lesion each, in this order.
  density: float
  windowed: bool
  seed: int
  study: int
  instance: int
  study_date: str
  breast_box: bool  # Record the true breast box (film datasets).


@dataclasses.dataclass(frozen=True, eq=False)
class Rendered:
  meta: SyntheticImage  # The job's, with its lesions (and breast and label boxes) filled in.
  phantom: Phantom
  window: tuple[float, float]  # The part of the stored range that display 0..1 occupies.


def render(job: ImageJob) -> Rendered:
  """The job's pixels and truth; the same job always gives the same pixels."""
  image_rng = np.random.default_rng(list(job.seed_words))
  meta = job.meta
  window, label_boxes = (0.0, 1.0), ()
  if meta.film:
    ph, label_boxes = _film(image_rng, meta.height, meta.width, meta.laterality, meta.view,
                            job.findings, job.density)
  else:
    ph = _render(image_rng, meta.height, meta.width, meta.laterality, meta.view, job.findings,
                 job.density)
  if job.windowed:
    start = image_rng.uniform(0.05, 0.3)
    window = (start, start + image_rng.uniform(0.3, 0.6))
  meta = dataclasses.replace(meta, lesions=ph.lesions, label_boxes=label_boxes,
                             breast_box=mask_box(ph.breast) if job.breast_box else None)
  return Rendered(meta, ph, window)


def dicom_dataset(job: ImageJob, meta: SyntheticImage, pixels: np.ndarray,
                  window: tuple[float, float] = (0.0, 1.0)) -> Dataset:
  """``pixels`` (display 0..1) as ``meta`` describes them, with the job's study and dates.

  ``meta`` may be another than the job's, e.g. an ROI mask's (BitsStored 8) of the same image.
  """
  return _dataset(meta, pixels, seed=job.seed, study=job.study, instance=job.instance,
                  study_date=job.study_date, window=window,
                  spacing_mm=_DETECTOR_HEIGHT_MM / job.meta.height)


def save(ds: Dataset, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


def _write_image(job: ImageJob) -> SyntheticImage:
  rendered = render(job)
  save(dicom_dataset(job, rendered.meta, rendered.phantom.image, rendered.window),
       job.out / rendered.meta.path)
  return rendered.meta


def read_labels(out_dir: str | os.PathLike) -> list[SyntheticImage]:
  """labels.csv of a generated dataset, back as SyntheticImage rows; FILM_COLUMNS are optional."""
  with open(pathlib.Path(out_dir) / "labels.csv", newline="") as f:
    return [SyntheticImage(
        **{c: row[c] for c in ("image_id", "study_id", "patient_id", "laterality", "view", "path",
                               "photometric", "transfer_syntax")},
        label=int(row["label"]), width=int(row["width"]), height=int(row["height"]),
        bits_stored=int(row["bits_stored"]),
        lesions=tuple(Lesion(tuple(l["box"]), l["kind"]) for l in json.loads(row["lesions"])),
        film=row.get("film") == "1",
        breast_box=tuple(json.loads(row["breast_box"])) if row.get("breast_box") else None,
        label_boxes=tuple(Annotation(tuple(a["box"]), a["kind"], a["text"])
                          for a in json.loads(row.get("label_boxes") or "[]")))
        for row in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------
# A stand-in for the detector.


def simulate_detector(lesion_boxes: Sequence[Sequence[float]], width: int, height: int,
                      laterality: str, *, count: int = 6, key: str = "") -> np.ndarray:
  """(count, 5) proposals ``x0 y0 x1 y1 score`` in original pixels, seeded by ``key``.

  What a lesion detector gives the classifier, until one is trained: every lesion box, shifted
  and rescaled a little, with a high score, then false positives in the breast, with lower
  scores, up to ``count`` boxes. False positives have the lesions' size range and every image
  gets the same number of boxes, so neither count nor size gives the label away: the
  classifier has to look at the pixels.
  """
  rng = np.random.default_rng([_SEED_TAG, 4, zlib.crc32(key.encode())])
  boxes = []
  for x0, y0, x1, y1 in list(lesion_boxes)[:count]:
    side = np.array([x1 - x0, y1 - y0], np.float64) * rng.uniform(0.9, 1.3)
    centre = np.array([x0 + x1, y0 + y1], np.float64) / 2 + rng.normal(0, 0.1, 2) * side
    boxes.append([*(centre - side / 2), *(centre + side / 2), rng.uniform(0.45, 0.95)])
  for _ in range(count - len(boxes)):
    side = height * rng.uniform(0.04, 0.11) * np.array([1.0, rng.uniform(0.8, 1.25)])
    # Glandular tissue: away from the chest wall and the skin, where detectors misfire.
    cx, cy = width * rng.uniform(0.08, 0.55), height * rng.uniform(0.25, 0.75)
    if laterality == "L":
      cx = width - cx
    boxes.append([cx - side[0] / 2, cy - side[1] / 2, cx + side[0] / 2, cy + side[1] / 2,
                  rng.uniform(0.05, 0.75)])
  out = np.array(boxes, np.float64).reshape(-1, 5)
  out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
  out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
  return out[np.argsort(-out[:, 4], kind="stable")]
