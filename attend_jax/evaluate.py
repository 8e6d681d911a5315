r"""Evaluates a trained run, a classifier or a detector, on a prepared split.

  python -m attend_jax.evaluate --workdir=workdirs/demo --split=test

Uses the run's config.json and best checkpoint (else the latest), and writes what the run's
task writes at the end of training (``Task.write``) to --out (default
WORKDIR/evaluate_<split>), with report.md linking it all:
- a classifier: metrics.json (AUC with bootstrap CI, best F1 and its threshold, sensitivity at
  FPR 0.1 / 0.3 / 0.5, breast level, the confusion table at the best-F1 threshold, the expected
  calibration error before and after the run's calibration, and its operating points'
  sensitivity and specificity on this split), predictions.csv (raw and calibrated probability,
  a flag per operating point), metarepository_image_level.csv (the NYU meta-repository's
  image-level table), roc.png, pr.png, calibration.png (the reliability diagram, raw and
  calibrated) and gallery.png (the highest-scoring true positives and false positives and the
  lowest-scoring false negatives, with their RoIs coloured by attention and the lesion boxes
  in green);
- a detector: metrics.json (lesion recall@k, FROC sensitivities, mAP@0.5), detections.csv,
  froc.png, pr.png and gallery.png (found lesions, missed lesions, false marks on normal
  images).
"""

import pathlib

from absl import app, flags

from attend_jax import cli, paths, run
from attend_jax.data import availability, pipeline
from attend_jax.eval import calibration
from attend_jax.progress import Progress
from attend_jax.train import prediction

_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split of the run's prepared dataset.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default WORKDIR/evaluate_<split>).")
_GALLERY = flags.DEFINE_integer("gallery", 4, "Images per gallery row.")


def predict_split(loaded: run.Loaded, split: str) -> dict:
  """The model's outputs for every record of ``split``: a classifier's probabilities, RoIs and
  attention, or a detector's boxes and scores."""
  cfg = pipeline.for_split(loaded.config, split, train=False)
  mesh = prediction.batch_mesh(cfg.batch_size)
  step = prediction.model_step(loaded.task, loaded.model, detail=True,
                              proposal_step=loaded.proposal_step, mesh=mesh)
  return prediction.predict_split(step, cfg, mesh, host_keys=loaded.task.host_keys,
                                 progress=Progress(f"evaluating {split}", "img"))


def evaluate(workdir: str, split: str, out: pathlib.Path, gallery: int = 4) -> str:
  """Writes the run's task's evaluation of ``split`` into the local folder ``out`` (main stages
  a bucket's); returns the line of its main numbers."""
  loaded = run.load(workdir, prediction.batch_mesh(run.read_config(workdir).data.eval_batch_size))
  config = loaded.config
  availability.require(config.data.dir, config.data.name, (split,),
                       flag="the run's config.data.dir",
                       instead="move the prepared folder back there",
                       split_advice="pass --split among those")
  pred = predict_split(loaded, split)
  summary = loaded.task.write(pred, out, split, {"model": loaded.source}, gallery=gallery,
                              calibration=loaded.calibration)
  return loaded.task.headline(summary)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  out = paths.path(_OUT.value or paths.path(_WORKDIR.value) / f"evaluate_{_SPLIT.value}")
  with paths.staged(out) as folder:  # Written here, uploaded when --out is on a bucket.
    cli.setup_logging(folder)
    headline = evaluate(_WORKDIR.value, _SPLIT.value, folder, _GALLERY.value)
  print(f"{_SPLIT.value}: {headline}")
  print(f"-> {out}/report.md")


if __name__ == "__main__":
  cli.run(main, errors=(run.ModelNotFoundError, calibration.CalibrationError))
