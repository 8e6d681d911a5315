r"""Writes a trained RoI detector's boxes as the reference's proposal files, one per image.

  python tools/export_proposals.py --detector workdirs/det_vindr --out data/proposals/vindr
  python tools/export_proposals.py --detector workdirs/det_vindr --dataset vindr_2048 \
      --data_dir data/prepared --splits train,val,test --batch_size 8 --out data/proposals/vindr

Every record of the chosen splits of a prepared dataset (default: the detector's own
config.data.name in its config.data.dir, all the splits it has) goes through the detector
(best checkpoint of WORKDIR, jitted, in padded batches). Each image gets
``OUT/<study_id>/<image_id>_preds.txt`` in the reference's format: one box per line,
``cx cy w h score``, best score first, the detector's valid boxes only, in pixels of the breast
crop at the original resolution and in the original orientation (not flipped). That is the
layout of the reference's own proposal folders, so both consumers find the files:

  python tools/prepare_data.py --dataset csv ... --proposals OUT   (<im_path stem>_preds.txt)
  python -m attend_jax.predict --workdir=CLASSIFIER --proposals=OUT DICOMS...
      (<dicom stem>_preds.txt in OUT or in OUT/<dicom's folder>/)

--layout=flat writes ``OUT/<image_id>_preds.txt`` instead (predict only, for DICOM folders not
named by study).

An image where the detector finds nothing gets one line, the whole crop with
score 0 (what the classifier falls back on anyway; the reference's reader rejects an empty
file). OUT/manifest.json, written last, records the checkpoint, dataset, splits, counts
and the convention.

--records also writes the dataset again with those boxes as its records' proposals (in stored
pixels, best first, up to the prepared dataset's max_proposals), as the prepared dataset
``<dataset>_det`` beside it: what ``configs/<dataset>.py:proposals`` trains on, the two-stage
recipe with the detector run once per image instead of at every training step.

  python tools/export_proposals.py --detector workdirs/detector_vindr --records
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags

from attend_jax import box_ops, cli, geometry, run, tasks
from attend_jax.data import availability, pipeline, prepare, records
from attend_jax.progress import Progress
from attend_jax.train import prediction
from configs import common

_DETECTOR = flags.DEFINE_string("detector", None, "A detector's training workdir (config.task ="
                                " 'detect'); its best checkpoint, else the latest.",
                                required=True)
_OUT = flags.DEFINE_string("out", None, "Folder for the proposal files and manifest.json.")
_RECORDS = flags.DEFINE_bool("records", False, "Also write the dataset with the boxes as its"
                             " proposals, as <dataset>_det beside it (configs/*.py:proposals).")
_DATASET = flags.DEFINE_string("dataset", None, "Prepared builder config, e.g. vindr_2048"
                               " (default: the detector's config.data.name).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where it was prepared (tools/prepare_data.py"
                                " --out; default: the detector's config.data.dir).")
_SPLITS = flags.DEFINE_list("splits", None, "Splits to export (default: all the dataset has).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per detector batch.")
_LAYOUT = flags.DEFINE_enum("layout", "study", ["study", "flat"],
                            "study: OUT/<study_id>/<image_id>_preds.txt (the reference's);"
                            " flat: OUT/<image_id>_preds.txt.")

SUFFIX = "_preds.txt"
MANIFEST = "manifest.json"
NAMING = {"study": f"<study_id>/<image_id>{SUFFIX}", "flat": f"<image_id>{SUFFIX}"}
CONVENTION = (
    "cx cy w h score per line, best score first, the detector's valid boxes after its NMS;"
    " pixels of the breast crop (the record's crop_box) at original resolution and in original"
    " orientation, as the reference's proposal files: stored box / scale, un-flipped with the"
    " crop width when the record is flipped. An image without any box gets one line, the whole"
    " crop with score 0.")


def proposal_file(out: str | os.PathLike, image_id: str, study_id: str,
                  layout: str = "study") -> pathlib.Path:
  """Where an image's file goes: ``OUT/<study_id>/<image_id>_preds.txt`` (or flat)."""
  names = {"image_id": image_id} if layout == "flat" else {"study_id": study_id,
                                                           "image_id": image_id}
  for what, name in names.items():
    if not name or name in (".", "..") or "/" in name or "\\" in name:
      hint = " (use --layout=flat)" if what == "study_id" else ""
      raise ValueError(f"image {image_id!r}: its {what} {name!r} cannot be a file name{hint}.")
  folder = pathlib.Path(out) if layout == "flat" else pathlib.Path(out) / study_id
  return folder / f"{image_id}{SUFFIX}"


