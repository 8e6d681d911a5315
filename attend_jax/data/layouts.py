"""Synthetic studies in the real datasets' layouts, for trying a set-up before downloading them.

``write(layout, out, ...)`` renders ``synthetic.plan``'s studies (the generator behind
``synthetic.generate``, same arguments and same pictures) and stores them as the dataset
ships them, so that ``tools/prepare_data.py --dataset <layout>`` reads them as it reads the
real one; ``prepare_command`` is that command. Labels, official splits, lesion boxes,
laterality and view in the files agree with the pictures. The same seed gives the same files.

- ``cbis_ddsm``: the four case-description CSVs (``mass_case_description_train_set.csv``, ...,
  with the real columns; "image file path" names DICOMs by UIDs, as TCIA's do, while the files
  lie in NBIA folders) and ``CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<date>-DDSM-<n>/1.000000-
  full mammogram images-<n>/1-1.dcm``. Each abnormality has its folder ``..._LEFT_CC_<k>``
  with the ROI mask (same size as the image, 255 inside an ellipse filling the lesion's box,
  8 bits) and the cropped lesion, in two series. Only breasts with an abnormality are written,
  each with the findings of one family (masses, or calcifications; a CBIS image is a Mass- or
  a Calc- case), as in CBIS-DDSM. Digitised film by default (``film_fraction`` 1): 16-bit
  MONOCHROME2, uncompressed, no laterality or view tags (the folder names tell them).
  Official split: ``Training`` / ``Test``, a fifth of the patients.
- ``vindr``: ``breast-level_annotations.csv`` (BI-RADS 4-5 for cancers, 2-3 benign, 1 normal;
  density A-D from the picture; split ``training`` / ``test``, a fifth of the studies),
  ``finding_annotations.csv`` (a ``['Mass']`` or ``['Suspicious Calcification']`` row per
  finding, with its box in image pixels, and a ``['No Finding']`` row without a box for an
  image without findings) and ``images/<study_id>/<image_id>.dicom`` (32-digit hex ids).
- ``rsna``: ``train.csv`` (integer ids; cancer per breast, benign findings biopsied and
  ``difficult_negative_case``) and ``train_images/<patient_id>/<image_id>.dcm``, 60 % of them
  JPEG 2000 by default. RSNA has no official split and gives no boxes.
- ``csv``: the reference's ``train.csv``, ``val.csv`` (``study_id,laterality,im_path,cancer,
  view``) and ``test.csv`` (``im_path,laterality,cancer,view``), as its real files have them,
  in OUT; the images at ``OUT/images/<im_path>`` (VinDr's ids); and a proposal file per image
  at ``OUT/proposals/<im_path without .dicom>_preds.txt``: ``proposals_per_image`` lines of
  ``cx cy w h score``, by descending score, in pixels of the reference's breast crop
  (``breast.find_breast(rule="reference")`` on the decoded file, what ``--crop=reference``
  computes), as Grounding-DINO's: the whole breast first, then ``synthetic.simulate_detector``'s
  boxes (the lesions, jittered, and false positives), then low-scoring near-copies.
  Splits: 64 / 16 / 20 % of the studies, as the reference's 12,800 / 3,200 / 4,000.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import os
import pathlib
import shlex
import zlib
from typing import Callable, Sequence

import numpy as np
from pydicom import uid as dcm_uid

from attend_jax.data import breast, dicom, proposals, synthetic
from attend_jax.data.sources import cbis_ddsm, rsna, vindr
from attend_jax.data.sources.base import split_by_key
from attend_jax.data.synthetic import SyntheticError

LAYOUTS = ("cbis_ddsm", "vindr", "rsna", "csv")
# What each layout writes into OUT; a folder holding any of them already holds a dataset.
TOP_LEVEL = {
    "cbis_ddsm": ("CBIS-DDSM", "mass_case_description_train_set.csv",
                  "mass_case_description_test_set.csv", "calc_case_description_train_set.csv",
                  "calc_case_description_test_set.csv"),
    "vindr": ("images", "breast-level_annotations.csv", "finding_annotations.csv"),
    "rsna": ("train_images", "train.csv"),
    "csv": ("images", "proposals", "train.csv", "val.csv", "test.csv"),
}
# Each layout's own defaults for synthetic.plan's arguments, and those its dataset fixes.
DEFAULTS = {"cbis_ddsm": {"film_fraction": 1.0}, "rsna": {"jpeg2000_fraction": 0.6}}
_FIXED = {"cbis_ddsm": {"jpeg2000_fraction": 0.0, "monochrome1_fraction": 0.0,
                        "windowed_fraction": 0.0}}
_FIXED_WHY = {"cbis_ddsm": "CBIS-DDSM ships uncompressed 16-bit MONOCHROME2 scans without a VOI"
                           " window"}

MASS_COLUMNS = ("patient_id", "breast_density", "left or right breast", "image view",
                "abnormality id", "abnormality type", "mass shape", "mass margins", "assessment",
                "pathology", "subtlety", "image file path", "cropped image file path",
                "ROI mask file path")
# The calcification CSVs spell the density column with a space, as the real ones do.
CALC_COLUMNS = ("patient_id", "breast density", "left or right breast", "image view",
                "abnormality id", "abnormality type", "calc type", "calc distribution",
                "assessment", "pathology", "subtlety", "image file path",
                "cropped image file path", "ROI mask file path")
VINDR_BREAST_COLUMNS = ("study_id", "series_id", "image_id", "laterality", "view_position",
                        "height", "width", "breast_birads", "breast_density", "split")
VINDR_FINDING_COLUMNS = VINDR_BREAST_COLUMNS[:-1] + (
    "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax", "split")
RSNA_COLUMNS = ("site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer",
                "biopsy", "invasive", "BIRADS", "implant", "density", "machine_id",
                "difficult_negative_case")
REFERENCE_COLUMNS = ("study_id", "laterality", "im_path", "cancer", "view")  # train and val.
REFERENCE_TEST_COLUMNS = ("im_path", "laterality", "cancer", "view")  # test has no study_id.

PROPOSALS_PER_IMAGE = 900  # As in the reference's Grounding-DINO files.
_BREAST_SCORE = 0.98  # Above simulate_detector's scores: the whole breast comes first.
_TAIL_SCORES = (0.04, 0.0004)  # Below them: the near-copies that fill a file.
_CBIS_UID_ROOT = "1.3.6.1.4.1.9590.100.1.2."  # The root of CBIS-DDSM's UIDs.
_NO_VIEW_TAGS = ("ImageLaterality", "ViewPosition", "PatientOrientation", "ViewCodeSequence")
_RSNA_MACHINES = {1: (21, 29, 48, 49, 93, 210, 216), 2: (170, 190, 197)}
_SEED_TAG = 0x1A70  # This module's random streams, apart from the generator's.


@dataclasses.dataclass(frozen=True)
class LayoutImage:
  """One image as written: the truth a source's listing must give back."""

  image: synthetic.SyntheticImage  # Ids as the layout's files give them; path relative to OUT.
  split: str  # The official split, "train" / "val" / "test"; "" where there is none (RSNA).
  masks: tuple[str, ...] = ()  # CBIS-DDSM: each lesion's ROI mask, relative to OUT.
  proposals: str = ""  # csv: the proposal file, relative to OUT.


