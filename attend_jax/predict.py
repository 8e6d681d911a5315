r"""Cancer probabilities for your own DICOM files, per image, per breast and per exam.

  python -m attend_jax.predict --workdir=workdirs/cbis /data/new_exams/ --out=preds --overlays
  python -m attend_jax.predict --checkpoint=weights/reference one.dcm two.dcm \
      --proposals=/data/focal_rois --out=preds
  python -m attend_jax.predict --workdir=workdirs/cbis --out=preds \
      --dicomweb=https://pacs.example.org/dicom-web --study=1.2.840.1234.5678

INPUT is any mix of DICOM files and folders (scanned recursively for *.dcm / *.dicom). The
model and its preprocessing come from the run's saved config: nothing to re-type. Writes to
--out: predictions.csv and predictions.json (per image: probability, calibrated probability and
a flag per operating point where the model has a calibration.json, laterality, view, RoIs in
DICOM pixels with detector score and attention weight), breasts.csv (CC + MLO of one side of one
study: mean and max), exams.csv (per study: the most suspicious breast), bad_files.csv
(every file that could not be used, with the reason: FOR PROCESSING images and breast
tomosynthesis are refused from their headers), with --overlays a PNG per image, and log.txt
(library logs). predictions.csv's marks column flags a synthesised 2-D view (generated_2d),
burned-in annotation and CAD marks; exams.csv names the views each exam used. With --dicom_out
DIR, also DICOM objects a PACS viewer shows: a GSPS per image and a Comprehensive SR per study
(docs/predict.md#dicom-outputs), listed in DIR/dicom_out.csv.

With --dicomweb, the studies --study names or --dicomweb_query finds are fetched from a PACS
(WADO-RS) into --out/fetched/<study>/<instance>.dcm first, and predicted on as local files
(attend_jax.dicomweb: credentials from the environment or a netrc file, never a flag).

The same command on every host of a pod slice or cluster (``jax.distributed``, as training)
predicts on all of them: each host decodes its share of the files, batches are split over every
device, host 0 writes the tables and each host the overlays of its images. Rerunning on the same
--out predicts only the files not yet in its predictions.csv (docs/predict.md).

Files and folders may be on a bucket (gs://...): they are listed and read from there directly,
and the tables name them by their gs:// URLs.
"""

import collections
import csv
import pathlib
import sys

import jax
from absl import app, flags

from attend_jax import cli, dicom_out, dicomweb, hosts, inference, paths, run
from attend_jax.data import dicom
from attend_jax.progress import Progress
from attend_jax.train import prediction

FETCHED = "fetched"  # --out's folder of the images fetched from --dicomweb.
STORED = "dicomweb_stored.csv"  # --out's list of the --dicom_out objects stored on --dicomweb.
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (its best checkpoint).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Or a converted checkpoint folder.")
_OUT = flags.DEFINE_string(
    "out", "predictions", "Output folder. Locked while predict writes it: a second predict on"
    " the same folder refuses, naming the first. A bucket (gs://...) is not locked: each run"
    " writes a local copy and uploads it at the end, so of two runs at once the later to finish"
    " replaces the other's files.")
_OVERLAYS = flags.DEFINE_bool("overlays", False, "Also draw a PNG per image.")
_DICOM_OUT = flags.DEFINE_string(
    "dicom_out", None, "Also write DICOM objects into this local folder: per image a GSPS (RoIs"
    " and probability over the original image), per study a Comprehensive SR (the scores, the"
    " RoIs as image regions); research use only, not for diagnosis.")
_DICOM_CAPTURE = flags.DEFINE_bool("dicom_out_capture", False, "With --dicom_out, also a"
                                   " Secondary Capture of each overlay (draws the overlays).")
_PROPOSALS = flags.DEFINE_string("proposals", None,
                                 "Folder of <image>_preds.txt detector proposals, for models"
                                 " trained on proposal files.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per step from each host (a multiple of"
                               " its device count uses every device).")
