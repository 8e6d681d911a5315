r"""Cancer probabilities for your own DICOM files, per image, per breast and per exam.

  python -m attend_jax.predict --workdir=workdirs/cbis /data/new_exams/ --out=preds --overlays
  python -m attend_jax.predict --checkpoint=weights/reference one.dcm two.dcm \
      --proposals=/data/focal_rois --out=preds

INPUT is any mix of DICOM files and folders (scanned recursively for *.dcm / *.dicom). The
model and its preprocessing come from the run's saved config: nothing to re-type. Writes to
--out: predictions.csv and predictions.json (per image: probability, laterality, view, RoIs
in DICOM pixels with detector score and attention weight), breasts.csv (CC + MLO of one side
of one study: mean and max), exams.csv (per study: the most suspicious breast), bad_files.csv
(every file that could not be used, with the reason), with --overlays a PNG per image, and
log.txt (library logs).
"""

import sys

from absl import app, flags

from attend_jax import cli, inference, paths, run
from attend_jax.data import dicom
from attend_jax.progress import Progress
from attend_jax.train import prediction

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (its best checkpoint).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Or a converted checkpoint folder.")
_OUT = flags.DEFINE_string(
    "out", "predictions", "Output folder. Locked while predict writes it: a second predict on"
    " the same folder refuses, naming the first. A bucket (gs://...) is not locked: each run"
    " writes a local copy and uploads it at the end, so of two runs at once the later to finish"
    " replaces the other's files.")
_OVERLAYS = flags.DEFINE_bool("overlays", False, "Also draw a PNG per image.")
_PROPOSALS = flags.DEFINE_string("proposals", None,
                                 "Folder of <image>_preds.txt detector proposals, for models"
                                 " trained on proposal files.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per accelerator batch.")
_WORKERS = flags.DEFINE_integer("workers", None, "Decoding processes (default: all cores).")
_MAX_MEGAPIXELS = flags.DEFINE_float(
    "max_megapixels", dicom.MAX_PIXELS / 1e6,
    "Files whose header claims more pixels than this (in millions) are not decoded but listed"
    " in bad_files.csv: a corrupt or crafted header would be decoded in full (60k x 60k: 7.7 GB"
    " of memory). The default, 100, takes the largest real mammograms (about 5k x 6k, 30"
    " megapixels) with room to spare; raise it, e.g. --max_megapixels=400, for larger images.")


def main(argv):
  inputs = argv[1:]
  if not inputs:
    raise app.UsageError("Give DICOM files or folders to predict on.")
  if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
    raise app.UsageError("Pass exactly one of --workdir and --checkpoint.")
  # The inputs and the output folder first: the model takes a while to load.
  files, missing = inference.find_dicoms(inputs)
  for path, reason in missing:
    print(f"warning: {path}: {reason}", file=sys.stderr)
  if not files:
    print(f"error: no DICOM files (*.dcm, *.dicom) in {', '.join(map(str, inputs))}",
          file=sys.stderr)
    return 1
  out = paths.path(_OUT.value)
  # Written in folder, uploaded when --out is on a bucket.
  with paths.staged(out) as folder, run.locked(out, flag="--out"):
    return _predict(files, missing, folder, out)


def _predict(files, missing, folder, out) -> int:
  """predict into the local ``folder`` (``out`` in the messages)."""
  writer = inference.OutputWriter(folder, overlays=_OVERLAYS.value)
  cli.setup_logging(folder)
  max_pixels = int(_MAX_MEGAPIXELS.value * 1e6)
  unusable = inference.none_usable(files, max_pixels)
  if unusable:
    writer.finish([], missing + unusable, "none loaded")
    return _none_usable(len(files), out)
  loaded = run.load(_WORKDIR.value or _CHECKPOINT.value, prediction.local_mesh(_BATCH.value))
  print(f"{len(files)} files; model {loaded.source}", file=sys.stderr)
  images, bad = inference.predict(loaded, files, _PROPOSALS.value, _BATCH.value,
                                  _WORKERS.value, Progress("predicting", "img"), writer.image,
                                  log_path=folder / cli.LOG_FILE, max_pixels=max_pixels)
  summary = writer.finish(images, missing + bad, loaded.source)
  if not images:
    return _none_usable(len(files), out)
  print(f"{len(images)} images, {len(summary['breasts'])} breasts, {len(summary['exams'])}"
        f" exams -> {out}/predictions.csv, breasts.csv, exams.csv"
        + (", overlays/" if _OVERLAYS.value else ""))
  off = [im for im in images if im["proposals_off_image"]]
  if off:
    print(f"warning: {len(off)} images had proposal boxes wholly off the image, dropped"
          f" ({sum(im['proposals_off_image'] for im in off)} boxes; proposals_off_image in"
          f" {out}/predictions.json)", file=sys.stderr)
  if summary["bad_files"]:
    print(f"{len(summary['bad_files'])} files could not be used: see {out}/bad_files.csv",
          file=sys.stderr)
  return 0


def _none_usable(count: int, out) -> int:
  print(f"error: none of the {count} files is a usable image; {out}/bad_files.csv says why",
        file=sys.stderr)
  return 1


if __name__ == "__main__":
  cli.run(main, errors=(run.ModelNotFoundError, run.WorkdirBusyError, ValueError,
                        PermissionError))