@dataclasses.dataclass(frozen=True)
class _Abnormality:
  """A CBIS-DDSM abnormality's folder: its ROI mask and cropped lesion, with their headers."""

  mask_path: str
  mask_header: dict
  crop_path: str
  crop_header: dict


@dataclasses.dataclass(frozen=True)
class _Job:
  image: synthetic.ImageJob  # Its meta holds the layout's ids, path and file format.
  split: str
  csv: str  # The CSV that lists the image (CBIS-DDSM: its abnormalities' rows).
  row: dict  # Its row there ({} for CBIS-DDSM).
  findings: tuple[dict, ...]  # A row per lesion, in the lesions' order (CBIS-DDSM, VinDr).
  header: dict  # DICOM attributes set over the generator's.
  drop: tuple[str, ...] = ()  # DICOM attributes the dataset's files do not have.
  abnormalities: tuple[_Abnormality, ...] = ()
  proposals: str = ""
  proposal_count: int = 0


def write(layout: str, out_dir: str | os.PathLike, num_studies: int = 16, *, seed: int = 0,
          proposals_per_image: int = PROPOSALS_PER_IMAGE,
          progress: Callable[[int, int], None] | None = None, workers: int | None = None,
          **generator_args) -> list[LayoutImage]:
  """Writes ``num_studies`` synthetic studies into ``out_dir`` in ``layout`` (see the module).

  ``generator_args`` are ``synthetic.plan``'s (size_range, malignant_fraction, ...), over the
  layout's ``DEFAULTS``; CBIS-DDSM fixes the file format (uncompressed 16-bit MONOCHROME2, no
  VOI window). ``proposals_per_image`` is for the csv layout. Returns every image written, in
  ``synthetic.plan``'s order. Raises SyntheticError for bad arguments or a folder that already
  holds files of the layout.
  """
  _check(layout in LAYOUTS, f"unknown layout {layout!r}; choose one of {LAYOUTS}")
  for name, value in _FIXED.get(layout, {}).items():
    _check(generator_args.get(name, value) == value,
           f"{name} must be {value} in the {layout} layout: {_FIXED_WHY[layout]}")
  _check(isinstance(proposals_per_image, (int, np.integer)) and proposals_per_image >= 1,
         f"proposals_per_image must be a positive integer, got {proposals_per_image!r}")
  out = pathlib.Path(out_dir)
  args = {**DEFAULTS.get(layout, {}), **_FIXED.get(layout, {}), **generator_args}
  jobs = synthetic.plan(out, num_studies, seed=seed, **args)
  present = [name for name in TOP_LEVEL[layout] if (out / name).exists()]
  _check(not present, f"{out} already holds a dataset ({', '.join(present)}); choose an empty"
         " folder")
  if layout == "csv":
    layout_jobs = _reference_jobs(jobs, seed, proposals_per_image)
  else:
    layout_jobs = _JOBS[layout](jobs, seed)
  metas = synthetic.map_jobs(_write, layout_jobs, workers=workers, progress=progress,
                             preload=[__name__])
  _CSVS[layout](out, layout_jobs, metas)
  return [LayoutImage(meta, job.split, tuple(a.mask_path for a in job.abnormalities),
                      job.proposals) for job, meta in zip(layout_jobs, metas)]


