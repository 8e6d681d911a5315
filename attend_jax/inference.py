"""A trained model on new DICOM files: loading, preprocessing as in training, batched prediction,
per-breast and per-exam aggregation, and overlay pictures.

``python -m attend_jax.predict`` is the command-line front end; this module is its library.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import numpy as np

from attend_jax import box_ops, geometry, hosts, run, tasks
from attend_jax import paths as paths_lib
from attend_jax.data import availability, dicom, pipeline, prepare
from attend_jax.data import pool as pool_lib
from attend_jax.data.sources.base import Example
from attend_jax.errors import DataError
from attend_jax.eval import calibration as calibration_lib
from attend_jax.eval import report
from attend_jax.eval import tables as tables_lib
from attend_jax.train import prediction, sharding

DICOM_SUFFIXES = (".dcm", ".dicom")


def find_dicoms(inputs: Sequence[str | os.PathLike]) -> tuple[list, list]:
  """DICOM files among ``inputs`` (files, or folders scanned recursively), and the inputs that
  gave none, as (path, reason): a missing path, or a folder without DICOM files.

  In folders, files ending in .dcm or .dicom count; a file named explicitly always does. An
  input may be on a bucket (``gs://``): its files are ``epath.Path``s, read from there.
  """
  found, missing = [], []
  for item in inputs:
    local = paths_lib.is_local(item)
    paths_lib.check_reachable(item)  # A bucket's: one line in seconds, not gcsfs's minute.
    path = pathlib.Path(item) if local else paths_lib.path(item)
    if path.is_dir():
      files = (sorted(p for p in path.rglob("*") if p.is_file()
                      and p.suffix.lower() in DICOM_SUFFIXES) if local
               else [path / rel for rel in paths_lib.files_below(path)
                     if rel.lower().endswith(DICOM_SUFFIXES)])
      if not files:
        missing.append((str(path), "a folder without DICOM files (*.dcm, *.dicom)"))
      found += files
    elif path.is_file():
      found.append(path)
    else:
      missing.append((str(path), "no such file or folder"))
  unique = list(dict.fromkeys(p.absolute() if paths_lib.is_local(p) else p for p in found))
  return unique, missing


def image_ids(paths: Sequence) -> list[str]:
  """An id per file, unique among ``paths``: the file name without its suffix where that is
  unique, else the path from the files' common folder (CBIS-DDSM names every file 1-1.dcm)."""
  stems = collections.Counter(p.stem for p in paths)
  folders = [str(p).split("/")[:-1] for p in paths]  # A bucket's gs://b/... too.
  common = len(os.path.commonprefix(folders)) if paths else 0
  return [p.stem if stems[p.stem] == 1
          else "/".join(str(p).split("/")[common:]).removesuffix(p.suffix) for p in paths]


def example(path: pathlib.Path, proposal_dir: str | None = None,
            image_id: str | None = None, who: dicom.Identity | None = None) -> Example:
  """A DICOM file as the source of one prediction: its ids, side and view from the header (and
  a CBIS/NBIA name), its exam as the patient on one date. ``who`` is the header's identity
  when the file was already read; otherwise the header is read here."""
  who = who or dicom.identity(dicom.read_header(path), path)
  props = None
  if proposal_dir:
    folder = paths_lib.as_given(proposal_dir)  # A bucket too.
    for candidate in (folder / f"{path.stem}_preds.txt",
                      folder / path.parent.name / f"{path.stem}_preds.txt"):
      if candidate.exists():
        props = str(candidate)
        break
    if props is None:
      raise DataError(path, f"no proposal file {path.stem}_preds.txt in {proposal_dir}")
  exam = who.exam or path.parent.name
  return Example(image_id=image_id or path.stem, study_id=exam,
                 patient_id=who.patient_id or exam, laterality=who.laterality, view=who.view,
                 label=0, path=str(path), split="predict", proposals_path=props)


def none_usable(paths: Sequence[pathlib.Path],
                max_pixels: int = dicom.MAX_PIXELS) -> list[tuple[str, str]]:
  """(path, reason) for every file if none of ``paths`` has a header that ``dicom.read_dicom``
  would decode, else [] (it stops at the first that has: one header read on good input).
  predict's check before loading a model, which takes a while."""
  bad = []
  for path in paths:
    try:
      dicom.image_header(path, max_pixels)
    except DataError as e:
      bad.append((str(path), e.reason))
    else:
      return []
  return bad


def preprocess_file(args) -> dict | tuple[str, str]:
  """The record of one file, or (file, reason): what each of preprocess's workers runs on
  ``(path, options, proposal_dir, image_id, max_pixels)``."""
  path, opts, proposal_dir, image_id, max_pixels = args
  try:
    image = dicom.read_dicom(path, max_pixels)  # The file is parsed once, here.
    return prepare.process_example(example(path, proposal_dir, image_id, image.identity), opts,
                                   max_pixels, image=image)
  except DataError as e:
    return str(path), e.reason


def preprocess(paths: Sequence[pathlib.Path], config, proposal_dir: str | None = None,
               workers: int | None = None,
               progress: Callable[[int, int], None] | None = None,
               time_limit: float = pool_lib.DEFAULT_TIME_LIMIT_S,
               log_path: str | os.PathLike | None = None,
               max_pixels: int = dicom.MAX_PIXELS,
               ids: Sequence[str] | None = None) -> Iterable[tuple]:
  """(path, record, error) per file, in order: the training preprocessing, in parallel. A file
  whose decoder fails in any way (an error, a crash, a hang past ``time_limit`` seconds), or
  whose header claims more than ``max_pixels`` pixels, gets its reason and the others carry
  on. ``ids``: the images' ids (default ``image_ids(paths)``)."""
  opts = availability.options(config)  # As the run's records were prepared.
  ids = image_ids(paths) if ids is None else ids
  jobs = [(p, opts, proposal_dir, i, max_pixels) for p, i in zip(paths, ids)]
  results = pool_lib.guarded_map(preprocess_file, jobs, preload=[prepare.__name__],
                                 workers=pool_lib.worker_count(workers, len(jobs)),
                                 time_limit=time_limit, log_path=log_path)
  for done, ((path, *_), result) in enumerate(results, start=1):
    if progress:
      progress(done, len(jobs))
    if isinstance(result, pool_lib.Failure):
      yield str(path), None, result.reason
    elif isinstance(result, tuple):
      yield str(path), None, result[1]
    else:
      yield str(path), result, None


def _roi_rows(rois: np.ndarray, attention: np.ndarray, scores: np.ndarray, record: dict,
              anchor: bool) -> list:
  """RoIs of one image in original DICOM pixels, with detector score and attention weight."""
  original = geometry.Placement.of(record).to_original(box_ops.to_xyxy(rois))
  return [{"box_xyxy": [round(float(v), 1) for v in box],
           "detector_score": None if np.isnan(score) else float(score),
           "attention": float(weight), "anchor": bool(anchor and i == 0)}
          for i, (box, weight, score) in enumerate(zip(original, attention, scores))]


# A host whose files have run out still takes part in every step: its rows are this, padding.
_BLANK = {"image": np.zeros((1, 1), np.uint16), "lesion_boxes": [], "lesion_malignant": [],
          "proposals": [], "label": 0}


def predict(loaded: run.Loaded, paths: Sequence[pathlib.Path], proposal_dir: str | None = None,
            batch_size: int = 8, workers: int | None = None,
            progress: Callable[[int, int], None] | None = None,
            on_image: Callable[[dict, dict], None] | None = None,
            on_rows: Callable[[list], None] | None = None,
            log_path: str | os.PathLike | None = None,
            max_pixels: int = dicom.MAX_PIXELS,
            ids: Sequence[str] | None = None) -> tuple[list, list]:
  """(per-image predictions, bad files as (path, reason)) of every host, in the order of
  ``paths``.

  Under ``jax.distributed`` every host calls it with the same ``paths``: host i of n decodes
  ``paths[i::n]``, each step's batch holds ``batch_size`` rows from every host, split over every
  host's devices (a host whose files have run out gives padding, so that all take the same
  steps), and each step's results are shared with every host. ``on_image(prediction, record)``
  is called on the host that decoded the image as its batch is done (``OutputWriter.image``
  draws its overlay); ``on_rows(predictions)`` on every host with each step's images of every
  host, in the order of ``paths`` (``OutputWriter.rows`` writes them). ``ids`` are the images'
  ids (default ``image_ids(paths)``). Decoders' stderr goes to ``log_path``. A file whose
  header claims more than ``max_pixels`` pixels is a bad file, not decoded.
  """
  config = loaded.config
  if tasks.name(config) != "classify":
    raise ValueError(f"{loaded.source} is a {tasks.name(config)!r} model; predict needs a"
                     " classifier (write a detector's boxes with tools/export_proposals.py).")
  if config.proposals.source == "files" and not proposal_dir:
    raise ValueError(
        "This model was trained on detector proposals (proposals.source='files'): pass"
        " --proposals DIR with <image>_preds.txt files (cx cy w h score per line).")
  num_proposals = max(config.proposals.topk, 1)
  mesh = prediction.batch_mesh(batch_size)
  step = prediction.model_step(loaded.task, loaded.model, detail=True,
                              proposal_step=loaded.proposal_step, mesh=mesh)
  anchor = config.proposals.anchor or config.proposals.source not in ("files", "detector")
  n, me = jax.process_count(), jax.process_index()
  ids = image_ids(paths) if ids is None else list(ids)
  position = {str(p): i for i, p in enumerate(paths)}
  share = slice(me, None, n)
  # Host 0's share stands for all: the progress line is host 0's.
  count = progress and (lambda done, _: progress(min(done * n, len(paths)), len(paths)))
  decoded = preprocess(paths[share], config, proposal_dir, workers, count, log_path=log_path,
                       max_pixels=max_pixels, ids=ids[share])
  images, bad = [], []

  def next_batch() -> list:
    pending = []
    for path, record, error in decoded:
      if error is not None:
        bad.append((path, error))
        continue
      pending.append((path, record))
      if len(pending) == batch_size:
        break
    return pending

  def outputs_of(pending: list) -> dict:
    """The step's outputs for this host's rows."""
    fixed = [pipeline.to_fixed_shapes(r, i, config.data.image_size, num_proposals)
             for i, r in enumerate([r for _, r in pending] or [_BLANK])]
    batch = pipeline.pad_batch({k: np.stack([f[k] for f in fixed]) for k in fixed[0]},
                               batch_size)
    del batch["valid"]  # The rows past len(pending) are padding; only those are read below.
    outputs = step(sharding.to_global(batch, mesh))
    if n == 1:
      return jax.device_get(outputs)
    from jax.experimental import multihost_utils

    # A global batch holds every host's rows, host by host.
    every = multihost_utils.process_allgather(outputs, tiled=True)
    return {k: np.asarray(v)[me * batch_size:(me + 1) * batch_size] for k, v in every.items()}

  calibration = loaded.calibration
  while True:
    pending = next_batch()
    if not any(hosts.from_every_host(len(pending))):
      break
    outputs = outputs_of(pending)
    mine = []
    for j, (path, record) in enumerate(pending):
      out = {"path": path, "image_id": str(record["image_id"]),
             "study_id": str(record["study_id"]), "patient_id": str(record["patient_id"]),
             "laterality": str(record["laterality"]), "view": str(record["view"]),
             "probability": float(outputs["prob"][j]),
             **calibrated(float(outputs["prob"][j]), calibration),
             "rois": _roi_rows(outputs["rois"][j], outputs["attention"][j],
                               outputs["roi_score"][j], record, anchor),
             # Boxes of its proposal file wholly off the image, dropped.
             "proposals_off_image": int(record.get("proposals_off_image", 0)),
             # What its header marks it as (dicom.check_image_kind), e.g. generated_2d.
             "marks": [str(m) for m in record.get("marks", ())]}
      mine.append(out)
      if on_image:
        on_image(out, record)
    done = ordered([im for host in hosts.from_every_host(mine) for im in host], paths)
    images += done
    if on_rows:
      on_rows(done)
  bad = [tuple(b) for host in hosts.from_every_host(bad) for b in host]
  return ordered(images, paths), sorted(bad, key=lambda b: position[b[0]])


def calibrated(probability: float, calibration: calibration_lib.Calibration | None) -> dict:
  """An image's ``probability_calibrated`` and ``flags`` ({operating point: bool}); both None
  for a model without calibration."""
  if calibration is None:
    return {"probability_calibrated": None, "flags": None}
  return {"probability_calibrated": float(calibration.calibrated([probability])[0]),
          "flags": calibration.flags(probability)}


def ordered(images: Sequence[dict], paths: Sequence[pathlib.Path]) -> list[dict]:
  """``images`` in the order of their files in ``paths``; those of other files (an earlier
  run's) after them, in their own order."""
  position = {str(p): i for i, p in enumerate(paths)}
  return sorted(images, key=lambda im: position.get(im["path"], len(position)))


def read_predictions(out: str | os.PathLike) -> list[dict]:
  """The images of ``out/predictions.csv`` (a local folder or a bucket), as predict's
  predictions (without ``patient_id`` and ``proposals_off_image``, which the table does not
  keep); [] where there is none. A row cut short (a run killed while writing it) is left out:
  its image is predicted again. A table of before calibration, or of a model without one,
  gives ``probability_calibrated`` and ``flags`` None."""
  table = paths_lib.path(out) / "predictions.csv"
  if not table.exists():
    return []
  images = []
  for row in csv.DictReader(io.StringIO(table.read_text(), newline="")):
    try:
      images.append({"path": row["path"], "image_id": row["image_id"],
                     "study_id": row["study_id"], "laterality": row["laterality"],
                     "view": row["view"], "probability": float(row["probability"]),
                     "probability_calibrated": (float(row["probability_calibrated"])
                                                if row.get("probability_calibrated") else None),
                     "flags": tables_lib.read_flags(row),
                     "rois": json.loads(row["rois"]),
                     "marks": tables_lib.read_marks(row.get("marks"))})
    except (TypeError, ValueError):
      continue
  return images


class OutputWriter:
  """predict's outputs in ``out``, written as they come: each image's row of predictions.csv as
  soon as its batch is done, so a crash keeps what was predicted, and its overlay; the tables
  that need every image (breasts.csv, exams.csv, bad_files.csv, predictions.json, and
  predictions.csv again, in the order of the files) at ``finish``.

  Under ``jax.distributed`` host 0 writes the tables (``tables=True``) and each host the
  overlays of its own images. ``done`` are the images of an earlier run into ``out``
  (``read_predictions``): predictions.csv starts with them. Where ``out`` is the local copy of a
  bucket folder, ``remote``, predictions.csv is uploaded there every ``every_s`` seconds, so
  that a VM that is lost keeps most of its rows for the resume. Opening it checks that ``out``
  is writable, before any work."""

  def __init__(self, out: str | os.PathLike, overlays: bool = False, tables: bool = True,
               done: Sequence[dict] = (), remote: str | os.PathLike | None = None,
               every_s: float = 30.0):
    self.out = pathlib.Path(out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.overlays = overlays
    self._table = self._open_table(done) if tables else None
    self._remote = None if remote is None or paths_lib.is_local(remote) else paths_lib.path(remote)
    self._every_s, self._uploaded = every_s, time.monotonic()

  def _open_table(self, images: Sequence[dict]) -> tables_lib.PredictionsCsv:
    """predictions.csv holding ``images``, replaced at once (the open file is renamed), so that
    a crash never loses the rows it held; new rows are appended to it."""
    partial = self.out / "predictions.csv.partial"
    table = tables_lib.PredictionsCsv(partial)
    for im in images:
      table.write(_row(im))
    os.replace(partial, self.out / "predictions.csv")
    return table

  def image(self, prediction: dict, record: dict) -> None:
    if self.overlays:
      name = prediction["image_id"].replace("/", "__")
      draw_overlay(prediction, record, self.out / "overlays" / f"{name}.png")

  def rows(self, predictions: Sequence[dict]) -> None:
    if self._table is None:
      return
    for im in predictions:
      self._table.write(_row(im))
    if self._remote is not None and time.monotonic() - self._uploaded >= self._every_s:
      (self._remote / "predictions.csv").write_bytes((self.out / "predictions.csv").read_bytes())
      self._uploaded = time.monotonic()

  def finish(self, images: list, bad: list, source: str) -> dict:
    """Writes the tables of ``images`` (every image, in order) and ``bad`` (host 0), and returns
    what predictions.json holds."""
    breast_rows, exam_rows = tables_lib.breasts_and_exams(images)
    summary = {"model": source, "images": images, "breasts": breast_rows, "exams": exam_rows,
               "bad_files": [{"path": p, "reason": r} for p, r in bad]}
    if self._table is None:
      return summary
    self._table.close()
    self._table = self._open_table(images)
    self._table.close()
    for name, rows, cols in (("breasts.csv", breast_rows, tables_lib.BREAST_COLUMNS),
                             ("exams.csv", exam_rows, tables_lib.EXAM_COLUMNS)):
      with open(self.out / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(tables_lib.csv_row(r) for r in rows)
    with open(self.out / "bad_files.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["path", "reason"])
      w.writerows(bad)
    (self.out / "predictions.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _row(image: dict) -> dict:
  return {k: image.get(k) for k in ("path", "image_id", "study_id", "laterality", "view",
                                    "probability", "probability_calibrated", "flags", "rois",
                                    "marks")}


def draw_overlay(prediction: dict, record: dict, path: pathlib.Path) -> None:
  """The breast as stored, orientation restored, its RoIs coloured by attention (the anchor
  dashed), and the probability in the corner."""
  placement = geometry.Placement.of(record)
  rois = prediction["rois"]
  weights = np.array([r["attention"] for r in rois])
  top = weights.max() if len(weights) and weights.max() > 0 else 1.0
  report.plot_overlay(report.Tile(
      placement.display(np.asarray(record["image"], np.float32) / 65535.0),
      np.array([placement.original_to_display(r["box_xyxy"])[0] for r in rois]).reshape(-1, 4),
      weights / top, texts=[f"{w:.2f}" for w in weights],
      dashed=np.array([bool(r["anchor"]) for r in rois]),
      caption=f"p(cancer) = {prediction['probability']:.3f}",
      title=f"{prediction['image_id']}  {prediction['laterality']} {prediction['view']}"), path)
