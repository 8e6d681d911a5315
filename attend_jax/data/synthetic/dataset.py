"""A synthetic dataset: ``plan`` draws the studies (one ``ImageJob`` per image), ``render``
turns a job into pixels and truth, ``dicom_dataset`` into a DICOM, and ``generate`` writes them
all with labels.csv."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import os
import pathlib
from typing import Callable, Sequence

import numpy as np
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.pixels import get_encoder

from attend_jax.data import pool as pool_lib
from attend_jax.data.synthetic import anatomy, dicom_writer
from attend_jax.data.synthetic import film as film_lib
from attend_jax.data.synthetic.base import (LATERALITIES, MIN_SIZE, SEED_TAG, VIEWS, check,
                                            check_seed)
from attend_jax.data.synthetic.dicom_writer import hex_id
from attend_jax.data.synthetic.labels import FILM_COLUMNS, LABEL_COLUMNS, SyntheticImage
from attend_jax.data.synthetic.lesions import (BENIGN_KINDS, MALIGNANT_KINDS, ROUND_MASS, Finding,
                                               draw_finding, draw_fine)

_BITS = (12, 14, 16)
_ASPECTS = (0.77, 0.8, 0.83)  # Width / height of common full-field detectors.
_DETECTOR_HEIGHT_MM = 300.0  # 0.1 mm pixels at 3000 px.


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
  ``film_fraction`` of the studies are digitised films (``film.draw``): 16-bit, RLE Lossless, no VOI
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
  check(not (out / "labels.csv").exists() and not (out / "images").exists(),
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
  check(isinstance(num_studies, (int, np.integer)) and num_studies >= 1,
         f"num_studies must be a positive integer, got {num_studies!r}")
  check_seed(seed)
  check(MIN_SIZE <= lo <= hi, f"size range {lo}..{hi} must satisfy {MIN_SIZE} <= min <= max")
  for name, f in (("malignant_fraction", malignant_fraction), ("benign_fraction", benign_fraction),
                  ("jpeg2000_fraction", jpeg2000_fraction),
                  ("monochrome1_fraction", monochrome1_fraction),
                  ("windowed_fraction", windowed_fraction), ("film_fraction", film_fraction)):
    check(0.0 <= f <= 1.0, f"{name} {f} is outside [0, 1]")
  check(conspicuity > 0, f"conspicuity must be positive, got {conspicuity}")
  check(difference is None or 0.0 <= difference <= 1.0,
         f"difference {difference} is outside [0, 1]")
  check(0.0 <= lookalike_fraction <= 1.0, f"lookalike_fraction {lookalike_fraction} is outside"
         " [0, 1]")
  check(malignant_fraction + benign_fraction <= 1.0,
         f"malignant_fraction + benign_fraction = {malignant_fraction + benign_fraction} > 1")
  encoder = get_encoder(dcm_uid.JPEG2000Lossless)
  check(jpeg2000_fraction == 0 or encoder.is_available,
         "writing JPEG 2000 needs pylibjpeg and pylibjpeg-openjpeg (pip install pylibjpeg"
         " pylibjpeg-openjpeg), or set jpeg2000_fraction to 0")
  out = pathlib.Path(out_dir)

  rng = np.random.default_rng([SEED_TAG, seed, 1])
  n_images = 4 * num_studies
  classes = _exact_mix(rng, 2 * num_studies, "normal",
                       (("malignant", malignant_fraction), ("benign", benign_fraction)))
  bits = [_BITS[i] for i in rng.permutation(num_studies) % len(_BITS)]
  mono1 = _exact_mix(rng, num_studies, False, ((True, monochrome1_fraction),))
  j2k = _exact_mix(rng, n_images, False, ((True, jpeg2000_fraction),))
  windowed = _exact_mix(rng, n_images, False, ((True, windowed_fraction),))
  # A stream of its own, so that film_fraction = 0 leaves every other draw as it was.
  film = _exact_mix(np.random.default_rng([SEED_TAG, seed, 5]), num_studies, False,
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
    for b, laterality in enumerate(LATERALITIES):
      breast_rng = np.random.default_rng([SEED_TAG, seed, 2, study, b])
      cls = classes[2 * study + b]
      if difference is None:
        drawn = [draw_finding(breast_rng, k) for k in _breast_kinds(breast_rng, cls)]
      else:
        drawn = [draw_fine(breast_rng, k, difference)
                 for k in _fine_kinds(breast_rng, cls, lookalike_fraction)]
      findings = [dataclasses.replace(f, contrast=f.contrast * conspicuity) for f in drawn]
      density = float(np.clip(patient_density + breast_rng.normal(0, 0.05), 0, 1))
      for v, view in enumerate(VIEWS):
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
        jobs.append(ImageJob(out, meta, (SEED_TAG, seed, 3, study, b, v), findings, density,
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
  findings: list[Finding]  # One lesion each, in this order.
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
  phantom: anatomy.Phantom
  window: tuple[float, float]  # The part of the stored range that display 0..1 occupies.


def render(job: ImageJob) -> Rendered:
  """The job's pixels and truth; the same job always gives the same pixels."""
  image_rng = np.random.default_rng(list(job.seed_words))
  meta = job.meta
  window, label_boxes = (0.0, 1.0), ()
  if meta.film:
    ph, label_boxes = film_lib.draw(image_rng, meta.height, meta.width, meta.laterality,
                                    meta.view, job.findings, job.density)
  else:
    ph = anatomy.draw(image_rng, meta.height, meta.width, meta.laterality, meta.view,
                      job.findings, job.density)
  if job.windowed:
    start = image_rng.uniform(0.05, 0.3)
    window = (start, start + image_rng.uniform(0.3, 0.6))
  meta = dataclasses.replace(meta, lesions=ph.lesions, label_boxes=label_boxes,
                             breast_box=anatomy.mask_box(ph.breast) if job.breast_box else None)
  return Rendered(meta, ph, window)


def dicom_dataset(job: ImageJob, meta: SyntheticImage, pixels: np.ndarray,
                  window: tuple[float, float] = (0.0, 1.0)) -> Dataset:
  """``pixels`` (display 0..1) as ``meta`` describes them, with the job's study and dates.

  ``meta`` may be another than the job's, e.g. an ROI mask's (BitsStored 8) of the same image.
  """
  return dicom_writer.make_dataset(meta, pixels, seed=job.seed, study=job.study,
                                   instance=job.instance, study_date=job.study_date,
                                   window=window, spacing_mm=_DETECTOR_HEIGHT_MM / job.meta.height)


def _write_image(job: ImageJob) -> SyntheticImage:
  rendered = render(job)
  dicom_writer.save(dicom_dataset(job, rendered.meta, rendered.phantom.image, rendered.window),
       job.out / rendered.meta.path)
  return rendered.meta