def prepare_command(layout: str, out_dir: str | os.PathLike,
                    prepared: str | os.PathLike | None = None) -> str:
  """The ``tools/prepare_data.py`` command that reads ``layout`` in ``out_dir`` (any layout of
  ``LAYOUTS`` or ``synthetic``) into ``prepared`` (default: ``<out_dir>_prepared``)."""
  out = pathlib.Path(out_dir)
  prepared = pathlib.Path(prepared) if prepared else out.with_name(f"{out.name}_prepared")
  if layout == "csv":
    flags = (f"--root {_quoted(out / 'images')} --csv_dir {_quoted(out)}"
             f" --proposals {_quoted(out / 'proposals')} --crop=reference --keep_orientation"
             " --long_side 0")
  else:
    flags = f"--root {_quoted(out)}"
    if layout in ("cbis_ddsm", "vindr"):
      flags += " --long_side 2048"  # What configs/cbis.py and configs/vindr.py read.
  return f"python tools/prepare_data.py --dataset {layout} {flags} --out {_quoted(prepared)}"


def _quoted(path: pathlib.Path) -> str:
  return shlex.quote(str(path))


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise SyntheticError(message)


# ---------------------------------------------------------------------------------------------
# Shared pieces.


def _rng(seed: int, *parts: int) -> np.random.Generator:
  return np.random.default_rng([_SEED_TAG, seed, *parts])


def _breast_rng(seed: int, layout: int, job: synthetic.ImageJob) -> np.random.Generator:
  """A stream per breast, so that its CC and MLO draw the same labels."""
  return _rng(seed, layout, job.study, "LR".index(job.meta.laterality))


