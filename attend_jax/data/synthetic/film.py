"""Digitised screen film, as in DDSM: fog, grain, scanner bands, bright film edges and
burned-in labels and markers around a synthetic breast."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from attend_jax.data import breast as breast_lib
from attend_jax.data.synthetic import anatomy
from attend_jax.data.synthetic import lesions as lesion_lib
from attend_jax.data.synthetic.base import MIN_SIZE

TEXT, MARKER = "text", "marker"  # Annotation kinds.


@dataclasses.dataclass(frozen=True)
class Annotation:
  """A burned-in film label (``text``) or a bright marker, in the background of a film image."""

  box: tuple[int, int, int, int]  # x0, y0, x1, y1 of its bright pixels; x1 and y1 exclusive.
  kind: str  # TEXT or MARKER.
  text: str = ""  # The label, e.g. "RMLO"; empty for markers.

  def to_json(self) -> dict:
    return {"box": list(self.box), "kind": self.kind, "text": self.text}


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


def draw(rng: np.random.Generator, h: int, w: int, laterality: str, view: str,
         findings: Sequence[lesion_lib.Finding], density: float
         ) -> tuple[anatomy.Phantom, tuple[Annotation, ...]]:
  """A digitised screen-film mammogram, as in DDSM, and its labels and markers.

  The film has a fog level with a gentle tilt, grain, scanner bands (faint stripes across the
  whole film), bright unexposed edges on 1 to 3 sides (a strip at the chest wall or, in an MLO,
  at the top overlaps the breast), burned-in labels ("RMLO") and small bright markers. The breast
  is drawn narrower than the film, which leaves room for the labels beside it; labels and
  markers keep ``PADDING`` plus 3 % of the height off the breast's box, so a correct crop holds
  none. ``Phantom.breast`` is the tissue before the strips are painted over it.
  """
  breast_w = max(MIN_SIZE // 2, round(w * rng.uniform(0.6, 0.8)))
  ph = anatomy.draw(rng, h, breast_w, laterality, view, findings, density)
  x_off = 0 if laterality == "R" else w - breast_w
  tissue = np.zeros((h, w), np.float32)
  tissue[:, x_off:x_off + breast_w] = ph.image
  breast = np.zeros((h, w), bool)
  breast[:, x_off:x_off + breast_w] = ph.breast
  lesions = tuple(
      lesion_lib.Lesion((l.box[0] + x_off, l.box[1], l.box[2] + x_off, l.box[3]), l.kind)
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

  bx0, by0, bx1, by1 = anatomy.mask_box(breast)
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
  return anatomy.Phantom(image, breast, lesions), tuple(annotations)
