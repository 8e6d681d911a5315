"""The RoI detector as a task: lesion boxes on the breast crop, trained on the records' lesions,
judged by lesion recall, FROC and AP, and used by the classifier as its proposer."""

from __future__ import annotations

import json
import pathlib

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from attend_jax.data import device_augment
from attend_jax.eval import detection, report
from attend_jax.models import build, detector
from attend_jax.tasks.base import Task

DETECTIONS_HEADER = "image_id,study_id,laterality,view,label,num_lesions,rank,x0,y0,x1,y1,score\n"


def _detections(pred: dict) -> tuple[list, list]:
  dets = [(b[v], s[v]) for b, s, v in zip(pred["boxes"], pred["scores"], pred["valid"])]
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

  def write(self, pred, out_dir, split, extra=None):
    """metrics.json, froc.png and detections.csv (every kept box, stored breast-crop pixels)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = self.summarize(pred)
    summary.update(split=split, **(extra or {}))
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out_dir / "detections.csv", "w") as f:
      f.write(DETECTIONS_HEADER)
      for i, ids in enumerate(pred["ids"]):
        head = (f"{ids['image_id']},{ids['study_id']},{ids['laterality']},{ids['view']},"
                f"{pred['label'][i]},{int(pred['lesion_mask'][i].sum())}")
        boxes, scores = pred["boxes"][i][pred["valid"][i]], pred["scores"][i][pred["valid"][i]]
        for rank, (box, score) in enumerate(zip(boxes, scores)):
          f.write(f"{head},{rank}," + ",".join(f"{v:.1f}" for v in box) + f",{score:.5f}\n")
    if summary.get("froc"):
      report.plot_froc(summary["froc"]["fps_per_image"], summary["froc"]["sensitivity"],
                       out_dir / "froc.png",
                       title=f"{split}: {summary['num_lesions']} lesions in"
                             f" {summary['num_images']} images (IoU >= 0.3)")
    return summary


def proposer(model: detector.Detector, k: int, mesh=None):
  """A jitted ``batch -> batch`` whose proposals are ``model``'s top ``k`` detections, on device;
  the detector's parameters are replicated over ``mesh``."""
  if model.cfg.max_detections < k:
    raise ValueError(f"The detector keeps {model.cfg.max_detections} boxes per image;"
                     f" proposals.topk={k} needs more.")
  graph, state = nnx.split(model)
  if mesh is not None:
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
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