def _splits(seed: int, labels: Sequence[set[int]], fractions: dict[str, float]) -> list[str]:
  """Splits of studies, one per entry of ``labels`` (the image labels each study holds): of each
  split round(fraction * n), at least one each when there are studies enough, the rest "train";
  shuffled by ``seed``. Each split gets first a study that holds both classes, else a cancer
  study and then another with a negative image, where there are such studies, so that every
  split gives an AUC."""
  n = len(labels)
  left = {s: round(f * n) for s, f in fractions.items()}
  if n > len(fractions):
    left = {s: max(1, c) for s, c in left.items()}
  order = [int(i) for i in _rng(seed, 0).permutation(n)]
  out = ["train"] * n
  free = list(order)

  def take(split: str, wanted) -> set[int]:
    i = next((i for i in free if wanted(labels[i])), None)
    if i is None or not left[split]:
      return set()
    free.remove(i)
    out[i], left[split] = split, left[split] - 1
    return labels[i]

  for split in list(left):
    held = take(split, lambda got: got == {0, 1})
    if not held:
      held = take(split, lambda got: 1 in got)
    if 0 not in held:
      take(split, lambda got: 0 in got)
  for split, count in left.items():
    for _ in range(count):
      out[free.pop(0)] = split
  return out


def _study_labels(jobs: Sequence[synthetic.ImageJob], studies: Sequence[int]) -> list[set[int]]:
  held: dict[int, set[int]] = {s: set() for s in studies}
  for job in jobs:
    held[job.study].add(int(job.meta.label))
  return [held[s] for s in studies]


def _id_in(split: str, candidates, key_split: Callable[[str], str]) -> str:
  """The first of ``candidates`` (ids) that the dataset's own source puts in ``split`` when it
  splits by a hash of the id (``key_split``, e.g. VinDr's validation share of its training
  studies), so that the layout's splits are the ones a user's run sees."""
  for candidate in candidates:
    if key_split(candidate) == split:
      return candidate
  raise SyntheticError(f"no id lands in the {split} split")  # Not with thousands of tries.


def _side(laterality: str) -> str:
  return "LEFT" if laterality == "L" else "RIGHT"


def _density_class(density: float) -> int:
  """0..3 (A..D) from the density the picture was drawn with (0..1)."""
  return min(3, int(density * 4))


def _is_malignant(finding) -> bool:
  return finding.kind in synthetic.MALIGNANT_KINDS


def _restyled(job: synthetic.ImageJob, **meta) -> synthetic.ImageJob:
  return dataclasses.replace(job, meta=dataclasses.replace(job.meta, **meta))


# ---------------------------------------------------------------------------------------------
# Rendering and writing, in the worker processes.


def _write(job: _Job) -> synthetic.SyntheticImage:
  rendered = synthetic.render(job.image)
  meta = rendered.meta
  path = job.image.out / meta.path
  _save(synthetic.dicom_dataset(job.image, meta, rendered.phantom.image, rendered.window),
        path, job.header, job.drop)
  if job.abnormalities:
    for abnormality, lesion in zip(job.abnormalities, meta.lesions, strict=True):
      _write_abnormality(job, rendered, abnormality, lesion)
  if job.proposals:
    _write_proposals(job, rendered, path)
  return meta


def _save(ds, path: pathlib.Path, header: dict, drop: tuple[str, ...]) -> None:
  for keyword in drop:
    if keyword in ds:
      delattr(ds, keyword)
  for keyword, value in header.items():
    setattr(ds, keyword, value)
  synthetic.save(ds, path)


