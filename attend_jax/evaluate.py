r"""Evaluates a trained run on a prepared split: metrics, curves, calibration, gallery, report.

  python -m attend_jax.evaluate --workdir=workdirs/demo --split=test

Uses the run's config.json and best checkpoint (else the latest). Writes to
--out (default WORKDIR/evaluate_<split>): metrics.json (AUC with bootstrap CI, best F1 and its
threshold, sensitivity at FPR 0.1 / 0.3 / 0.5, breast level, and the confusion table at the
best-F1 threshold), predictions.csv, roc.png, pr.png, calibration.png, gallery.png (the
highest-scoring true positives and false positives and the lowest-scoring false negatives,
with their RoIs coloured by attention and the lesion boxes in green) and report.md, which
links them all.
"""

import pathlib

import numpy as np
from absl import app, flags

from attend_jax import cli, paths, run, tasks
from attend_jax.data import pipeline, prepared, records
from attend_jax.eval import metrics, report
from attend_jax.progress import Progress
from attend_jax.train import prediction

_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split of the run's prepared dataset.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default WORKDIR/evaluate_<split>).")
_GALLERY = flags.DEFINE_integer("gallery", 4, "Images per gallery row.")


def predict_split(loaded: run.Loaded, split: str) -> dict:
  """Probabilities, RoIs and attention for every record of ``split``."""
  if tasks.name(loaded.config) != "classify":
    raise ValueError(f"{loaded.source} is a detector: its evaluation (recall, FROC, mAP) is in"
                     " WORKDIR/eval/metrics.json, written at the end of training.")
  cfg = pipeline.for_split(loaded.config, split, train=False)
  mesh = prediction.local_mesh(cfg.batch_size)
  step = prediction.model_step(loaded.task, loaded.model, detail=True, proposer=loaded.proposer,
                              mesh=mesh)
  return prediction.predict_split(step, cfg, mesh, host_keys=loaded.task.host_keys,
                                 progress=Progress(f"evaluating {split}", "img"))


def _gallery_picks(labels, probs, k: int) -> dict[str, np.ndarray]:
  order = np.argsort(-probs, kind="stable")
  pos, neg = order[labels[order] == 1], order[labels[order] == 0]
  return {"true positives (highest scores)": pos[:k],
          "false positives (highest-scoring negatives)": neg[:k],
          "false negatives (lowest-scoring cancers)": pos[::-1][:k]}


def plot_gallery(pred: dict, config, split: str, path: pathlib.Path, k: int) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import patches

  source = records.data_source(config.data.dir, config.data.name, split)
  picks = _gallery_picks(pred["label"], pred["prob"], k)
  fig, axes = plt.subplots(3, k, figsize=(2.4 * k, 8), squeeze=False)
  cmap = plt.get_cmap("plasma")
  for row, (title, idx) in zip(axes, picks.items()):
    row[0].set_title(title, loc="left", fontsize=9)
    for ax in row:
      ax.axis("off")
    for ax, i in zip(row, idx):
      record = source[int(pred["index"][i])]
      ax.imshow(np.asarray(record["image"], np.float32) / 65535.0, cmap="gray", vmin=0, vmax=1)
      weights = pred["attention"][i]
      for box, w in zip(pred["rois"][i], weights / max(weights.max(), 1e-9)):
        cx, cy, bw, bh = box
        ax.add_patch(patches.Rectangle((cx - bw / 2, cy - bh / 2), bw, bh, fill=False,
                                       color=cmap(w), linewidth=1.5))
      for x0, y0, x1, y1 in np.asarray(record["lesion_boxes"]).reshape(-1, 4):
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime",
                                       linewidth=1, linestyle=":"))
      ax.text(0.02, 0.98, f"p={pred['prob'][i]:.2f}", transform=ax.transAxes, va="top",
              color="white", fontsize=7, bbox={"facecolor": "black", "alpha": 0.6})
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def evaluate(workdir: str, split: str, out: pathlib.Path, gallery: int = 4) -> dict:
  """Writes the evaluation into the local folder ``out`` (main stages a bucket's)."""
  loaded = run.load(workdir, prediction.local_mesh(run.read_config(workdir).data.eval_batch_size))
  config = loaded.config
  prepared.require(config.data.dir, config.data.name, (split,), flag="the run's config.data.dir",
                   instead="move the prepared folder back there",
                   split_advice="pass --split among those")
  pred = predict_split(loaded, split)
  labels, probs = pred["label"], pred["prob"]
  both = 0 < labels.sum() < len(labels)
  extra = {"model": loaded.source}
  if both:
    extra["confusion_at_best_f1"] = metrics.confusion_at(labels, probs,
                                                         metrics.best_f1(labels, probs)[1])
  summary = loaded.task.write(pred, out, split, extra)
  lines = [f"# Evaluation: {split} split", "", f"Model: `{loaded.source}`",
           f"Data: `{config.data.dir}` ({config.data.name}), {len(labels)} images,"
           f" {int(labels.sum())} cancers.", "", "| metric | image | breast |", "|---|---:|---:|"]
  breast = summary.get("breast", {})
  for key in ("auc", "auc_ci_low", "auc_ci_high", "best_f1", "sens_at_fpr_0.1",
              "sens_at_fpr_0.3", "sens_at_fpr_0.5"):
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines.append(f"| {key} | {fmt(summary.get(key))} | {fmt(breast.get(key))} |")
  if both:
    report.plot_pr(labels, probs, out / "pr.png", title=f"{split}: precision-recall")
    report.plot_calibration(labels, probs, out / "calibration.png", title=f"{split}")
    plot_gallery(pred, config, split, out / "gallery.png", gallery)
    lines += ["", "## Confusion at the best-F1 threshold", "",
              report.confusion_markdown(labels, probs, summary["best_f1_threshold"]),
              "## Curves", "", "![ROC](roc.png) ![PR](pr.png)", "",
              "## Calibration", "", "![calibration](calibration.png)", "",
              "## Gallery", "", "RoIs coloured by attention (bright = more); lesion boxes"
              " dotted green.", "", "![gallery](gallery.png)"]
  else:
    lines += ["", "Only one class in this split: no curves, no gallery."]
  lines += ["", "Per-image scores: [predictions.csv](predictions.csv);"
            " all numbers: [metrics.json](metrics.json)."]
  (out / "report.md").write_text("\n".join(lines) + "\n")
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  out = paths.path(_OUT.value or paths.path(_WORKDIR.value) / f"evaluate_{_SPLIT.value}")
  with paths.staged(out) as folder:  # Written here, uploaded when --out is on a bucket.
    cli.setup_logging(folder)
    summary = evaluate(_WORKDIR.value, _SPLIT.value, folder, _GALLERY.value)
  print(f"{_SPLIT.value}: AUC {summary.get('auc')}  ({summary['num_examples']} images) -> "
        f"{out}/report.md")


if __name__ == "__main__":
  cli.run(main, errors=(run.ModelNotFoundError,))
