r"""Decodes a mammography dataset once into TFDS ArrayRecord shards for training.

  python tools/prepare_data.py --dataset synthetic --root data/synthetic --out data/prepared
  python tools/prepare_data.py --dataset vindr --root /data/vindr-mammo --out data/prepared
  python tools/prepare_data.py --dataset cbis_ddsm --root /data/CBIS-DDSM --out data/prepared
  python tools/prepare_data.py --dataset rsna --root /data/rsna --out data/prepared
  python tools/prepare_data.py --dataset csv --root /data/vindr-mammo/images \
      --csv_dir reference_csvs --proposals /data/focal_rois --keep_orientation --long_side 0 \
      --out data/prepared

On Apache Beam (the TFDS builder's Beam path; `pip install -e ".[beam]"`), e.g. on Dataflow
(docs/data.md#prepare-on-apache-beam gives the whole command):

  python tools/prepare_data.py --dataset vindr --root /data/vindr-mammo --out gs://b/prepared \
      --beam --beam_pipeline_options="runner=DataflowRunner,project=P,region=R,..."

Rerunning the same command resumes an interrupted run (Ctrl-C says how far it got) and skips
a finished one; a Beam job is all or nothing, so a rerun after a failed job starts over. Unusable images and rows are listed in OUT/bad_files.csv with the reason;
counts go to OUT/manifest.json, library logs to OUT/log.txt.
"""

import sys

from absl import flags

from attend_jax import cli
from attend_jax.data import dicom, prepare
from attend_jax.data.sources import SOURCES
from attend_jax.progress import Progress, close_all

_DATASET = flags.DEFINE_enum("dataset", None, sorted(SOURCES), "Which dataset layout ROOT has.",
                             required=True)
_ROOT = flags.DEFINE_string("root", None, "The dataset folder as downloaded.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder (TFDS data_dir).", required=True)
_LONG_SIDE = flags.DEFINE_integer("long_side", 1024, "Stored breast crops' maximum long side;"
                                   " 0 keeps full resolution (the reference's RoIs need it).")
_CROP = flags.DEFINE_enum("crop", None, ["robust", "reference"],
                          "Breast crop rule. robust (default): the breast without film edges,"
                          " labels or markers; reference (default for --dataset csv): the"
                          " authors' exact crop, whose pixels their proposal files use.")
_WORKERS = flags.DEFINE_integer("workers", None, "Decoding processes (default: all cores).")
_NO_FLIP = flags.DEFINE_bool("keep_orientation", False,
                             "Do not flip breasts so that the chest wall is on the left.")
_MAX_PROPOSALS = flags.DEFINE_integer("max_proposals", 32, "Proposals kept per image (csv).")
_CSV_DIR = flags.DEFINE_string("csv_dir", None, "csv: folder with train/val/test.csv.")
_PROPOSALS = flags.DEFINE_string("proposals", None, "csv: folder of *_preds.txt proposal files.")
_KEEP_CACHE = flags.DEFINE_bool("keep_cache", False, "Keep the per-image decode cache.")
_MAX_MEGAPIXELS = flags.DEFINE_float(
    "max_megapixels", dicom.MAX_PIXELS / 1e6,
    "Images whose header claims more pixels than this (in millions) are not decoded but listed"
    " in bad_files.csv: a corrupt or crafted header would be decoded in full (60k x 60k: 7.7 GB"
    " of memory per worker). The default, 100, takes the largest real mammograms (about"
    " 5k x 6k, 30 megapixels) with room to spare; raise it, e.g. --max_megapixels=400, for"
    " larger images.")

_BEAM = flags.DEFINE_bool("beam", False,
                          "Decode and write as one Apache Beam pipeline (the TFDS builder's Beam"
                          " path), on the runner --beam_pipeline_options names, instead of the"
                          " local process pool; --workers is then the runner's business.")
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "",
    "With --beam: Beam's pipeline options as TFDS takes them, comma-separated key=value pairs,"
    ' e.g. "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"'
    " (default: the DirectRunner in this process).")


def beam_flags(text: str) -> list[str]:
  """``a=1,b=2`` (TFDS's --beam_pipeline_options) -> ``["--a=1", "--b=2"]``."""
  return [f"--{part.strip().removeprefix('--')}" for part in text.split(",") if part.strip()]


def main(argv):
  del argv
  crop = _CROP.value or ("reference" if _DATASET.value == "csv" else "robust")
  opts = prepare.PrepareOptions(long_side=_LONG_SIDE.value,
                                normalize_orientation=not _NO_FLIP.value,
                                max_proposals=_MAX_PROPOSALS.value, crop=crop)
  kwargs = {}
  if _DATASET.value == "csv":
    kwargs = {"csv_dir": _CSV_DIR.value, "proposal_dir": _PROPOSALS.value}
  cli.setup_logging(_OUT.value)
  try:
    result = prepare.prepare(_DATASET.value, _ROOT.value, _OUT.value, opts, _WORKERS.value,
                             _KEEP_CACHE.value, progress=Progress("decoding", "img"),
                             max_pixels=int(_MAX_MEGAPIXELS.value * 1e6),
                             beam_options=beam_flags(_BEAM_OPTIONS.value) if _BEAM.value else None,
                             **kwargs)
  except KeyboardInterrupt as e:  # Ctrl-C: what is decoded is kept, and a rerun resumes.
    close_all()
    print(e if isinstance(e, prepare.PrepareInterrupted)
          else "interrupted; rerunning the same command resumes", file=sys.stderr)
    return 130  # As a shell reports a command stopped by SIGINT.
  for split, c in result.counts.items():
    print(f"{split:>5}: {c['images']:6d} images, {c['cancer']:5d} cancer")
  if "train" not in result.counts:
    print(f"warning: no training images: {_OUT.value} cannot train a model, only evaluate one"
          f" (see {_OUT.value}/bad_files.csv for what was left out)", file=sys.stderr)
  print(f"{len(result.bad)} unusable files or rows (see {_OUT.value}/bad_files.csv);"
        f" {result.seconds:.0f} s")
  print(f"records: tfds.data_source({result.builder_name!r}, data_dir={_OUT.value!r}) or"
        " attend_jax.data.pipeline.make_dataset")


if __name__ == "__main__":
  cli.run(main)