def _lesion_mask(box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
  """(height, width) bool: the pixels an ellipse inscribed in ``box`` touches.

  A pixel counts when its point nearest the centre lies inside, so the mask's box is ``box``
  exactly (its extreme rows and columns hold a pixel each).
  """
  x0, y0, x1, y1 = box
  cx, cy, a, b = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
  xs, ys = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
  dx = (np.clip(cx, xs, xs + 1) - cx) / a
  dy = (np.clip(cy, ys, ys + 1) - cy) / b
  return dx[None, :] ** 2 + dy[:, None] ** 2 < 1.0


def _write_abnormality(job: _Job, rendered: synthetic.Rendered, abnormality: _Abnormality,
                       lesion: synthetic.Lesion) -> None:
  meta = rendered.meta
  x0, y0, x1, y1 = lesion.box
  mask_meta = dataclasses.replace(meta, image_id=abnormality.mask_path, bits_stored=8,
                                  path=abnormality.mask_path, lesions=())
  mask = _lesion_mask(lesion.box, meta.height, meta.width).astype(np.float32)
  _save(synthetic.dicom_dataset(job.image, mask_meta, mask), job.image.out / mask_meta.path,
        abnormality.mask_header, job.drop)
  crop_meta = dataclasses.replace(meta, image_id=abnormality.crop_path,
                                  path=abnormality.crop_path, width=x1 - x0, height=y1 - y0,
                                  lesions=())
  pixels = rendered.phantom.image[y0:y1, x0:x1]
  _save(synthetic.dicom_dataset(job.image, crop_meta, pixels, rendered.window),
        job.image.out / crop_meta.path, abnormality.crop_header, job.drop)


def _write_proposals(job: _Job, rendered: synthetic.Rendered, image_path: pathlib.Path) -> None:
  """The file in the reference crop's pixels, found on the decoded file as prepare finds it."""
  meta = rendered.meta
  crop = breast.find_breast(dicom.read_dicom(image_path).pixels, image_path, rule="reference")
  found = synthetic.simulate_detector([l.box for l in meta.lesions], meta.width, meta.height,
                                      meta.laterality, key=meta.image_id)
  top = np.concatenate([[[*synthetic.mask_box(rendered.phantom.breast), _BREAST_SCORE]], found])
  rng = np.random.default_rng([_SEED_TAG, 1, zlib.crc32(meta.image_id.encode())])
  n = max(0, job.proposal_count - len(top))
  # Detectors repeat their boxes with small shifts and lower scores.
  pick = top[rng.integers(len(top), size=n)]
  size = (pick[:, 2:4] - pick[:, 0:2]) * rng.uniform(0.6, 1.5, (n, 1))
  centre = (pick[:, 0:2] + pick[:, 2:4]) / 2 + rng.normal(0, 0.25, (n, 2)) * size
  tail = np.concatenate([centre - size / 2, centre + size / 2,
                         np.geomspace(*_TAIL_SCORES, n)[:, None]], axis=1)
  boxes = np.concatenate([top, tail])[:job.proposal_count]
  boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] - crop.x0, 0, crop.width)
  boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] - crop.y0, 0, crop.height)
  boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
  boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
  lines = [" ".join(str(np.float32(v)) for v in ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, s))
           for x0, y0, x1, y1, s in boxes]
  path = job.image.out / job.proposals
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")


def _write_csv(path: pathlib.Path, columns, rows) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


# ---------------------------------------------------------------------------------------------
# CBIS-DDSM.


def _cbis_uid(seed: int, *parts) -> str:
  digits = int(hashlib.sha256("/".join(map(str, ("cbis", seed) + parts)).encode()).hexdigest(), 16)
  return _CBIS_UID_ROOT + str(digits)[:64 - len(_CBIS_UID_ROOT)]


def _nbia_date(study_date: str) -> str:
  return datetime.datetime.strptime(study_date, "%Y%m%d").strftime("%m-%d-%Y")


def _cbis_series(seed: int, name: str, date: str, description: str, file: str
                 ) -> tuple[str, str, dict]:
  """(folder path on disk, the CSV's UID path, header) of one NBIA series of ``name``; NBIA
  numbers its folders by the UIDs' last five digits."""
  study, series = _cbis_uid(seed, name, "study"), _cbis_uid(seed, name, description)
  on_disk = (f"CBIS-DDSM/{name}/{date}-DDSM-{study[-5:]}/1.000000-{description}-{series[-5:]}"
             "/1-1.dcm")
  header = {"PatientID": name, "PatientName": name, "StudyInstanceUID": study,
            "SeriesInstanceUID": series, "SeriesDescription": description}
  return on_disk, f"{name}/{study}/{series}/{file}", header


