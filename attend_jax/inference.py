"""A trained model on new DICOM files: loading, preprocessing as in training, batched prediction,
per-breast and per-exam aggregation, and overlay pictures.

``python -m attend_jax.predict`` is the command-line front end; this module is its library.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from attend_jax.data import dicom, pipeline, prepare, proposals
from attend_jax.data.errors import DataError
from attend_jax.data.sources.base import Example
from attend_jax.models import attend, detector
from attend_jax.train import checkpoint, trainer

DICOM_SUFFIXES = (".dcm", ".dicom")
WEIGHTS = "weights"  # A standalone export: DIR/config.json + DIR/weights (params, stats).


class ModelNotFoundError(FileNotFoundError):
  """The run or checkpoint folder holds no usable model; the message says what is missing."""


@dataclasses.dataclass
class Loaded:
  config: ml_collections.ConfigDict
  model: attend.AttendModel | detector.Detector  # In eval mode.
  source: str  # Which checkpoint, for the outputs.
  # proposals.source="detector": batch -> batch with the run's own detector's proposals.
  proposer: Callable[[dict], dict] | None = None


def load(directory: str | os.PathLike) -> Loaded:
  """The model of a training workdir (best checkpoint, else the latest) or of a weights export:
  a classifier, with the detector that proposes its RoIs if it was trained with one, or a
  detector.

  The config comes from ``DIR/config.json``, so predictions use the run's own preprocessing.
  """
  directory = pathlib.Path(directory).absolute()
  config_path = directory / "config.json"
  if not config_path.exists():
    raise ModelNotFoundError(f"{directory}: no config.json; pass a training workdir"
                             " (python -m attend_jax.main --workdir) or a converted checkpoint.")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  config.model.pretrained = ""  # The checkpoint holds the backbone too.
  model = trainer.build_model(config)
  graph, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  target = {"params": params, "stats": stats}
  for sub in (checkpoint.BEST, checkpoint.LATEST, WEIGHTS):
    restored = checkpoint.restore_weights(directory / sub, target)
    if restored is not None:
      step, state = restored
      model = nnx.merge(graph, state["params"], state["stats"], rest)
      model.eval()
      proposer = trainer.make_proposer(config, directory)
      return Loaded(config, model, f"{directory / sub} step {step}", proposer)
  raise ModelNotFoundError(f"{directory}: no checkpoint in {checkpoint.BEST}/,"
                           f" {checkpoint.LATEST}/ or {WEIGHTS}/ yet.")


def find_dicoms(inputs: Sequence[str | os.PathLike]) -> tuple[list[pathlib.Path], list]:
  """DICOM files among ``inputs`` (files, or folders scanned recursively), and missing paths.

  In folders, files ending in .dcm or .dicom count; a file named explicitly always does.
  """
  found, missing = [], []
  for item in inputs:
    path = pathlib.Path(item)
    if path.is_dir():
      found += sorted(p for p in path.rglob("*") if p.is_file()
                      and p.suffix.lower() in DICOM_SUFFIXES)
    elif path.is_file():
      found.append(path)
    else:
      missing.append((str(path), "no such file or folder"))
  unique = list(dict.fromkeys(p.absolute() for p in found))
  return unique, missing


def _example(path: pathlib.Path, proposal_dir: str | None) -> Example:
  header = dicom.read_header(path)
  study = str(header.get("StudyInstanceUID", "") or path.parent.name)
  props = None
  if proposal_dir:
    for candidate in (pathlib.Path(proposal_dir) / f"{path.stem}_preds.txt",
                      pathlib.Path(proposal_dir) / path.parent.name / f"{path.stem}_preds.txt"):
      if candidate.exists():
        props = str(candidate)
        break
    if props is None:
      raise DataError(path, f"no proposal file {path.stem}_preds.txt in {proposal_dir}")
  return Example(image_id=path.stem, study_id=study,
                 patient_id=str(header.get("PatientID", "") or study), laterality="", view="",
                 label=0, path=str(path), split="predict", proposals_path=props)


def _preprocess(args) -> tuple[str, dict | None, str | None]:
  path, opts, proposal_dir = args
  try:
    return str(path), prepare.process_example(_example(path, proposal_dir), opts), None
  except DataError as e:
    return str(path), None, e.reason


def preprocess(paths: Sequence[pathlib.Path], config, proposal_dir: str | None = None,
               workers: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> Iterable[tuple]:
  """(path, record, error) per file, in order: the training preprocessing, in parallel."""
  opts = prepare.PrepareOptions(
      long_side=config.data.image_size,
      normalize_orientation=not config.data.get("keep_orientation", False))
  jobs = [(p, opts, proposal_dir) for p in paths]
  workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
  if workers <= 1:
    results = map(_preprocess, jobs)
    pool = None
  else:
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=prepare._pool_context())
    results = pool.map(_preprocess, jobs, chunksize=2)
  try:
    for done, item in enumerate(results, start=1):
      if progress:
        progress(done, len(jobs))
      yield item
  finally:
    if pool is not None:
      pool.shutdown()


def predict_fn(model: attend.AttendModel, config, proposer: Callable[[dict], dict] | None = None):
  """A jitted ``batch -> (probabilities, RoIs, attention of the pooled token over the RoIs,
  the proposals they were drawn from)``; ``proposer`` (``Loaded.proposer``) first replaces the
  batch's proposals by a detector's."""
  graph, state = nnx.split(model)
  pool_row = config.proposals.topk if config.model.pool == "cls" else 0
  block = config.model.pool_attn_block - 1

  @jax.jit
  def run(state, batch):
    m = nnx.merge(graph, state)
    logits, aux, rois = trainer._forward(m, batch, config, train=False)
    attention = aux["attention"][block][:, pool_row, : rois.shape[1]]
    return (trainer.probabilities(logits, config.model.num_classes), rois, attention,
            batch["proposals"])

  if proposer is None:
    return lambda batch: run(state, batch)
  return lambda batch: run(state, proposer(batch))


def _roi_rows(rois: np.ndarray, attention: np.ndarray, record: dict, anchor: bool,
              props: np.ndarray) -> list:
  """RoIs of one image in original DICOM pixels, with detector score and attention weight."""
  xyxy = np.concatenate([rois[:, :2] - rois[:, 2:] / 2, rois[:, :2] + rois[:, 2:] / 2], 1)
  original = prepare.to_original(xyxy, record["crop_box"], bool(record["flipped"]),
                                 float(record["scale"]))
  props = np.asarray(props).reshape(-1, 5)
  rows = []
  for i, (box, weight) in enumerate(zip(original, attention)):
    score = None
    match = np.flatnonzero(np.all(np.isclose(props[:, :4], rois[i], atol=1e-3), axis=1))
    if not (anchor and i == 0) and len(match):
      score = float(props[match[0], 4])
    rows.append({"box_xyxy": [round(float(v), 1) for v in box], "detector_score": score,
                 "attention": float(weight), "anchor": bool(anchor and i == 0)})
  return rows


def predict(loaded: Loaded, paths: Sequence[pathlib.Path], proposal_dir: str | None = None,
            batch_size: int = 8, workers: int | None = None,
            progress: Callable[[int, int], None] | None = None,
            on_image: Callable[[dict, dict], None] | None = None) -> tuple[list, list]:
  """(per-image predictions, bad files as (path, reason)).

  ``on_image(prediction, record)`` is called for each image (the overlays hook).
  """
  config = loaded.config
  if trainer.task(config) != "classify":
    raise ValueError(f"{loaded.source} is a {trainer.task(config)!r} model; predict needs a"
                     " classifier (write a detector's boxes with tools/export_proposals.py).")
  if config.proposals.source == "files" and not proposal_dir:
    raise ValueError(
        "This model was trained on detector proposals (proposals.source='files'): pass"
        " --proposals DIR with <image>_preds.txt files (cx cy w h score per line).")
  cfg = pipeline.PipelineConfig(data_dir="", config="", image_size=config.data.image_size,
                                num_proposals=max(config.proposals.topk, 1))
  run = predict_fn(loaded.model, config, loaded.proposer)
  anchor = config.proposals.anchor or config.proposals.source not in ("files", "detector")
  images, bad, pending = [], [], []

  def flush():
    fixed = [pipeline.to_fixed_shapes(r, i, cfg) for i, (_, r) in enumerate(pending)]
    n = len(fixed)
    batch = {k: np.stack([f[k] for f in fixed] + [np.zeros_like(fixed[0][k])] * (batch_size - n))
             for k in fixed[0]}
    batch["image_hw"][n:] = 1
    probs, rois, attention, props = jax.device_get(
        run({k: jnp.asarray(v) for k, v in batch.items()}))
    for j, (path, record) in enumerate(pending):
      out = {"path": path, "image_id": str(record["image_id"]),
             "study_id": str(record["study_id"]), "patient_id": str(record["patient_id"]),
             "laterality": str(record["laterality"]), "view": str(record["view"]),
             "probability": float(probs[j]),
             "rois": _roi_rows(rois[j], attention[j], record, anchor, props[j])}
      images.append(out)
      if on_image:
        on_image(out, record)
    pending.clear()

  for path, record, error in preprocess(paths, config, proposal_dir, workers, progress):
    if error is not None:
      bad.append((path, error))
      continue
    pending.append((path, record))
    if len(pending) == batch_size:
      flush()
  if pending:
    flush()
  return images, bad


def aggregate(images: Sequence[dict]) -> tuple[list[dict], list[dict]]:
  """Per-breast (views of one study and side: mean and max) and per-exam (max over breasts of
  the breast mean) probabilities. Images without a laterality stay out of the breast level."""
  breasts: dict[tuple[str, str], list[float]] = {}
  for im in images:
    if im["laterality"] in ("L", "R"):
      breasts.setdefault((im["study_id"], im["laterality"]), []).append(im["probability"])
  breast_rows = [{"study_id": s, "laterality": lat, "views": len(p),
                  "probability_mean": float(np.mean(p)), "probability_max": float(np.max(p))}
                 for (s, lat), p in sorted(breasts.items())]
  exams: dict[str, list[dict]] = {}
  for row in breast_rows:
    exams.setdefault(row["study_id"], []).append(row)
  exam_rows = [{"study_id": s, "breasts": len(rows),
                "probability": max(r["probability_mean"] for r in rows),
                "side": max(rows, key=lambda r: r["probability_mean"])["laterality"]}
               for s, rows in sorted(exams.items())]
  return breast_rows, exam_rows


def write_outputs(out: pathlib.Path, images: list, bad: list, source: str) -> dict:
  """predictions.csv / .json, breasts.csv, exams.csv and bad_files.csv into ``out``."""
  out.mkdir(parents=True, exist_ok=True)
  breast_rows, exam_rows = aggregate(images)
  with open(out / "predictions.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "image_id", "study_id", "laterality", "view", "probability", "rois"])
    for im in images:
      w.writerow([im["path"], im["image_id"], im["study_id"], im["laterality"], im["view"],
                  f"{im['probability']:.6f}", json.dumps(im["rois"], separators=(",", ":"))])
  for name, rows, cols in (
      ("breasts.csv", breast_rows,
       ["study_id", "laterality", "views", "probability_mean", "probability_max"]),
      ("exams.csv", exam_rows, ["study_id", "breasts", "probability", "side"])):
    with open(out / name, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=cols)
      w.writeheader()
      w.writerows(rows)
  with open(out / "bad_files.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "reason"])
    w.writerows(bad)
  summary = {"model": source, "images": images, "breasts": breast_rows, "exams": exam_rows,
             "bad_files": [{"path": p, "reason": r} for p, r in bad]}
  (out / "predictions.json").write_text(json.dumps(summary, indent=1) + "\n")
  return summary


def draw_overlay(prediction: dict, record: dict, path: pathlib.Path) -> None:
  """The breast as stored (orientation restored), its RoIs coloured by attention, and the
  probability in the corner."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import patches

  image = np.asarray(record["image"], np.float32) / 65535.0
  flipped, scale = bool(record["flipped"]), float(record["scale"])
  x0, y0 = (int(v) for v in record["crop_box"][:2])
  if flipped:
    image = image[:, ::-1]
  h, w = image.shape
  fig, ax = plt.subplots(figsize=(4, 4 * h / max(w, 1)), dpi=120)
  ax.imshow(image, cmap="gray", vmin=0, vmax=1)
  cmap = plt.get_cmap("plasma")
  weights = np.array([r["attention"] for r in prediction["rois"]])
  top = weights.max() if len(weights) and weights.max() > 0 else 1.0
  for roi in prediction["rois"]:
    bx0, by0, bx1, by1 = roi["box_xyxy"]
    # Back from original pixels to the crop shown here (already unflipped).
    bx0, bx1, by0, by1 = ((bx0 - x0) * scale, (bx1 - x0) * scale, (by0 - y0) * scale,
                          (by1 - y0) * scale)
    color = cmap(roi["attention"] / top)
    ax.add_patch(patches.Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, color=color,
                                   linewidth=1 if roi["anchor"] else 2,
                                   linestyle="--" if roi["anchor"] else "-"))
    ax.text(bx0, by0, f"{roi['attention']:.2f}", color=color, fontsize=6, va="bottom")
  ax.text(0.02, 0.98, f"p(cancer) = {prediction['probability']:.3f}", transform=ax.transAxes,
          va="top", ha="left", color="white", fontsize=8,
          bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0})
  ax.set_title(f"{prediction['image_id']}  {prediction['laterality']} {prediction['view']}",
               fontsize=7)
  ax.axis("off")
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


class Progress:
  """One status line on stderr: done/total, rate and time left."""

  def __init__(self, what: str = "images"):
    self.what, self.start = what, time.perf_counter()

  def __call__(self, done: int, total: int) -> None:
    rate = done / max(time.perf_counter() - self.start, 1e-9)
    print(f"\r{done}/{total} {self.what}  {rate:5.1f}/s  ETA {(total - done) / rate:5.0f} s",
          end="\n" if done == total else "", file=sys.stderr, flush=True)
