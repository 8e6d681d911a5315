"""Decode every mammogram once: DICOM -> breast crop -> downsampled uint16 -> TFDS ArrayRecord.

The reference decodes each DICOM again every epoch; here each image is decoded once, in
parallel processes, into a per-image cache (so an interrupted run resumes where it stopped),
then written by a TFDS builder as ArrayRecord shards that grain reads with random access.

Everything in a record is in the **stored image's pixels**: the breast crop, flipped so the
chest wall is on the left when ``normalize_orientation`` is on, then scaled by ``scale`` so its
long side is at most ``long_side``. ``crop_box``, ``flipped`` and ``scale`` map boxes back to
the original DICOM (``to_original``).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import errno
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import tempfile
import time
from typing import Callable

import numpy as np
import pydicom
from PIL import Image

from attend_jax import box_ops, geometry, paths
from attend_jax.data import breast, dicom, proposals
from attend_jax.data import pool as pool_lib
from attend_jax.data.sources import SOURCES, Example
from attend_jax.errors import (DataError, DicomError, DiskFullError, MissingExtraError,
                               NoUsableImagesError)

CACHE_DIR = "cache"
MANIFEST = "manifest.json"
BAD_FILES = "bad_files.csv"


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  # Stored breast crops are at most this many pixels on the long side; 0 stores them at full
  # resolution, as the reference crops its RoIs.
  long_side: int = 1024
  padding: int = breast.PADDING
  normalize_orientation: bool = True
  # "robust" (film edges, labels and markers left out) or "reference": the authors' exact crop,
  # whose pixels their proposal files use.
  crop: str = "robust"
  # Detector proposals kept per image (after NMS), when the source has them.
  max_proposals: int = 32


def _resize(pixels: np.ndarray, scale: float) -> np.ndarray:
  if scale >= 1.0:
    return pixels
  h, w = pixels.shape
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  # PIL's 16-bit bilinear resize widens its kernel when downscaling (antialiased).
  return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def _mask_boxes(mask_paths, malignant, original_hw, image_path, max_pixels: int
                ) -> list[tuple[tuple[int, int, int, int], bool]]:
  """(lesion box, is a cancer) from CBIS-DDSM ROI masks: binary DICOMs the size of the image.

  A mask folder also holds the small cropped-lesion image; it is told apart by its size.
  """
  boxes = []
  for path, cancer in zip(mask_paths, malignant):
    try:
      ds = pydicom.dcmread(path)
      dicom.check_size(ds, path, max_pixels)
      arr = ds.pixel_array
    except DicomError:
      raise
    except Exception as e:  # noqa: BLE001  (any unreadable mask is reported, not fatal)
      raise DicomError(path, f"unreadable ROI mask for {image_path} ({e})") from e
    if arr.shape != tuple(original_hw):
      continue
    ys, xs = np.nonzero(arr)
    if len(ys):
      boxes.append(((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                    bool(cancer)))
  return boxes


def process_example(ex: Example, opts: PrepareOptions, max_pixels: int = dicom.MAX_PIXELS,
                    image: dicom.DicomImage | None = None) -> dict:
  """One record. Raises DataError (with the file and the reason) for unusable input, among it
  an image or mask whose header claims more than ``max_pixels`` pixels. ``image`` is
  ``ex.path`` already read (predict reads each file once); otherwise it is read here."""
  image = image or dicom.read_dicom(ex.path, max_pixels)
  pixels = image.pixels
  crop = breast.find_breast(pixels, ex.path, padding=opts.padding, rule=opts.crop)
  cropped = pixels[crop.y0:crop.y1, crop.x0:crop.x1]
  flipped = False
  if opts.normalize_orientation:
    cropped, flipped = breast.normalize_orientation(cropped)
  scale = min(1.0, opts.long_side / max(cropped.shape)) if opts.long_side else 1.0
  stored = np.ascontiguousarray(_resize(cropped, scale))
  scale_yx = (stored.shape[0] / cropped.shape[0], stored.shape[1] / cropped.shape[1])
  scale = float(np.mean(scale_yx))
  placement = geometry.Placement((crop.x0, crop.y0, crop.x1, crop.y1), flipped, scale)

  cancer = bool(ex.label)  # Lesions without their own pathology take the image's.
  lesions = list(zip(ex.lesion_boxes, ex.lesion_malignant or [cancer] * len(ex.lesion_boxes)))
  if ex.mask_paths:
    lesions += _mask_boxes(ex.mask_paths, ex.mask_malignant or [cancer] * len(ex.mask_paths),
                           pixels.shape, ex.path, max_pixels)
  lesion_boxes = placement.to_stored([b for b, _ in lesions]).astype(np.float32)
  lesion_malignant = np.array([m for _, m in lesions], bool)
  kept = (lesion_boxes[:, 2] > lesion_boxes[:, 0]) & (lesion_boxes[:, 3] > lesion_boxes[:, 1])
  lesion_boxes, lesion_malignant = lesion_boxes[kept], lesion_malignant[kept]

  props = np.zeros((0, 5), np.float32)
  off_image = 0
  if ex.proposals_path:
    # The reference's proposals are in pixels of its breast crop (crop="reference"), full size.
    raw = proposals.read_proposals(ex.proposals_path)
    raw, off_image = proposals.on_image(raw, cropped.shape, ex.proposals_path)
    proposals.check_extent(raw, cropped.shape, ex.proposals_path)
    kept, is_real = proposals.select_proposals(raw, opts.max_proposals,
                                               image_hw=cropped.shape)
    kept = kept[is_real]
    xyxy = placement.crop_to_stored(box_ops.to_xyxy(kept))
    props = np.concatenate([box_ops.to_cxcywh(xyxy), kept[:, 4:5]], 1).astype(np.float32)
  elif ex.proposal_boxes:
    given = np.asarray(ex.proposal_boxes, np.float64).reshape(-1, 5)
    xyxy = placement.to_stored(given[:, :4])
    cxcywh = np.concatenate([box_ops.to_cxcywh(xyxy), given[:, 4:5]], 1)
    kept, is_real = proposals.select_proposals(cxcywh[(cxcywh[:, 2] > 0) & (cxcywh[:, 3] > 0)],
                                               opts.max_proposals, image_hw=stored.shape)
    props = kept[is_real].astype(np.float32)

  return {
      "image": stored,
      "label": int(ex.label),
      "lesion_boxes": lesion_boxes.astype(np.float32),
      "lesion_malignant": lesion_malignant,
      "proposals": props,
      "image_id": ex.image_id,
      "study_id": ex.study_id,
      "patient_id": ex.patient_id,
      # The label CSV decides; the DICOM header fills gaps.
      "laterality": ex.laterality or image.laterality,
      "view": ex.view or image.view,
      "crop_box": np.array(placement.crop_box, np.int32),
      "original_hw": np.array(pixels.shape, np.int32),
      "flipped": bool(flipped),
      "scale": np.float32(scale),
      # Not stored in the records: for the reports of prepare and predict.
      "proposals_off_image": off_image,
      "marks": image.marks,  # dicom.check_image_kind's: a synthesised 2-D view, burned-in text.
  }


def _cache_path(cache: pathlib.Path, ex: Example) -> pathlib.Path:
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ex.image_id)
  return cache / ex.split / f"{safe}.npz"


def decode(args) -> dict | tuple[str, str]:
  """Runs in a worker process (of the local pool or of a Beam DoFn): ``(ex, opts, max_pixels)``
  -> the record, or (file at fault, reason) for an unusable input. Files on a bucket are
  copied to a temporary folder first (the decoders read local files only)."""
  ex, opts, max_pixels = args
  files = [ex.path, *ex.mask_paths, *([ex.proposals_path] if ex.proposals_path else [])]
  if all(paths.is_local(f) for f in files):
    try:
      return process_example(ex, opts, max_pixels)
    except DataError as e:
      return e.path, e.reason if e.path == ex.path else f"{e.reason} (image {ex.path})"
  with tempfile.TemporaryDirectory(prefix="attend_jax-decode-") as tmp:
    local = {}
    for i, f in enumerate(files):
      if paths.is_local(f):
        continue
      local[f] = os.path.join(tmp, f"{i}-{paths.path(f).name}")
      try:
        pathlib.Path(local[f]).write_bytes(paths.path(f).read_bytes())
      except Exception as e:  # noqa: BLE001  (a missing object, no permission: this file's)
        return f, f"cannot be read ({pool_lib.describe(e)})"
    staged = dataclasses.replace(
        ex, path=local.get(ex.path, ex.path),
        mask_paths=tuple(local.get(m, m) for m in ex.mask_paths),
        proposals_path=local.get(ex.proposals_path, ex.proposals_path))
    result = decode((staged, opts, max_pixels))
  if isinstance(result, dict):
    return result
  back = {v: k for k, v in local.items()}
  path, reason = result
  for temporary, remote in back.items():
    reason = reason.replace(temporary, remote)
  return back.get(path, path), reason


def _work(args) -> tuple[str, str] | float:
  """Runs in a worker process: decode, write the cache file atomically.

  Returns the seconds it took, or (file at fault, reason) for an unusable input. A full disk
  raises DiskFullError (it stops the run: every other image would fail the same way), and no
  partial file is left behind.
  """
  ex, opts, path, max_pixels = args
  start = time.perf_counter()
  record = decode((ex, opts, max_pixels))
  if isinstance(record, tuple):
    return record
  tmp = path.with_suffix(".tmp.npz")
  try:
    # Uncompressed: the cache is temporary, and zlib here would cost more than the resize.
    np.savez(tmp, **{k: np.asarray(v) for k, v in record.items()})
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    if e.errno == errno.ENOSPC:
      raise DiskFullError(path, record["image"].nbytes) from None
    raise
  return time.perf_counter() - start


class PrepareInterrupted(KeyboardInterrupt):
  """Ctrl-C (SIGINT) while decoding or writing: the images decoded so far are kept in the
  cache, and the same command resumes from them."""

  def __init__(self, cache: pathlib.Path, total: int):
    self.cache, self.total = cache, total
    self.done = sum(1 for p in cache.glob("*/*.npz") if not p.name.endswith(".tmp.npz"))
    super().__init__(f"interrupted: {self.done} of {total} images are prepared (kept in"
                     f" {cache}); rerunning the same command resumes")


@dataclasses.dataclass
class PrepareResult:
  builder_name: str  # For tfds.data_source(builder_name, data_dir=out).
  counts: dict[str, dict[str, int]]
  bad: list[tuple[str, str]]
  seconds: float  # Whole run; 0 when a finished build was found.
  decode_seconds: float = 0.0  # The parallel decode stage (wall clock, workers' start included).
  worker_seconds: float = 0.0  # Time the workers spent on images, summed over workers.
  decoded: int = 0  # Images decoded by this run (the cache held the others).
  write_seconds: float = 0.0  # Writing the ArrayRecord shards.


def _is_built(out, config: str) -> bool:
  """A finished TFDS build (written last, so a crashed build does not count)."""
  return any((paths.path(out) / "mammograms" / config).glob("*/dataset_info.json"))


def _read_bad(out) -> list[tuple[str, str]]:
  text = (paths.path(out) / BAD_FILES).read_text()
  return [(row["path"], row["reason"]) for row in csv.DictReader(io.StringIO(text))]


def config_name(dataset: str, long_side: int) -> str:
  """The prepared dataset's name, e.g. ``vindr_2048``, or ``csv_full`` at full resolution."""
  return f"{dataset}_{long_side or 'full'}"


