"""The paper's task: cancer / not cancer per image, from RoIs of the breast crop.

The forward pass here is the one every caller uses (training, evaluation, predict on DICOMs,
notebooks): images from the batch, RoIs from its proposals (``config.proposals``), then the
Attend model. Its loss is BCE (or softmax CE), the reference's repulsive term and our
hard-negative contrastive term over the global batch.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attend_jax import box_ops, losses
from attend_jax.data import device_augment
from attend_jax.eval import calibration as calibration_lib
from attend_jax.eval import metrics, report, tables
from attend_jax.models import attend, build, roi
from attend_jax.progress import log
from attend_jax.tasks.base import Task, fmt, write_json


def probabilities(logits: jax.Array, num_classes: int) -> jax.Array:
  """P(cancer) from a sigmoid logit (``num_classes=1``) or a two-way softmax."""
  return jax.nn.sigmoid(logits) if num_classes == 1 else jax.nn.softmax(logits)[:, 1]


def forward(model: attend.AttendModel, batch: dict, config, train: bool):
  """``(logits, aux, rois, roi_index)``: ``rois`` (B, K, 4) ``cx cy w h`` in stored pixels, and
  the proposal each came from (-1 for the anchor and tiles)."""
  images = device_augment.images(batch, train)
  # Detector proposals were put into the batch by the run's proposal step: from here they are
  # files.
  source = "files" if config.proposals.source == "detector" else config.proposals.source
  rois, index = roi.make_rois(batch["image_hw"], batch["proposals"], batch["proposal_mask"],
                              source, config.proposals.topk, config.proposals.grid,
                              config.proposals.anchor, with_index=True)
  logits, aux = model.from_images(images, batch["image_hw"], rois)
  return logits, aux, rois, index


def contrastive_weight(config, step: jax.Array | None) -> jax.Array | float:
  """``loss.contrastive_weight``, ramped linearly from 0 over the first
  ``loss.contrastive_warmup`` updates (0: at full weight from the start)."""
  weight, warmup = config.loss.contrastive_weight, config.loss.get("contrastive_warmup", 0)
  if not warmup or step is None:
    return weight
  return weight * jnp.minimum(1.0, step / warmup)


def loss_terms(logits, aux, rois, batch, config, step=None) -> dict[str, jax.Array]:
  labels = batch["label"]
  if config.model.num_classes == 1:
    cls = losses.bce_with_logits(logits, labels, config.loss.pos_weight)
  else:
    cls = losses.softmax_cross_entropy(logits, labels, config.loss.label_smoothing)
  out = {"cls": cls, "repulsive": losses.repulsive(aux["roi_embeddings"])}
  total = cls + config.loss.repulsive_weight * out["repulsive"]
  if config.loss.contrastive_weight:
    items, classes = [aux["projection"]], [labels]
    if config.loss.contrast_rois and rois.shape[1] > 1:
      # RoIs on a cancer's malignant lesion are positives; every other RoI of a cancer image,
      # above all a detector's boxes on a benign look-alike or on nothing, is a hard negative.
      hits = roi.lesion_hits(rois[:, 1:], batch["lesion_boxes"],
                             batch["lesion_mask"] & batch["lesion_malignant"],
                             min_iou=config.loss.get("hit_iou", 0.0))
      cancer = labels[:, None] == 1
      items.append(aux["roi_projection"][:, 1:].reshape(-1, aux["projection"].shape[-1]))
      classes.append((hits & cancer).astype(labels.dtype).reshape(-1))
      out["hard_negatives"] = jnp.sum(~hits & cancer).astype(jnp.float32)
    out["contrastive"] = losses.hard_negative_supcon(
        jnp.concatenate(items), jnp.concatenate(classes), temperature=config.loss.temperature,
        beta=config.loss.beta, top_m=config.loss.top_m)
    total = total + contrastive_weight(config, step) * out["contrastive"]
  out["loss"] = total
  return out


class Classify(Task):
  name = "classify"
  calibrates = True

  def build_model(self, seed: int = 0) -> attend.AttendModel:
    with build.fast_tracing():
      return attend.AttendModel(build.attend_config(self.config), rngs=nnx.Rngs(seed))

  def check(self) -> None:
    build.attend_config(self.config)

  @property
  def selection_metric(self) -> str:
    return "auc"

  def no_metric_reason(self) -> str:
    return "it holds one class only"

  def loss_terms(self, model, batch, train, step=None):
    logits, aux, rois, _ = forward(model, batch, self.config, train)
    return loss_terms(logits, aux, rois, batch, self.config, step)

  def eval_outputs(self, model, batch, detail=False):
    """``prob`` (B,); with ``detail`` also ``rois`` (B, K, 4), ``attention`` (B, K) of the
    pooled token over the RoIs, and ``roi_score`` (B, K), each RoI's detector score (NaN for
    the anchor and tiles)."""
    config = self.config
    logits, aux, rois, index = forward(model, batch, config, train=False)
    out = {"prob": probabilities(logits, config.model.num_classes)}
    if detail:
      pool_row = config.proposals.topk if config.model.pool == "cls" else 0
      block = config.model.pool_attn_block - 1
      scores = jnp.take_along_axis(batch["proposals"][..., 4], jnp.maximum(index, 0), axis=1)
      out.update(rois=rois, attention=aux["attention"][block][:, pool_row, :rois.shape[1]],
                 roi_score=jnp.where(index >= 0, scores, jnp.nan))
    return out

  def summarize(self, pred, num_bootstrap: int = 0):
    return metrics.summary(pred["label"], pred["prob"], groups=pred["breast"],
                           num_bootstrap=num_bootstrap)

  def fit_calibration(self, pred, split):
    """``eval.calibration.fit`` of ``pred``'s labels and probabilities; None, said in the log,
    where ``split`` holds one class."""
    try:
      fitted = calibration_lib.fit(pred["label"], pred["prob"], split)
    except metrics.SingleClassError:
      positives = int(np.sum(pred["label"]))
      log("The %s split holds one class only (%d images, %d cancers): no calibration or"
          " operating points are fitted, and predict and evaluate report the raw probability"
          " only.", split, len(pred["label"]), positives)
      return None
    ece = fitted.details["ece"]
    log("Calibration on %s: temperature %.3f, ECE %.3f -> %.3f; thresholds for specificity"
        " 0.9 and 0.8 and best F1: %s", split, fitted.temperature, ece["before"], ece["after"],
        ", ".join(f"{t:.4g}" for t in fitted.thresholds.values()))
    if fitted.details["temperature_at_search_limit"]:
      log("The temperature, %.3g, is at the end of the searched range: the %s split's scores"
          " are all alike or perfectly separated, so the calibrated probabilities say little;"
          " a larger validation split calibrates better.", fitted.temperature, split)
    return fitted

  def write(self, pred, out_dir, split, extra=None, gallery=4, calibration=None):
    """metrics.json (with a bootstrap CI of the AUC, the confusion table at the best-F1
    threshold, the expected calibration error, and ``extra``), predictions.csv,
    metarepository_image_level.csv (the NYU meta-repository's image-level table), roc.png,
    pr.png, calibration.png, gallery.png (the highest-scoring true and false positives and the
    lowest-scoring false negatives, their RoIs coloured by attention) and report.md.

    With ``calibration`` (``eval.calibration.Calibration``, fitted on the validation split),
    also the calibrated probability and a flag per operating point in predictions.csv, the ECE
    after calibration, each operating point's sensitivity and specificity on this split at
    the validation's threshold, and the calibrated curve in calibration.png."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, probs = pred["label"], pred["prob"]
    summary = metrics.summary(labels, probs, groups=pred["breast"])
    both = summary.get("auc") is not None
    if both:
      summary["confusion_at_best_f1"] = metrics.confusion_at(labels, probs,
                                                             summary["best_f1_threshold"])
    summary["ece"] = metrics.expected_calibration_error(labels, probs, calibration_lib.BINS)
    calibrated = None
    if calibration is not None:
      calibrated = calibration.calibrated(probs)
      summary["ece_calibrated"] = metrics.expected_calibration_error(labels, calibrated,
                                                                     calibration_lib.BINS)
      summary["calibration"] = {"temperature": calibration.temperature,
                                "fitted_on": calibration.details.get("fitted_on")}
      summary["operating_points"] = {
          name: {"threshold": t, **metrics.confusion_at(labels, probs, t)}
          for name, t in calibration.thresholds.items()}
    summary.update(split=split, **(extra or {}))
    write_json(out_dir / "metrics.json", summary)
    with tables.PredictionsCsv(out_dir / "predictions.csv") as table:
      for i, (ids, y, p) in enumerate(zip(pred["ids"], labels, probs)):
        table.write({k: ids[k] for k in ("image_id", "study_id", "laterality", "view")}
                    | {"label": int(y), "probability": p}
                    | ({"probability_calibrated": calibrated[i], "flags": calibration.flags(p)}
                       if calibration is not None else {}))
    tables.write_metarepository(out_dir / tables.METAREPOSITORY_FILE,
                                [ids["image_id"] for ids in pred["ids"]], probs, labels)
    lines = self.report_header(split, summary, extra) + [
        f"{len(labels)} images, {int(labels.sum())} cancers.", "",
        report.metrics_markdown(
            [(key, (summary.get(key), summary.get("breast", {}).get(key)))
             for key in ("auc", "auc_ci_low", "auc_ci_high", "best_f1", "sens_at_fpr_0.1",
                         "sens_at_fpr_0.3", "sens_at_fpr_0.5")], ("image", "breast"))]
    if both:
      _, scores, breast_labels = metrics.aggregate(probs, labels, pred["breast"])
      report.plot_roc(labels, probs, out_dir / "roc.png",
                      title=f"{split}: image and breast level", breast=(breast_labels, scores))
      report.plot_pr(labels, probs, out_dir / "pr.png", title=f"{split}: precision-recall")
      report.plot_calibration(labels, probs, out_dir / "calibration.png", title=split,
                              calibrated=calibrated)
      lines += ["## Confusion at the best-F1 threshold", "",
                report.confusion_markdown(labels, probs, summary["best_f1_threshold"]),
                "## Curves", "", "![ROC](roc.png) ![PR](pr.png)", "",
                *self._calibration_lines(summary, calibration),
                "![calibration](calibration.png)", ""]
      if gallery and "rois" in pred:
        report.plot_gallery(self.gallery(pred, split, gallery), out_dir / "gallery.png",
                            gallery)
        lines += ["## Gallery", "", "RoIs coloured by attention (bright = more); lesion boxes"
                  " dotted green.", "", "![gallery](gallery.png)", ""]
    else:
      lines += ["Only one class in this split: no curves, no gallery.", "",
                *self._calibration_lines(summary, calibration)]
    lines += ["Per-image scores: [predictions.csv](predictions.csv), and in the NYU"
              " meta-repository's format:"
              f" [{tables.METAREPOSITORY_FILE}]({tables.METAREPOSITORY_FILE});"
              " all numbers: [metrics.json](metrics.json)."]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary

  @staticmethod
  def _calibration_lines(summary: dict, calibration) -> list[str]:
    """report.md's calibration section: ECE before and after, and the operating points."""
    ece = summary["ece"]
    if calibration is None:
      return ["## Calibration", "", f"Expected calibration error {ece:.3f}. The model has no"
              " calibration (calibration.json): no calibrated probability or operating"
              " points.", ""]
    fitted = calibration.details.get("fitted_on") or {}
    lines = ["## Calibration", "",
             f"Expected calibration error {ece:.3f} raw, {summary['ece_calibrated']:.3f}"
             f" calibrated (temperature {calibration.temperature:.3f}, fitted on the"
             f" {fitted.get('split', '?')} split).", "",
             "Operating points, thresholds from the validation split (on the raw"
             " probability), as they do on this split:", "",
             "| point | threshold | sensitivity | specificity |", "|---|---:|---:|---:|"]
    for name, point in summary["operating_points"].items():
      lines.append(f"| {name} | {point['threshold']:.4g} | {fmt(point['recall'])} |"
                   f" {fmt(point['specificity'])} |")
    return lines + [""]

  def gallery(self, pred: dict, split: str, k: int) -> dict[str, list[report.Tile]]:
    """The highest-scoring true positives and false positives and the lowest-scoring false
    negatives, ``k`` of each, with their RoIs (by attention) and lesions, in stored pixels."""
    labels, probs = pred["label"], pred["prob"]
    order = np.argsort(-probs, kind="stable")
    pos, neg = order[labels[order] == 1], order[labels[order] == 0]
    picks = {"true positives (highest scores)": pos[:k],
             "false positives (highest-scoring negatives)": neg[:k],
             "false negatives (lowest-scoring cancers)": pos[::-1][:k]}
    weights = pred["attention"] / np.maximum(pred["attention"].max(axis=1, keepdims=True), 1e-9)
    return self.gallery_rows(pred, split, picks, lambda i, image, record: report.Tile(
        image, box_ops.to_xyxy(np.asarray(pred["rois"][i], np.float64)), weights[i],
        truth=np.asarray(record["lesion_boxes"]).reshape(-1, 4), caption=f"p={probs[i]:.2f}"))

  def headline(self, summary):
    breast = summary.get("breast", {})
    return (f"AUC {fmt(summary.get('auc'))} (breast {fmt(breast.get('auc'))}),"
            f" best F1 {fmt(summary.get('best_f1'))}, sensitivity at FPR 0.1"
            f" {fmt(summary.get('sens_at_fpr_0.1'))}; {summary['num_examples']} images,"
            f" {summary['num_positive']} cancers")