_WORKERS = flags.DEFINE_integer("workers", None, "Decoding processes (default: all cores).")
_MAX_MEGAPIXELS = flags.DEFINE_float(
    "max_megapixels", dicom.MAX_PIXELS / 1e6,
    "Files whose header claims more pixels than this (in millions) are not decoded but listed"
    " in bad_files.csv: a corrupt or crafted header would be decoded in full (60k x 60k: 7.7 GB"
    " of memory). The default, 100, takes the largest real mammograms (about 5k x 6k, 30"
    " megapixels) with room to spare; raise it, e.g. --max_megapixels=400, for larger images.")

_DICOMWEB = flags.DEFINE_string(
    "dicomweb", None, "A PACS's DICOMweb URL (e.g. https://pacs.example.org/dicom-web): predict"
    " on the studies --study or --dicomweb_query name, fetched into --out/fetched/. Credentials"
    f" come from {dicomweb.TOKEN_ENV}, or {dicomweb.USER_ENV} and {dicomweb.PASSWORD_ENV}, or a"
    " netrc file; TLS certificates are verified (REQUESTS_CA_BUNDLE: your CA's PEM file).")
_STUDY = flags.DEFINE_multi_string("study", [], "A Study Instance UID to fetch from --dicomweb"
                                   " (repeat the flag for several).")
_QUERY = flags.DEFINE_string(
    "dicomweb_query", None, "Or the studies a QIDO-RS search finds on --dicomweb, e.g."
    " 'ModalitiesInStudy=MG&StudyDate=20240101-20241231'.")
_STORE = flags.DEFINE_bool(
    "dicomweb_store", False, "After predicting, store what --dicom_out wrote on --dicomweb"
    " (STOW-RS), each object checked there (QIDO-RS). A rerun stores only what the PACS lacks:"
    " the objects of images not stored before, and the SR of each study with images predicted"
    f" now (--out/{STORED} lists what was stored).")


def main(argv):
  inputs = argv[1:]
  if not inputs and not _DICOMWEB.value:
    raise app.UsageError("Give DICOM files or folders to predict on, or --dicomweb.")
  if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
    raise app.UsageError("Pass exactly one of --workdir and --checkpoint.")
  if _DICOM_CAPTURE.value and not _DICOM_OUT.value:
    raise app.UsageError("--dicom_out_capture needs --dicom_out.")
  if _DICOM_OUT.value and not paths.is_local(_DICOM_OUT.value):
    raise app.UsageError("--dicom_out must be a local folder (a PACS takes them from there).")
  pacs = _pacs()
  hosts.maybe_initialize_distributed()  # A pod slice, or JAX_COORDINATOR_ADDRESS & co.
  if pacs and jax.process_count() > 1:
    raise app.UsageError("--dicomweb runs on one host: fetch on one, then predict on the"
                         " fetched folder on all of them.")
  # The inputs and the output folder first: the model takes a while to load.
  files, missing = inference.find_dicoms(inputs)
  for path, reason in missing:
    _say(f"warning: {path}: {reason}", file=sys.stderr)
  if not files and not pacs:
    _say(f"error: no DICOM files (*.dcm, *.dicom) in {', '.join(map(str, inputs))}",
         file=sys.stderr)
    return 1
  out = paths.path(_OUT.value)
  if _DICOM_OUT.value:  # One that cannot be made: said now, not after the predictions.
    pathlib.Path(_DICOM_OUT.value).mkdir(parents=True, exist_ok=True)
  # Written in folder, uploaded when --out is on a bucket.
  with paths.staged(out) as folder, run.locked(out, flag="--out"):
    if pacs:
      files = list(dict.fromkeys(files + _fetch(pacs, folder, out)))
    return _predict(files, missing, folder, out, pacs)