def proposal_rows(boxes: np.ndarray, scores: np.ndarray, valid: np.ndarray, record: dict
                  ) -> np.ndarray:
  """One image's detections -> float32 (N, 5) ``cx cy w h score``, best first, valid only."""
  valid = np.asarray(valid, bool)
  boxes, scores = np.asarray(boxes)[valid], np.asarray(scores, np.float32)[valid]
  order = np.argsort(-scores, kind="stable")
  crop_box = np.asarray(record["crop_box"])
  if not len(order):
    w, h = float(crop_box[2] - crop_box[0]), float(crop_box[3] - crop_box[1])
    return np.array([[w / 2, h / 2, w, h, 0.0]], np.float32)
  # The reference's files are in pixels of the breast crop: the inverse of what prepare does to
  # them (mirror with the crop's width, then scale).
  cxcywh = box_ops.to_cxcywh(geometry.Placement.of(record).stored_to_crop(boxes[order]))
  return np.concatenate([cxcywh, scores[order, None]], 1).astype(np.float32)


def format_rows(rows: np.ndarray) -> str:
  """The reference's text: float32 values in their shortest exact form, space separated."""
  return "".join(" ".join(str(v) for v in row) + "\n" for row in np.asarray(rows, np.float32))


# What the files need of each record besides its detections: its ids and the stored ->
# original mapping.
GEOMETRY = ("crop_box", "flipped", "scale")


def _long_side(dataset: str) -> int | None:
  tail = dataset.rpartition("_")[2]
  return int(tail) if tail.isdigit() else None


def require_detector(loaded: run.Loaded) -> None:
  if tasks.name(loaded.config) != "detect":
    raise ValueError(f"{loaded.source} is a {tasks.name(loaded.config)!r} model, not a detector"
                     " (train one with config.task='detect', e.g. configs/detector_vindr.py).")


def resolve_dataset(config, dataset: str, data_dir: str, splits: Sequence[str] | None
                    ) -> list[str]:
  """The splits to export; DatasetNotFoundError if the dataset or a split is not prepared."""
  have = availability.require(
      data_dir, dataset, splits or (), flag="--data_dir, default: the detector's config.data.dir",
      instead="pass --data_dir (and --dataset, e.g. vindr_2048) where you prepared it",
      split_advice="pass --splits among those", long_side=config.data.image_size)
  return list(splits) if splits else have


def stored_proposals(boxes: np.ndarray, scores: np.ndarray, valid: np.ndarray,
                     limit: int) -> np.ndarray:
  """One image's detections -> float32 (N, 5) ``cx cy w h score`` in the stored image's pixels,
  best first, valid only, at most ``limit``: a record's proposals."""
  valid = np.asarray(valid, bool)
  boxes, scores = np.asarray(boxes, np.float32)[valid], np.asarray(scores, np.float32)[valid]
  order = np.argsort(-scores, kind="stable")[:limit]
  return np.concatenate([box_ops.to_cxcywh(boxes[order]), scores[order, None]],
                        1).astype(np.float32).reshape(-1, 5)


def _detect(loaded: run.Loaded, dataset: str, data_dir: str, split: str, batch_size: int,
            progress: bool) -> dict:
  cfg = pipeline.PipelineConfig(
      data_dir=str(data_dir), config=dataset, split=split, batch_size=batch_size,
      image_size=loaded.config.data.image_size, num_proposals=1, seed=0, shuffle=False,
      num_epochs=1, drop_remainder=False, augment=False, worker_count=0)
  return prediction.predict_split(prediction.model_step(loaded.task, loaded.model), cfg,
                                 record_keys=GEOMETRY,
                                 progress=Progress(f"exporting {split}", "img") if progress
                                 else None)


def export(loaded: run.Loaded, out: str | os.PathLike | None, dataset: str, data_dir: str,
           splits: Sequence[str], batch_size: int = 8, layout: str = "study",
           progress: bool = False, to_records: bool = False) -> dict:
  """Runs the detector over ``splits``, writes the files and manifest into ``out`` (if given)
  and, with ``to_records``, the prepared dataset ``<dataset>_det``; returns the manifest.

  ``progress`` draws a status line per split."""
  config = loaded.config
  require_detector(loaded)
  if batch_size < 1:
    raise ValueError(f"--batch_size must be at least 1, got {batch_size}.")
  if out is None and not to_records:
    raise ValueError("nothing to write: pass --out (proposal files), --records, or both.")
  size = config.data.image_size
  long_side = _long_side(dataset)
  if long_side is not None and long_side > size:
    raise ValueError(f"{dataset!r} stores breast crops up to {long_side} px, but the detector"
                     f" was trained on crops of at most {size} px (config.data.image_size); export"
                     f" from a dataset prepared with --long_side {size}.")
  if long_side is not None and long_side < size:
    print(f"warning: {dataset!r} stores crops of at most {long_side} px; the detector was"
          f" trained on {size} px, so it sees lesions smaller than it learned.", file=sys.stderr)
  start = time.perf_counter()
  written: dict[pathlib.Path, str] = {}
  counts = {}
  detections = {}
  for split in splits:
    det = detections[split] = _detect(loaded, dataset, data_dir, split, batch_size, progress)
    c = counts[split] = {"images": 0, "boxes": 0, "no_detections": 0}
    for j, record in enumerate(det["ids"]):
      image_id, study_id = record["image_id"], record["study_id"]
      empty = not np.any(det["valid"][j])
      c["images"] += 1
      c["boxes"] += 0 if empty else int(np.sum(det["valid"][j]))
      c["no_detections"] += int(empty)
      if out is None:
        continue
      path = proposal_file(out, image_id, study_id, layout)
      if path in written:
        raise ValueError(f"{split} image {image_id!r} (study {study_id!r}) and {written[path]}"
                         f" both map to {path}; image ids must be unique.")
      written[path] = f"{split} image {image_id!r} (study {study_id!r})"
      rows = proposal_rows(det["boxes"][j], det["scores"][j], det["valid"][j], record)
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(path.name + ".tmp")
      tmp.write_text(format_rows(rows))
      os.replace(tmp, path)
  manifest = {
      "detector": loaded.source,
      "dataset": dataset,
      "data_dir": str(pathlib.Path(data_dir).absolute()),
      "splits": counts,
      "images": sum(c["images"] for c in counts.values()),
      "boxes": sum(c["boxes"] for c in counts.values()),
      "no_detections": sum(c["no_detections"] for c in counts.values()),
      "files": NAMING[layout] if out is not None else None,
      "format": CONVENTION,
      "image_size": size,
      "max_detections": loaded.model.cfg.max_detections,
      "nms_iou": loaded.model.cfg.nms_iou,
  }
  if to_records:
    manifest["records"] = write_records(data_dir, dataset, detections, loaded.source)
  manifest["seconds"] = round(time.perf_counter() - start, 1)
  if out is not None:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
  return manifest