def _cbis_jobs(jobs: list[synthetic.ImageJob], seed: int) -> list[_Job]:
  # CBIS-DDSM holds the breasts with an abnormality, each a Mass- or a Calc- case: the family
  # of its first finding (a malignant breast's cancer) keeps its findings.
  kept = []
  for job in jobs:
    if job.findings:
      calc = job.findings[0].kind in synthetic.CALCIFICATIONS
      kept.append(dataclasses.replace(
          job, findings=[f for f in job.findings if (f.kind in synthetic.CALCIFICATIONS) == calc]))
  _check(bool(kept), "CBIS-DDSM holds only breasts with an abnormality, and no breast has one:"
         " raise malignant_fraction or benign_fraction")
  studies = sorted({job.study for job in kept})
  # Official test patients, then the validation share the source splits off the training ones.
  targets = _splits(seed, _study_labels(kept, studies),
                    {"test": 0.2, "val": cbis_ddsm.VAL_FRACTION})
  split = {s: "test" if t == "test" else "train" for s, t in zip(studies, targets)}
  numbers = iter(_rng(seed, 1).permutation(np.arange(1, 100_000)))
  taken: set[str] = set()
  patients = {}
  for study, target in zip(studies, targets):
    patients[study] = _id_in(
        target, (f"P_{int(p):05d}" for p in numbers),
        lambda key: ("" if key in taken else "test" if target == "test"
                     else split_by_key(key, cbis_ddsm.VAL_FRACTION)))
    taken.add(patients[study])

  out = []
  for job in kept:
    meta, patient, official = job.meta, patients[job.study], split[job.study]
    calc = job.findings[0].kind in synthetic.CALCIFICATIONS
    name = (f"{'Calc' if calc else 'Mass'}-{'Test' if official == 'test' else 'Training'}"
            f"_{patient}_{_side(meta.laterality)}_{meta.view}")
    date = _nbia_date(job.study_date)
    path, csv_path, header = _cbis_series(seed, name, date, "full mammogram images", "000000.dcm")
    rng = _breast_rng(seed, 1, job)
    density = _density_class(job.density) + 1
    rows, abnormalities = [], []
    for k, finding in enumerate(job.findings, start=1):
      folder = f"{name}_{k}"
      mask_path, mask_csv, mask_header = _cbis_series(seed, folder, date, "ROI mask images",
                                                      "000001.dcm")
      crop_path, crop_csv, crop_header = _cbis_series(seed, folder, date, "cropped images",
                                                      "000000.dcm")
      abnormalities.append(_Abnormality(mask_path, mask_header, crop_path, crop_header))
      malignant = _is_malignant(finding)
      pathology = ("MALIGNANT" if malignant
                   else ("BENIGN", "BENIGN_WITHOUT_CALLBACK")[int(rng.uniform() < 0.3)])
      row = {"patient_id": patient, "left or right breast": _side(meta.laterality),
             "image view": meta.view, "abnormality id": str(k),
             "assessment": str(rng.integers(4, 6) if malignant else rng.integers(2, 5)),
             "pathology": pathology, "subtlety": str(rng.integers(1, 6)),
             "image file path": csv_path, "cropped image file path": crop_csv,
             "ROI mask file path": mask_csv}
      if calc:
        row |= {"breast density": str(density), "abnormality type": "calcification",
                "calc type": "PLEOMORPHIC" if malignant else "PUNCTATE",
                "calc distribution": "CLUSTERED" if malignant else "SCATTERED"}
      else:
        row |= {"breast_density": str(density), "abnormality type": "mass",
                "mass shape": "IRREGULAR" if malignant else ("OVAL", "ROUND")[rng.integers(2)],
                "mass margins": "SPICULATED" if malignant else "CIRCUMSCRIBED"}
      rows.append(row)
    image = _restyled(job, image_id=name, study_id=patient, patient_id=patient, path=path,
                      photometric="MONOCHROME2", bits_stored=16,
                      transfer_syntax=dcm_uid.ExplicitVRLittleEndian)
    csv_name = (f"{'calc' if calc else 'mass'}_case_description_"
                f"{'test' if official == 'test' else 'train'}_set.csv")
    out.append(_Job(image, official, csv_name, {}, tuple(rows), header, _NO_VIEW_TAGS,
                    tuple(abnormalities)))
  return out