def _pacs() -> dicomweb.Client | None:
  """The --dicomweb client, after the checks of its flags (no request yet)."""
  if not _DICOMWEB.value:
    if _STUDY.value or _QUERY.value or _STORE.value:
      raise app.UsageError("--study, --dicomweb_query and --dicomweb_store need --dicomweb.")
    return None
  if not (_STUDY.value or _QUERY.value):
    raise app.UsageError("--dicomweb needs --study (one or more) or --dicomweb_query.")
  if _STORE.value and not _DICOM_OUT.value:
    raise app.UsageError("--dicomweb_store stores what --dicom_out writes: give --dicom_out.")
  if not paths.is_local(_OUT.value):
    raise app.UsageError("--dicomweb needs a local --out: its fetched/ folder is what a rerun"
                         " resumes from.")
  return dicomweb.connect(_DICOMWEB.value)


def _fetch(pacs: dicomweb.Client, folder, out) -> list:
  """The files of the --study / --dicomweb_query studies, fetched into ``folder/fetched``
  unless an earlier run did."""
  cli.setup_logging(folder)
  studies = list(_STUDY.value) + (dicomweb.find_studies(pacs, _QUERY.value) if _QUERY.value
                                  else [])
  files, new = dicomweb.fetch(pacs, studies, folder / FETCHED, Progress("fetching", "img"))
  _say(f"{len(studies)} studies from {pacs.base_url}: {len(files)} images, {new} fetched now"
       f" into {out}/{FETCHED}/", file=sys.stderr)
  return [f.absolute() for f in files]


def _say(*args, **kwargs) -> None:
  """print, on host 0 only (every host runs the same command)."""
  if jax.process_index() == 0:
    print(*args, **kwargs)


def _predict(files, missing, folder, out, pacs: dicomweb.Client | None = None) -> int:
  """predict into the local ``folder`` (``out`` in the messages); with --dicomweb_store, store
  the DICOM outputs on ``pacs`` last, when every table is written."""
  done = inference.read_predictions(out)  # An earlier run's: resumed.
  if len(set(hosts.from_every_host(len(done)))) > 1:
    raise ValueError(f"the hosts see different files in {out}: give an --out that every host"
                     " sees, a bucket (gs://...) or a shared folder.")
  ids = inference.image_ids(files)  # Of every file, so that a resume keeps the ids.
  seen = {im["path"] for im in done}
  todo = [(f, i) for f, i in zip(files, ids) if str(f) not in seen]
  writer = inference.OutputWriter(folder, overlays=_OVERLAYS.value or _DICOM_CAPTURE.value,
                                  tables=jax.process_index() == 0, done=done, remote=out)
  cli.setup_logging(folder)
  if done:
    _say(f"resuming: {len(files) - len(todo)} of the {len(files)} files are in"
         f" {out}/predictions.csv already", file=sys.stderr)
  max_pixels = int(_MAX_MEGAPIXELS.value * 1e6)
  images, bad = [], []
  source = "none loaded" if todo else f"{out}/predictions.csv of an earlier run"
  unusable = inference.none_usable([f for f, _ in todo], max_pixels)
  if unusable:
    bad = unusable
  elif todo:
    loaded = run.load(_WORKDIR.value or _CHECKPOINT.value, prediction.batch_mesh(_BATCH.value))
    source = loaded.source
    _say(f"{len(todo)} files; model {loaded.source}", file=sys.stderr)
    if loaded.calibration is None:
      _say("note: this model has no calibration.json: probability_calibrated and the flag_*"
           " columns are left empty (docs/predict.md)", file=sys.stderr)
    images, bad = inference.predict(
        loaded, [f for f, _ in todo], _PROPOSALS.value, _BATCH.value, _WORKERS.value,
        Progress("predicting", "img"), writer.image, writer.rows,
        log_path=folder / cli.LOG_FILE, max_pixels=max_pixels, ids=[i for _, i in todo])
  summary = writer.finish(inference.ordered(done + images, files), missing + bad, source)
  if not summary["images"]:
    return _none_usable(len(files), out)
  _say(f"{len(summary['images'])} images, {len(summary['breasts'])} breasts,"
       f" {len(summary['exams'])} exams -> {out}/predictions.csv, breasts.csv, exams.csv"
       + (", overlays/" if _OVERLAYS.value else ""))
  written = None
  if _DICOM_OUT.value and jax.process_index() == 0:
    written = _write_dicom(summary, folder)
  off = [im for im in images if im["proposals_off_image"]]
  if off:
    _say(f"warning: {len(off)} images had proposal boxes wholly off the image, dropped"
         f" ({sum(im['proposals_off_image'] for im in off)} boxes; proposals_off_image in"
         f" {out}/predictions.json)", file=sys.stderr)
  marked = collections.Counter(m for im in images for m in im["marks"])
  if marked:
    _say("note: images used though their header marks them: "
         + ", ".join(f"{n} {mark}" for mark, n in sorted(marked.items()))
         + f" (the marks column of {out}/predictions.csv)", file=sys.stderr)
  if summary["bad_files"]:
    _say(f"{len(summary['bad_files'])} files could not be used: see {out}/bad_files.csv",
         file=sys.stderr)
  if written is not None and _STORE.value:
    _store(pacs, written, {im["path"] for im in images}, folder, out)
  return 0