def write_records(data_dir: str, dataset: str, detections: dict, source: str) -> str:
  """``dataset``'s records with the detector's boxes as their proposals, as the prepared dataset
  ``<dataset>_det`` in ``data_dir`` (made as ``dataset`` was: its prepare options are copied);
  returns its name. The pixels and everything else are the records' own, not decoded again."""
  name = dataset + common.DETECTOR_RECORDS
  made = prepare.read_options(data_dir, dataset) or prepare.PrepareOptions()
  cache = pathlib.Path(data_dir) / f".{name}-records"
  shutil.rmtree(cache, ignore_errors=True)
  features = {k: f for k, f in records.builder(data_dir, dataset).info.features.items()
              if isinstance(f, tfds.features.Tensor)}
  for split, det in detections.items():
    folder = cache / split
    folder.mkdir(parents=True)
    source_records = records.data_source(data_dir, dataset, split)
    for j, index in enumerate(det["index"]):
      record = dict(source_records[int(index)])
      record["proposals"] = stored_proposals(det["boxes"][j], det["scores"][j],
                                             det["valid"][j], made.max_proposals)
      # Scalars come back from the reader as Python numbers: stored again in their feature's
      # dtype, as prepare stored them.
      record = {k: (v.decode() if isinstance(v, bytes) else
                    np.asarray(v, features[k].np_dtype) if k in features else v)
                for k, v in record.items()}
      np.savez(folder / f"{int(index):08d}.npz", **record)
  built = pathlib.Path(data_dir) / records.NAME / name
  shutil.rmtree(built, ignore_errors=True)  # A dataset of an earlier detector.
  records.build(data_dir, name, cache)
  records.write_ids(data_dir, name)
  prepare.options_path(data_dir, name).write_text(json.dumps(dataclasses.asdict(made)) + "\n")
  (built / "detector.txt").write_text(f"proposals from {source}\n")
  shutil.rmtree(cache)
  return name


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _OUT.value is None and not _RECORDS.value:
    raise ValueError("nothing to write: pass --out (proposal files), --records, or both.")
  loaded = run.load(_DETECTOR.value)
  require_detector(loaded)
  dataset = _DATASET.value or loaded.config.data.name
  data_dir = _DATA_DIR.value or loaded.config.data.dir
  splits = resolve_dataset(loaded.config, dataset, data_dir, _SPLITS.value)
  cli.setup_logging(_OUT.value or data_dir)  # Only now: a failed check leaves no folder behind.
  print(f"{dataset} in {data_dir}, splits {', '.join(splits)}; detector {loaded.source}",
        file=sys.stderr)
  manifest = export(loaded, _OUT.value, dataset, data_dir, splits, _BATCH.value, _LAYOUT.value,
                    progress=True, to_records=_RECORDS.value)
  per_split = ", ".join(f"{s} {c['images']}" for s, c in manifest["splits"].items())
  where = []
  if _OUT.value:
    where.append(f"{_OUT.value}/{manifest['files']} and {_OUT.value}/{MANIFEST}")
  if _RECORDS.value:
    where.append(f"the prepared dataset {manifest['records']} in {data_dir}")
  print(f"{manifest['images']} images ({per_split}), {manifest['boxes']} boxes,"
        f" {manifest['no_detections']} without any, in {manifest['seconds']:.0f} s -> "
        + " and ".join(where))


if __name__ == "__main__":
  # ModelNotFoundError and DatasetNotFoundError are OSErrors too: each message names the path.
  cli.run(main, errors=(ValueError, OSError))