def builder_name(dataset: str, long_side: int) -> str:
  return f"mammograms/{config_name(dataset, long_side)}"


OPTIONS = "prepare_options.json"  # Beside each prepared dataset's versions, in mammograms/<name>/.


def options_path(out: str | os.PathLike, name: str):
  return paths.path(out) / "mammograms" / name / OPTIONS


def read_options(out: str | os.PathLike, name: str) -> PrepareOptions | None:
  """How the prepared dataset ``name`` in ``out`` was made, or None if it does not say
  (datasets prepared before the options were recorded)."""
  path = options_path(out, name)
  if path.exists():
    return PrepareOptions(**json.loads(path.read_text()))
  manifest = paths.path(out) / MANIFEST
  if manifest.exists():
    data = json.loads(manifest.read_text())
    if data.get("builder") == f"mammograms/{name}":
      fields = {f.name for f in dataclasses.fields(PrepareOptions)}
      return PrepareOptions(**{k: v for k, v in data["options"].items() if k in fields})
  return None


def _off_image(path: pathlib.Path) -> int:
  with np.load(path) as data:
    return int(data["proposals_off_image"]) if "proposals_off_image" in data.files else 0


def _marks(path: pathlib.Path) -> list[str]:
  """The marks of a cached record (none in a cache written before they were recorded)."""
  with np.load(path) as data:
    return [str(m) for m in data["marks"]] if "marks" in data.files else []