def _cbis_csvs(out: pathlib.Path, jobs: list[_Job], metas) -> None:
  for family, columns in (("mass", MASS_COLUMNS), ("calc", CALC_COLUMNS)):
    for split in ("train", "test"):
      name = f"{family}_case_description_{split}_set.csv"
      _write_csv(out / name, columns, [row for job in jobs if job.csv == name
                                       for row in job.findings])


# ---------------------------------------------------------------------------------------------
# VinDr-Mammo.


def _vindr_jobs(jobs: list[synthetic.ImageJob], seed: int) -> list[_Job]:
  studies = range(1 + max(job.study for job in jobs))
  split = _splits(seed, _study_labels(jobs, studies), {"test": 0.2, "val": vindr.VAL_FRACTION})
  # Study ids as hex as VinDr's; a training study's id puts it where the source's validation
  # split (by a hash of the id) is meant to.
  ids = {s: _id_in(split[s], (synthetic.hex_id(seed, "vindr study", s, k) for k in range(10_000)),
                   lambda key, s=s: "test" if split[s] == "test"
                   else split_by_key(key, vindr.VAL_FRACTION)) for s in studies}
  out = []
  for job in jobs:
    job = _restyled(job, study_id=ids[job.study])
    meta = job.meta
    official = "test" if split[job.study] == "test" else "training"
    # Cancers BI-RADS 4-5, benign findings 2-3 (3 beside a cancer), normal breasts 1.
    rng = _breast_rng(seed, 2, job)
    birads = (rng.integers(4, 6) if meta.label else rng.integers(2, 4) if job.findings else 1)
    row = {"study_id": meta.study_id, "series_id": synthetic.hex_id(
               seed, "series", job.study, meta.laterality, meta.view),
           "image_id": meta.image_id, "laterality": meta.laterality,
           "view_position": meta.view, "height": str(meta.height), "width": str(meta.width),
           "breast_birads": f"BI-RADS {birads}",
           "breast_density": f"DENSITY {'ABCD'[_density_class(job.density)]}",
           "split": official}
    findings = tuple(
        {"finding_categories": ("['Suspicious Calcification']" if f.kind in synthetic.CALCIFICATIONS
                                else "['Mass']"),
         "finding_birads": f"BI-RADS {birads if _is_malignant(f) or not meta.label else 3}"}
        for f in job.findings)
    image = _restyled(job, path=f"images/{meta.study_id}/{meta.image_id}.dicom")
    out.append(_Job(image, "test" if official == "test" else "train",
                    "breast-level_annotations.csv", row, findings, {}))
  return out


def _vindr_csvs(out: pathlib.Path, jobs: list[_Job], metas) -> None:
  _write_csv(out / "breast-level_annotations.csv", VINDR_BREAST_COLUMNS,
             [job.row for job in jobs])
  rows = []
  for job, meta in zip(jobs, metas):
    base = {k: v for k, v in job.row.items() if k != "split"}
    for finding, lesion in zip(job.findings, meta.lesions, strict=True):
      box = dict(zip(("xmin", "ymin", "xmax", "ymax"), (f"{float(v):.2f}" for v in lesion.box)))
      rows.append(base | finding | box | {"split": job.row["split"]})
    if not job.findings:
      rows.append(base | {"finding_categories": "['No Finding']", "finding_birads": "",
                          "xmin": "", "ymin": "", "xmax": "", "ymax": "",
                          "split": job.row["split"]})
  _write_csv(out / "finding_annotations.csv", VINDR_FINDING_COLUMNS, rows)


# ---------------------------------------------------------------------------------------------
# RSNA Screening Mammography.


