"""The RoI detector as a task: lesion boxes on the breast crop, trained on the records' lesions,
judged by lesion recall, FROC and AP, and used by the classifier for its proposals
(``proposal_step``)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from flax import nnx

from attend_jax import box_ops, hosts
from attend_jax.data import device_augment
from attend_jax.eval import detection, report
from attend_jax.models import build, detector
from attend_jax.tasks.base import Task, fmt, write_json

_GALLERY_BOXES = 3  # Boxes drawn per gallery image, best first.
DETECTIONS_HEADER = "image_id,study_id,laterality,view,label,num_lesions,rank,x0,y0,x1,y1,score\n"


def _detections(pred: dict) -> tuple[list, list]:
  """Per image: the kept (boxes, scores), best first, and the lesion boxes."""
  dets = []
  for b, s, v in zip(pred["boxes"], pred["scores"], pred["valid"]):
    order = np.argsort(-s[v], kind="stable")
    dets.append((b[v][order], s[v][order]))
  lesions = [b[m] for b, m in zip(pred["lesion_boxes"], pred["lesion_mask"])]
  return dets, lesions


class Detect(Task):
  name = "detect"
  host_keys = ("label", "index", "lesion_boxes", "lesion_mask")

  def build_model(self, seed: int = 0) -> detector.Detector:
    with build.fast_tracing():
      return detector.Detector(build.detector_config(self.config), rngs=nnx.Rngs(seed))

  def check(self) -> None:
    build.detector_config(self.config)

  @property
  def selection_metric(self) -> str:
    return self.config.detector.select_metric

  def no_metric_reason(self) -> str:
    return "it holds no lesion"

  def loss_terms(self, model, batch, train, step=None):
    del step  # No term of the detector is on a schedule.
    images = device_augment.images(batch, train)
    return detector.losses(model(images, batch["image_hw"]), batch["lesion_boxes"],
                           batch["lesion_mask"], model.scale(images.shape[-1]), model.cfg)

  def eval_outputs(self, model, batch, detail=False):
    """``boxes`` (B, N, 4) ``x0 y0 x1 y1`` in stored pixels, ``scores`` and ``valid`` (B, N)."""
    del detail  # Detections are already everything a report draws.
    return model.detect(device_augment.images(batch, False), batch["image_hw"])

  def summarize(self, pred):
    return detection.summary(*_detections(pred))

  def write(self, pred, out_dir, split, extra=None, gallery=4, calibration=None):
    """metrics.json (recall@k, FROC sensitivities, mAP@0.5), detections.csv (every kept box,
    stored breast-crop pixels), froc.png, pr.png (the precision-recall curve behind mAP@0.5),
    gallery.png (found lesions, missed lesions and false marks on normal images, boxes
    coloured by score) and report.md. A detector has no ``calibration``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dets, lesions = _detections(pred)
    summary = detection.summary(dets, lesions)
    summary.update(split=split, **(extra or {}))
    write_json(out_dir / "metrics.json", summary)
    with open(out_dir / "detections.csv", "w") as f:
      f.write(DETECTIONS_HEADER)
      for i, ids in enumerate(pred["ids"]):
        head = (f"{ids['image_id']},{ids['study_id']},{ids['laterality']},{ids['view']},"
                f"{pred['label'][i]},{int(pred['lesion_mask'][i].sum())}")
        for rank, (box, score) in enumerate(zip(*dets[i])):
          f.write(f"{head},{rank}," + ",".join(f"{v:.1f}" for v in box) + f",{score:.5f}\n")
    recall_keys = [k for k in summary if k.startswith("recall@")]
    lines = self.report_header(split, summary, extra) + [
        f"{summary['num_images']} images, {summary['num_lesions']} lesions,"
        f" {summary['num_detections']} detections kept.", "",
        report.metrics_markdown([(k, (summary[k],)) for k in (
            *recall_keys, *(k for k in summary if k.startswith("froc_sens@")), "map50")],
            ("value",))]
    if summary.get("froc"):
      report.plot_froc(summary["froc"]["fps_per_image"], summary["froc"]["sensitivity"],
                       out_dir / "froc.png",
                       title=f"{split}: {summary['num_lesions']} lesions in"
                             f" {summary['num_images']} images (IoU >= 0.3)")
      recall, precision = detection.precision_recall(dets, lesions, iou=0.5)
      report.plot_detection_pr(recall, precision, out_dir / "pr.png", ap=summary["map50"],
                               title=f"{split}: detections at IoU >= 0.5")
      lines += ["## Curves", "", "![FROC](froc.png) ![precision-recall](pr.png)", ""]
    else:
      lines += ["No lesion in this split: no FROC, no precision-recall.", ""]
    if gallery:
      report.plot_gallery(self.gallery(pred, split, gallery), out_dir / "gallery.png", gallery)
      lines += ["## Gallery", "", f"The top {_GALLERY_BOXES} boxes of each image, coloured by"
                " score (bright = higher); lesions dotted green.", "",
                "![gallery](gallery.png)", ""]
    lines += ["Every kept box: [detections.csv](detections.csv);"
              " all numbers: [metrics.json](metrics.json)."]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary

  def gallery(self, pred: dict, split: str, k: int) -> dict[str, list[report.Tile]]:
    """``k`` images each: lesions the top boxes find and those they miss (by top score), and
    the normal images with the highest-scoring false marks; stored pixels."""
    dets, lesions = _detections(pred)
    top = np.array([float(s[0]) if len(s) else -np.inf for _, s in dets])
    found = np.array([
        len(les) > 0 and bool((box_ops.pairwise_iou(b[:_GALLERY_BOXES], les) >= 0.3).any())
        for (b, _), les in zip(dets, lesions)])
    has_lesion = np.array([len(les) > 0 for les in lesions])
    order = np.argsort(-top, kind="stable")
    picks = {f"lesions found by a top-{_GALLERY_BOXES} box": order[found[order]][:k],
             "lesions missed": order[(has_lesion & ~found)[order]][:k],
             "false marks on normal images": order[~has_lesion[order]][:k]}
    def tile(i, image, record):
      del record  # The lesions come with the predictions.
      boxes, scores = dets[i][0][:_GALLERY_BOXES], dets[i][1][:_GALLERY_BOXES]
      return report.Tile(image, boxes, scores, texts=[f"{s:.2f}" for s in scores],
                         truth=lesions[i],
                         caption=f"top {top[i]:.2f}" if np.isfinite(top[i]) else "no box")

    return self.gallery_rows(pred, split, picks, tile)

  def headline(self, summary):
    return (f"mAP@0.5 {fmt(summary.get('map50'))}, recall@3 (IoU 0.3)"
            f" {fmt(summary.get('recall@3_iou0.3'))}, FROC sensitivity at 1 FP/image"
            f" {fmt(summary.get('froc_sens@1fp'))}; {summary['num_images']} images,"
            f" {summary['num_lesions']} lesions")


def proposal_step(model: detector.Detector, k: int, mesh=None):
  """A jitted ``batch -> batch`` whose proposals are ``model``'s top ``k`` detections, on device;
  the detector's parameters are replicated over ``mesh``."""
  if model.cfg.max_detections < k:
    raise ValueError(f"The detector keeps {model.cfg.max_detections} boxes per image;"
                     f" proposals.topk={k} needs more.")
  graph, state = nnx.split(model)
  if mesh is not None:
    state = hosts.replicate(state, mesh)
  propose = jax.jit(propose_fn(graph, k))
  return lambda batch: propose(state, batch)


def propose_fn(graph, k: int):
  """``(state, batch) -> batch`` with the proposals of the detector ``graph`` (nnx.split's
  graph) at ``state``: its top ``k`` detections. Unjitted; tools/scale_report.py compiles it."""

  def propose(state, batch):
    m = nnx.merge(graph, state)
    props, mask = detector.as_proposals(m.detect(device_augment.images(batch, False),
                                                 batch["image_hw"]))
    return {**batch, "proposals": props[:, :k], "proposal_mask": mask[:, :k]}

  return propose