def count_marks(marks) -> dict[str, int]:
  """How many images carry each of ``dicom.MARKS``, from each image's marks: the manifest's
  ``marks``."""
  counts = collections.Counter(m for image in marks for m in image)
  return {m: counts[m] for m in dicom.MARKS}


def _write_bad(out, bad: list[tuple[str, str]]) -> None:
  out = paths.path(out)
  out.mkdir(parents=True, exist_ok=True)
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(["path", "reason"])
  writer.writerows(bad)
  (out / BAD_FILES).write_text(text.getvalue())


def _counts(good) -> dict[str, dict[str, int]]:
  counts = {}
  for split in sorted({ex.split for ex in good}):
    members = [ex for ex in good if ex.split == split]
    counts[split] = {"images": len(members), "cancer": sum(ex.label for ex in members)}
  return counts


def prepare(dataset: str, root: str | os.PathLike, out: str | os.PathLike,
            opts: PrepareOptions = PrepareOptions(), workers: int | None = None,
            keep_cache: bool = False, progress: Callable[[int, int], None] | None = None,
            time_limit: float = pool_lib.DEFAULT_TIME_LIMIT_S,
            max_pixels: int = dicom.MAX_PIXELS, beam_options: list[str] | None = None,
            **source_kwargs) -> PrepareResult:
  """Lists, decodes (in parallel, resumable) and writes the dataset; returns what it did.

  An unusable image or row, whatever its decoder does (error, crash, hang past ``time_limit``
  seconds), is listed in bad_files.csv with its reason and the rest carries on; so is an image
  whose header claims more than ``max_pixels`` pixels, without being decoded.

  ``out`` may be a bucket: the dataset is then prepared in a local folder named after it (in
  the temp folder, so a rerun on the same machine resumes), uploaded, and the local copy
  removed.

  ``beam_options`` (Beam's pipeline flags, e.g. ``["--runner=DataflowRunner", ...]``) runs the
  decode and the write as one Apache Beam pipeline instead (``_prepare_beam``), on that runner,
  straight into ``out``, local or a bucket.
  """
  if beam_options is not None:
    return _prepare_beam(dataset, root, out, opts, time_limit, max_pixels, beam_options,
                         **source_kwargs)
  kwargs = dict(opts=opts, workers=workers, keep_cache=keep_cache, progress=progress,
                time_limit=time_limit, max_pixels=max_pixels, **source_kwargs)
  if paths.is_local(out):
    return _prepare(dataset, root, paths.local(out), **kwargs)
  remote = paths.path(out)
  config = config_name(dataset, opts.long_side)
  if _is_built(remote, config) and (remote / MANIFEST).exists():
    manifest = json.loads((remote / MANIFEST).read_text())
    return PrepareResult(manifest["builder"], manifest["counts"], _read_bad(remote), 0.0)
  key = hashlib.sha1(str(remote).encode()).hexdigest()[:12]
  staging = pathlib.Path(tempfile.gettempdir()) / f"attend_jax-prepare-{key}"
  result = _prepare(dataset, root, staging, **kwargs)
  paths.upload(staging, remote)
  shutil.rmtree(staging)
  return result