def _rsna_jobs(jobs: list[synthetic.ImageJob], seed: int) -> list[_Job]:
  n = 1 + max(job.study for job in jobs)
  rng = _rng(seed, 3)
  # RSNA has no official split: the source splits patients by a hash of their id, so each
  # patient's id is chosen to land in the split drawn for it.
  targets = _splits(seed, _study_labels(jobs, range(n)),
                    {"val": rsna.VAL_FRACTION, "test": rsna.TEST_FRACTION})
  candidates = iter(rng.permutation(np.arange(10000, 65535)))
  taken: set[str] = set()
  patients = []
  for target in targets:
    patients.append(_id_in(target, (str(p) for p in candidates), lambda key: (
        "" if key in taken else split_by_key(key, rsna.VAL_FRACTION, rsna.TEST_FRACTION))))
    taken.add(patients[-1])
  image_ids = rng.choice(2**31 - 1, len(jobs), replace=False) + 1
  sites = rng.integers(1, 3, n)
  machines = [int(rng.choice(_RSNA_MACHINES[int(s)])) for s in sites]
  ages = rng.integers(40, 81, n)
  out = []
  for job, image_id in zip(jobs, image_ids):
    meta, s = job.meta, job.study
    patient = str(patients[s])
    # Cancer per breast; benign findings were biopsied, and are RSNA's difficult negatives.
    biopsied = bool(job.findings)
    invasive = int(meta.label and _breast_rng(seed, 3, job).uniform() < 0.7)
    row = {"site_id": str(sites[s]), "patient_id": patient, "image_id": str(image_id),
           "laterality": meta.laterality, "view": meta.view, "age": f"{float(ages[s]):.1f}",
           "cancer": str(meta.label), "biopsy": str(int(biopsied)), "invasive": str(invasive),
           "BIRADS": "0.0" if biopsied else "1.0", "implant": "0",
           "density": "ABCD"[_density_class(job.density)], "machine_id": str(machines[s]),
           "difficult_negative_case": str(biopsied and not meta.label)}
    image = _restyled(job, image_id=str(image_id), study_id=patient, patient_id=patient,
                      path=f"train_images/{patient}/{image_id}.dcm")
    out.append(_Job(image, "", "train.csv", row, (), {"PatientID": patient}))
  return out


def _rsna_csv(out: pathlib.Path, jobs: list[_Job], metas) -> None:
  _write_csv(out / "train.csv", RSNA_COLUMNS, [job.row for job in jobs])


# ---------------------------------------------------------------------------------------------
# The reference's CSVs and proposal files.


def _reference_jobs(jobs: list[synthetic.ImageJob], seed: int, count: int) -> list[_Job]:
  split = _splits(seed, _study_labels(jobs, range(1 + max(job.study for job in jobs))),
                  {"val": 0.16, "test": 0.2})
  out = []
  for job in jobs:
    meta = job.meta
    im_path = f"{meta.study_id}/{meta.image_id}.dicom"
    row = {"study_id": meta.study_id, "laterality": meta.laterality, "im_path": im_path,
           "cancer": str(meta.label), "view": meta.view}
    preds = proposals.proposal_path("proposals", im_path).as_posix()
    out.append(_Job(_restyled(job, path=f"images/{im_path}"), split[job.study],
                    f"{split[job.study]}.csv", row, (), {}, proposals=preds,
                    proposal_count=count))
  return out


def _reference_csvs(out: pathlib.Path, jobs: list[_Job], metas) -> None:
  for split in ("train", "val", "test"):
    columns = REFERENCE_TEST_COLUMNS if split == "test" else REFERENCE_COLUMNS
    _write_csv(out / f"{split}.csv", columns,
               [{c: job.row[c] for c in columns} for job in jobs if job.split == split])


_JOBS = {"cbis_ddsm": _cbis_jobs, "vindr": _vindr_jobs, "rsna": _rsna_jobs}
_CSVS = {"cbis_ddsm": _cbis_csvs, "vindr": _vindr_csvs, "rsna": _rsna_csv, "csv": _reference_csvs}