def _store(pacs: dicomweb.Client, result: dicom_out.Result, predicted_now: set[str], folder,
           out) -> None:
  """Stores on ``pacs`` what --dicom_out wrote (``result``) and an earlier run did not store:
  each object whose (kind, source) is not in ``folder/STORED``, and the SR of every study with
  an image predicted now (its scores changed). Each stored object gets a row there; a
  StoreError names the files that were not stored."""
  record = folder / STORED
  before = set()
  if record.exists():
    with open(record, newline="") as f:
      before = {(r["kind"], r["source"]) for r in csv.DictReader(f)}
  changed = {w.study_uid for w in result.written if w.source in predicted_now}
  todo = [w for w in result.written
          if (w.kind, w.source) not in before or (w.kind == "SR" and w.study_uid in changed)]
  failure = None
  try:
    if todo:
      dicomweb.store(pacs, [w.path for w in todo], Progress("storing", "obj"))
  except dicomweb.StoreError as e:
    failure = e
  not_stored = set(failure.not_stored) if failure else set()
  stored = [w for w in todo if str(w.path) not in not_stored]
  new_file = not record.exists()
  with open(record, "a", newline="") as f:
    table = csv.writer(f)
    if new_file:
      table.writerow(["kind", "source", "study_instance_uid", "sop_instance_uid"])
    table.writerows([w.kind, w.source, w.study_uid, w.sop_uid] for w in stored)
  if failure:
    raise failure
  _say(f"{len(stored)} DICOM objects stored on {pacs.base_url}"
       f" ({len(result.written) - len(stored)} of --dicom_out's stored by an earlier run);"
       f" listed in {out}/{STORED}", file=sys.stderr)


def _write_dicom(summary: dict, folder) -> dicom_out.Result:
  """The DICOM outputs of ``summary`` (what predictions.json holds) into --dicom_out."""
  result = dicom_out.write(summary["images"], summary["breasts"], summary["exams"],
                           _DICOM_OUT.value,
                           overlays=folder / "overlays" if _DICOM_CAPTURE.value else None)
  for f in result.failed:
    _say(f"warning: {f.source}: its {f.kind} not written: {f.reason}", file=sys.stderr)
  _say(f"{len(result.written)} DICOM files -> {_DICOM_OUT.value}/ (listed in"
       f" {dicom_out.TABLE})" + (f"; {len(result.failed)} not written" if result.failed else ""))
  return result


def _none_usable(count: int, out) -> int:
  _say(f"error: none of the {count} files is a usable image; {out}/bad_files.csv says why",
       file=sys.stderr)
  return 1


if __name__ == "__main__":
  cli.run(main, errors=(run.ModelNotFoundError, run.WorkdirBusyError, ValueError,
                        PermissionError, dicomweb.DicomWebError))