def _prepare(dataset: str, root: str | os.PathLike, out: pathlib.Path, opts: PrepareOptions,
             workers: int | None, keep_cache: bool, progress: Callable[[int, int], None] | None,
             time_limit: float, max_pixels: int, **source_kwargs) -> PrepareResult:
  start = time.perf_counter()
  if opts.crop not in breast.RULES:
    raise ValueError(f"crop must be one of {breast.RULES}, got {opts.crop!r}.")
  config = config_name(dataset, opts.long_side)
  if _is_built(out, config) and (out / MANIFEST).exists():
    from attend_jax.data import records

    records.write_ids(out, config, missing_only=True)  # Records prepared before the table.
    manifest = json.loads((out / MANIFEST).read_text())
    return PrepareResult(manifest["builder"], manifest["counts"], _read_bad(out), 0.0)
  listing = SOURCES[dataset](root, **source_kwargs)
  cache = out / CACHE_DIR / config
  for split in {ex.split for ex in listing.examples}:
    (cache / split).mkdir(parents=True, exist_ok=True)

  bad: list[tuple[str, str]] = [(e.path, e.reason) for e in listing.bad]
  for stale in cache.glob("*/*.tmp.npz"):  # Left by a run that was killed while writing.
    stale.unlink()
  todo = [(ex, opts, _cache_path(cache, ex), max_pixels) for ex in listing.examples
          if not _cache_path(cache, ex).exists()]
  done = len(listing.examples) - len(todo)
  total = len(listing.examples)
  if progress:
    progress(done, total)
  decode_start = time.perf_counter()
  worker_seconds = 0.0
  failed: set[str] = set()
  results = pool_lib.guarded_map(_work, todo, workers=pool_lib.worker_count(workers, len(todo)),
                                 preload=[__name__], time_limit=time_limit,
                                 log_path=out / "log.txt", fatal=(DiskFullError,))
  try:
    for (ex, *_), result in results:
      done += 1
      if isinstance(result, pool_lib.Failure):
        result = (ex.path, result.reason)
      if isinstance(result, tuple):
        bad.append(result)
        failed.add(ex.path)
      else:
        worker_seconds += result
      if progress:
        progress(done, total)
  except KeyboardInterrupt:
    raise PrepareInterrupted(cache, total) from None

  decode_seconds = time.perf_counter() - decode_start
  counts = _counts([ex for ex in listing.examples if ex.path not in failed])
  _write_bad(out, bad)  # Before the build, so the reasons survive whatever happens next.
  cached = [p for p in cache.glob("*/*.npz") if not p.name.endswith(".tmp.npz")]
  off_image = sum(_off_image(p) for p in cached)
  marks = count_marks(_marks(p) for p in cached)
  if not counts:
    raise NoUsableImagesError(root, (
        f"none of its {total} images could be used ({len(listing.bad)} more rows were"
        f" rejected before decoding); the {len(bad)} reasons are in {out / BAD_FILES}"))
  for split in {ex.split for ex in listing.examples} - set(counts):
    shutil.rmtree(cache / split)  # Every image of it failed: no empty split in the records.

  from attend_jax.data import records  # TFDS takes seconds to import; only the writer needs it.

  write_start = time.perf_counter()
  try:
    records.build(out, config, cache)
    records.write_ids(out, config)
  except KeyboardInterrupt:
    raise PrepareInterrupted(cache, total) from None
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise DiskFullError(out / records.NAME, sum(
          p.stat().st_size for p in cache.glob("*/*.npz"))) from None
    raise
  write_seconds = time.perf_counter() - write_start
  if not keep_cache:
    shutil.rmtree(out / CACHE_DIR)
  seconds = time.perf_counter() - start
  manifest = {
      "dataset": dataset, "root": str(root), "builder": builder_name(dataset, opts.long_side),
      "options": dataclasses.asdict(opts), "counts": counts, "bad_files": len(bad),
      # Rows the source flagged before decoding, by kind (e.g. MissingMaskError: kept, without
      # that lesion's box).
      "flagged_rows": dict(collections.Counter(type(e).__name__ for e in listing.bad)),
      # Proposal-file boxes wholly off their image, dropped.
      "proposals_off_image": off_image,
      # Images used though their header marks them (dicom.check_image_kind), by mark.
      "marks": marks,
      "seconds": round(seconds, 1), "decode_seconds": round(decode_seconds, 1),
      "write_seconds": round(write_seconds, 1),
  }
  (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
  options_path(out, config).write_text(json.dumps(dataclasses.asdict(opts), indent=2) + "\n")
  return PrepareResult(builder_name(dataset, opts.long_side), counts, bad, seconds,
                       decode_seconds, worker_seconds, len(todo), write_seconds)


BEAM_WORK = "beam"  # OUT/beam/<name>/: a Beam run's listings and report files, until it ends.


def _prepare_beam(dataset: str, root, out, opts: PrepareOptions, time_limit: float,
                  max_pixels: int, beam_options: list[str], **source_kwargs) -> PrepareResult:
  """prepare as one Beam pipeline: list here, decode and write on the runner's workers.

  A Beam job is all or nothing: a rerun after a failed job lists and decodes everything again,
  and a finished dataset is skipped, as on the local path.
  """
  start = time.perf_counter()
  if opts.crop not in breast.RULES:
    raise ValueError(f"crop must be one of {breast.RULES}, got {opts.crop!r}.")
  config = config_name(dataset, opts.long_side)
  out_path = paths.path(out)
  paths.check_reachable(out_path)
  if _is_built(out_path, config) and (out_path / MANIFEST).exists():
    manifest = json.loads((out_path / MANIFEST).read_text())
    return PrepareResult(manifest["builder"], manifest["counts"], _read_bad(out_path), 0.0)
  try:
    import apache_beam  # noqa: F401  (the optional extra)
  except ImportError:
    raise MissingExtraError("prepare on Apache Beam (--beam)", "beam") from None
  from attend_jax.data import beam_prepare, records

  listing = SOURCES[dataset](root, **source_kwargs)
  if not listing.examples:
    _write_bad(out_path, [(e.path, e.reason) for e in listing.bad])
    raise NoUsableImagesError(root, f"it lists no images; the {len(listing.bad)} rejected rows'"
                                    f" reasons are in {out_path / BAD_FILES}")
  # A failed job's listings and reports: a job is all or nothing, so this run starts over.
  work = out_path / BEAM_WORK / config
  if work.exists():
    work.rmtree()
  work.mkdir(parents=True)
  listings = beam_prepare.write_listings(work, listing.examples)
  try:
    records.build_beam(out_path, config, beam_prepare.split_transforms(
        work, listings, opts, max_pixels, time_limit, decode), beam_options)
  except Exception as e:
    empty = re.search(r"generated examples is 0 for split (\w+)", str(e))
    if not empty:
      raise
    raise NoUsableImagesError(root, (
        f"no image of its {empty.group(1)} split could be used, and TFDS's Beam writer refuses"
        " an empty split, so the job stopped; prepare without --beam to list each file's reason"
        " in bad_files.csv")) from None
  reports = beam_prepare.read_reports(work)
  missing = [ex.path for ex in listing.examples if ex.path not in reports]
  if missing:
    raise RuntimeError(f"{work}: the pipeline reported on {len(reports)} of"
                       f" {len(listing.examples)} images (none on {missing[0]}, ...)")
  failed = [reports[ex.path] for ex in listing.examples if reports[ex.path]["reason"]]
  bad = [(e.path, e.reason) for e in listing.bad] + [(r["file"], r["reason"]) for r in failed]
  counts = _counts([ex for ex in listing.examples if not reports[ex.path]["reason"]])
  _write_bad(out_path, bad)
  if paths.is_local(out):
    records.write_ids(out, config)
  seconds = time.perf_counter() - start
  manifest = {
      "dataset": dataset, "root": str(root), "builder": builder_name(dataset, opts.long_side),
      "options": dataclasses.asdict(opts), "counts": counts, "bad_files": len(bad),
      "flagged_rows": dict(collections.Counter(type(e).__name__ for e in listing.bad)),
      "proposals_off_image": sum(r["off_image"] for r in reports.values()),
      "marks": count_marks(r.get("marks", []) for r in reports.values()),
      "seconds": round(seconds, 1), "beam": True,
  }
  (out_path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
  options_path(out_path, config).write_text(json.dumps(dataclasses.asdict(opts), indent=2) + "\n")
  work.rmtree()
  for unfinished in (out_path / records.NAME / config).glob("incomplete.*"):
    unfinished.rmtree()  # TFDS's version folders of failed jobs.
  parent = out_path / BEAM_WORK  # A bucket has no empty folders: it is gone already.
  if parent.exists() and not any(parent.iterdir()):
    parent.rmdir()
  return PrepareResult(builder_name(dataset, opts.long_side), counts, bad, seconds,
                       decode_seconds=seconds, decoded=len(listing.examples))
