"""The training loop: one function, in sections, for the classifier and the RoI detector.

``train_and_evaluate(config, workdir)`` trains, evaluates on the validation split, keeps the
best checkpoint by the task's validation metric (AUC for ``config.task = "classify"``, lesion
recall in the top 5 at IoU 0.3 for ``"detect"``), stops early, resumes a killed run exactly,
and finally evaluates the best checkpoint on the test split into ``workdir/eval``.

The two tasks differ only in the model they build, their loss terms, what an evaluation step
returns and how a split is summarised; the loop, sharding, checkpoints and resume are one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from attend_jax import losses
from attend_jax.data import device_augment, pipeline
from attend_jax.eval import detection as eval_detection
from attend_jax.eval import metrics as eval_metrics
from attend_jax.eval import report
from attend_jax.models import attend, detector, roi, vit
from attend_jax.train import checkpoint, optim, sharding
from attend_jax.train.writer import MetricWriter


def log(message: str, *args) -> None:
  """Progress for people, on host 0. absl's INFO stream stays for library chatter (orbax
  writes dozens of lines per checkpoint), so main.py keeps it at WARNING."""
  if jax.process_index() == 0:
    print(message % args if args else message, flush=True)
  logging.info(message, *args)


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------
# Config -> model.
# ----------------------------------------------------------------------------------------------


TASKS = ("classify", "detect")


def task(config) -> str:
  name = config.get("task", "classify")
  if name not in TASKS:
    raise ValueError(f"config.task must be one of {TASKS}, got {name!r}.")
  return name


def vit_config(config) -> vit.ViTConfig:
  overrides = {k: v for k, v in config.model.vit_overrides.items() if v}
  overrides["dtype"] = jnp.dtype(config.model.dtype)
  return vit.config_for(config.model.variant, config.model.registers, **overrides)


def attend_config(config) -> attend.AttendConfig:
  return attend.AttendConfig(
      vit=vit_config(config), pool=config.model.pool, pool_attn_block=config.model.pool_attn_block,
      num_classes=config.model.num_classes, dropout=config.model.dropout,
      roi_size=config.model.roi_size,
      contrastive_dim=config.model.contrastive_dim if config.loss.contrastive_weight else 0)


def detector_config(config) -> detector.DetectorConfig:
  d = config.detector
  return detector.DetectorConfig(
      vit=vit_config(config), input_size=d.input_size, fpn_dim=d.fpn_dim,
      head_convs=d.head_convs, strides=tuple(d.strides), object_scale=d.object_scale,
      center_radius=d.center_radius, focal_alpha=d.focal_alpha, focal_gamma=d.focal_gamma,
      giou_weight=d.giou_weight, l1_weight=d.l1_weight, pre_nms=d.pre_nms, nms_iou=d.nms_iou,
      max_detections=d.max_detections)


def build_model(config, seed: int = 0) -> attend.AttendModel | detector.Detector:
  """The task's model with fresh parameters (the caller places it on a mesh)."""
  if task(config) == "detect":
    return detector.Detector(detector_config(config), rngs=nnx.Rngs(seed))
  return attend.AttendModel(attend_config(config), rngs=nnx.Rngs(seed))


def selection_metric(config) -> str:
  """The validation metric that picks the best checkpoint and drives early stopping."""
  return config.detector.select_metric if task(config) == "detect" else "auc"


def _load_pretrained_vit(model: attend.AttendModel | detector.Detector, path: str) -> None:
  from attend_jax.convert import dinov2

  pretrained = dinov2.load(path)
  if dataclasses.replace(pretrained.cfg, dtype=model.cfg.vit.dtype) != model.cfg.vit:
    raise ValueError(f"{path}: the converted backbone is {pretrained.cfg}, but the config asks"
                     f" for {model.cfg.vit}; set model.variant / registers to match.")
  current = nnx.state(model.vision_model, nnx.Param)
  loaded = nnx.state(pretrained, nnx.Param)
  placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), loaded, current)
  nnx.update(model.vision_model, placed)
  log("Loaded the DINOv2 backbone from %s", path)


# ----------------------------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------------------------


def ensure_data(config) -> None:
  """The demo's data: synthetic DICOMs generated and prepared on first use."""
  syn = config.data.synthetic
  data_dir = pathlib.Path(config.data.dir)
  if not syn.num_studies or (data_dir / "manifest.json").exists():
    return
  from attend_jax.data import prepare, synthetic

  if jax.process_index() == 0:
    dicoms = data_dir / "dicom"
    if not (dicoms / "labels.csv").exists():
      log("Writing %d synthetic studies to %s", syn.num_studies, dicoms)
      synthetic.generate(dicoms, syn.num_studies, seed=config.seed,
                         size_range=(syn.min_size, syn.max_size),
                         benign_fraction=syn.benign_fraction, conspicuity=syn.conspicuity)
    log("Preparing %s into %s", dicoms, data_dir)
    prepare.prepare("synthetic", dicoms, data_dir,
                    prepare.PrepareOptions(long_side=config.data.image_size))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("synthetic data ready")


def require_prepared(config) -> None:
  """DatasetNotFoundError naming the prepare command and the raw layout, if data is missing."""
  from attend_jax.data import records
  from attend_jax.data.sources import ORIGINS, DatasetNotFoundError

  data_dir, name = pathlib.Path(config.data.dir), config.data.name
  if list((data_dir / "mammograms" / name).glob("*/dataset_info.json")):
    have = records.splits(data_dir, name)
    missing = [s for s in ("train", config.data.eval_split) if s not in have]
    if missing:
      raise DatasetNotFoundError(
          f"The prepared dataset {name!r} in {data_dir} has the splits {have}, not {missing};"
          " set config.data.eval_split to one it has.")
    return
  dataset, _, long_side = name.rpartition("_")
  where, layout = ORIGINS.get(dataset, ("", ""))
  extra = {"csv": " --csv_dir REFERENCE_CSVS --proposals PROPOSAL_DIR --keep_orientation"}
  lines = [f"No prepared dataset {name!r} in {data_dir.absolute()} (config.data.dir).",
           "Prepare it once (it resumes if interrupted) with:",
           f"  python tools/prepare_data.py --dataset {dataset or 'DATASET'} --root ROOT"
           f" --out {config.data.dir or 'OUT'} --long_side {long_side or 'N'}"
           f"{extra.get(dataset, '')}",
           "or point --config.data.dir at the folder you prepared it into."]
  if where:
    lines += [f"The raw dataset comes from {where}; ROOT must look like:", layout]
  raise DatasetNotFoundError("\n".join(lines))


def _pipeline_config(config, split: str, train: bool) -> pipeline.PipelineConfig:
  batch = config.data.batch_size if train else config.data.eval_batch_size
  if batch % jax.process_count():
    raise ValueError(f"Batch size {batch} is not divisible by {jax.process_count()} hosts.")
  return pipeline.PipelineConfig(
      data_dir=config.data.dir, config=config.data.name, split=split,
      batch_size=batch // jax.process_count(), image_size=config.data.image_size,
      num_proposals=max(config.proposals.topk, 1), seed=config.seed, shuffle=train,
      num_epochs=None if train else 1, drop_remainder=train,
      augment=train and config.data.augment, worker_count=config.data.worker_count if train else 0,
      process_index=jax.process_index(), process_count=jax.process_count())


def _to_global(batch: dict, mesh) -> dict:
  spec = NamedSharding(mesh, sharding.BATCH_SPEC)
  return {k: jax.make_array_from_process_local_data(spec, np.asarray(v)) for k, v in batch.items()}


def _pad_batch(batch: dict, size: int) -> dict:
  n = len(batch["label"])
  out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in
         batch.items()}
  out["image_hw"][n:] = 1  # Keeps padded examples' crops well defined.
  out["valid"] = np.arange(size) < n
  return out


# ----------------------------------------------------------------------------------------------
# Forward pass shared by training and evaluation.
# ----------------------------------------------------------------------------------------------


def _images(batch: dict, train: bool) -> jax.Array:
  images = batch["image"].astype(jnp.float32) / 65535.0
  if train:
    images = device_augment.intensity_jitter(images, batch["image_hw"], batch["brightness"],
                                             batch["contrast"])
  return images


def _forward(model: attend.AttendModel, batch: dict, config, train: bool):
  images = _images(batch, train)
  # Detector proposals were put into the batch by ``make_proposer``: from here they are files.
  source = "files" if config.proposals.source == "detector" else config.proposals.source
  rois = roi.make_rois(batch["image_hw"], batch["proposals"], batch["proposal_mask"], source,
                       config.proposals.topk, config.proposals.grid, config.proposals.anchor)
  logits, aux = model.from_images(images, batch["image_hw"], rois)
  return logits, aux, rois


def _losses(logits, aux, rois, batch, config) -> dict[str, jax.Array]:
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
      # RoIs on a lesion of a cancer are positives; every other RoI, above all a detector's
      # false positives on a cancer image, is a hard negative.
      hits = roi.lesion_hits(rois[:, 1:], batch["lesion_boxes"], batch["lesion_mask"],
                             min_iou=config.loss.get("hit_iou", 0.0))
      cancer = labels[:, None] == 1
      items.append(aux["roi_projection"][:, 1:].reshape(-1, aux["projection"].shape[-1]))
      classes.append((hits & cancer).astype(labels.dtype).reshape(-1))
      out["hard_negatives"] = jnp.sum(~hits & cancer).astype(jnp.float32)
    out["contrastive"] = losses.hard_negative_supcon(
        jnp.concatenate(items), jnp.concatenate(classes), temperature=config.loss.temperature,
        beta=config.loss.beta, top_m=config.loss.top_m)
    total = total + config.loss.contrastive_weight * out["contrastive"]
  out["loss"] = total
  return out


def _loss_terms(m, batch: dict, config, train: bool) -> dict[str, jax.Array]:
  if task(config) == "detect":
    images = _images(batch, train)
    return detector.losses(m(images, batch["image_hw"]), batch["lesion_boxes"],
                           batch["lesion_mask"], m.scale(images.shape[-1]), m.cfg)
  logits, aux, rois = _forward(m, batch, config, train)
  return _losses(logits, aux, rois, batch, config)


def eval_outputs(m, batch: dict, config) -> dict[str, jax.Array]:
  """Per-example outputs of an evaluation step: ``prob``, or detections (``boxes``,
  ``scores``, ``valid``)."""
  if task(config) == "detect":
    return m.detect(_images(batch, False), batch["image_hw"])
  logits, _, _ = _forward(m, batch, config, train=False)
  return {"prob": probabilities(logits, config.model.num_classes)}


def make_train_step(config, train_def, tx: optax.GradientTransformation, dropout_key: jax.Array):
  """The jitted update ``(params, stats, opt_state, rngs, step, batch) -> (..., terms)``.

  Parameters, BatchNorm statistics and optimiser state are donated: updated in place.
  """

  def train_step(params, stats, opt_state, rngs, step, batch):
    m = nnx.merge(train_def, params, stats, rngs)
    # Dropout keys come from the seed and the step, so a resumed run draws the same ones.
    nnx.reseed(m, default=jax.random.fold_in(dropout_key, step))

    def loss_fn(m):
      terms = _loss_terms(m, batch, config, train=True)
      return terms["loss"], terms

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (_, terms), grads = grad_fn(m)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    terms["grad_norm"] = optax.global_norm(grads)
    return params, nnx.state(m, nnx.BatchStat), opt_state, terms

  return jax.jit(train_step, donate_argnums=(0, 1, 2))


def probabilities(logits: jax.Array, num_classes: int) -> jax.Array:
  return jax.nn.sigmoid(logits) if num_classes == 1 else jax.nn.softmax(logits)[:, 1]


# ----------------------------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------------------------


_HOST_KEYS = ("label", "index", "lesion_boxes", "lesion_mask")


def predict_split(eval_step, state, config, split: str, mesh) -> dict[str, Any]:
  """``eval_step``'s outputs for every record of ``split``, with labels, lesion boxes and ids
  (all hosts see all)."""
  from jax.experimental import multihost_utils

  cfg = _pipeline_config(config, split, train=False)
  gathered: dict[str, list] = {}
  keep = []  # False for the padding of the last batch.
  for batch in pipeline.make_dataset(cfg):
    batch = _pad_batch(batch, cfg.batch_size)
    keep.append(multihost_utils.process_allgather(batch.pop("valid"), tiled=True))
    out = eval_step(state, _to_global(batch, mesh))
    out = multihost_utils.process_allgather(out, tiled=True)
    out |= {k: multihost_utils.process_allgather(batch[k], tiled=True) for k in _HOST_KEYS}
    for k, v in out.items():
      gathered.setdefault(k, []).append(np.asarray(v))
  keep = np.concatenate(keep)
  pred = {k: np.concatenate(v)[keep] for k, v in gathered.items()}
  pred["ids"] = pipeline.record_ids(cfg, pred["index"])
  pred["breast"] = [f"{i['study_id']}/{i['laterality']}" for i in pred["ids"]]
  return pred


def _detections(pred: dict) -> tuple[list, list]:
  dets = [(b[v], s[v]) for b, s, v in zip(pred["boxes"], pred["scores"], pred["valid"])]
  lesions = [b[m] for b, m in zip(pred["lesion_boxes"], pred["lesion_mask"])]
  return dets, lesions


def summarize(pred: dict, config, num_bootstrap: int = 0) -> dict:
  """The task's metrics of a predicted split."""
  if task(config) == "detect":
    return eval_detection.summary(*_detections(pred))
  return eval_metrics.summary(pred["label"], pred["prob"], groups=pred["breast"],
                              num_bootstrap=num_bootstrap)


def write_eval(pred: dict, out_dir: pathlib.Path, split: str, config=None) -> dict:
  out_dir.mkdir(parents=True, exist_ok=True)
  if config is not None and task(config) == "detect":
    return _write_detection_eval(pred, out_dir, split)
  summary = eval_metrics.summary(pred["label"], pred["prob"], groups=pred["breast"])
  summary["split"] = split
  (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
  with open(out_dir / "predictions.csv", "w") as f:
    f.write("image_id,study_id,laterality,view,label,probability\n")
    for ids, y, p in zip(pred["ids"], pred["label"], pred["prob"]):
      f.write(f"{ids['image_id']},{ids['study_id']},{ids['laterality']},{ids['view']},{y},"
              f"{p:.6f}\n")
  if summary.get("auc") is not None:
    groups, scores, labels = eval_metrics.aggregate(pred["prob"], pred["label"], pred["breast"])
    report.plot_roc(pred["label"], pred["prob"], out_dir / "roc.png",
                    title=f"{split}: image and breast level", breast=(labels, scores))
  return summary


def _write_detection_eval(pred: dict, out_dir: pathlib.Path, split: str) -> dict:
  """metrics.json, froc.png and detections.csv (every kept box, stored breast-crop pixels)."""
  summary = eval_detection.summary(*_detections(pred))
  summary["split"] = split
  (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
  with open(out_dir / "detections.csv", "w") as f:
    f.write("image_id,study_id,laterality,view,label,num_lesions,rank,x0,y0,x1,y1,score\n")
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


# ----------------------------------------------------------------------------------------------
# Detector proposals for the classifier.
# ----------------------------------------------------------------------------------------------

DETECTOR_COPY = "detector"  # The classifier workdir's own copy of the detector it trained with.


def make_proposer(config, workdir: str | os.PathLike, mesh=None):
  """With ``proposals.source = "detector"``, a jitted ``batch -> batch`` that replaces the
  batch's proposals by the detector's top boxes, on device; otherwise None.

  The detector comes from ``workdir/detector`` if the run already has one (a resume, or a
  trained classifier used for prediction), else from ``config.proposals.detector`` (a detector
  workdir, best checkpoint first), and is then copied there, so that a classifier run carries
  the detector it was trained with.
  """
  if config.proposals.source != "detector":
    return None
  from attend_jax import inference

  own = pathlib.Path(workdir).absolute() / DETECTOR_COPY
  if (own / "config.json").exists():
    loaded = inference.load(own)
  else:
    if not config.proposals.get("detector"):
      raise ValueError("proposals.source='detector' needs proposals.detector: the workdir of a"
                       " trained detector (python -m attend_jax.main"
                       " --config=configs/detector_<dataset>.py --workdir=DIR).")
    loaded = inference.load(config.proposals.detector)
    if task(loaded.config) != "detect":
      raise ValueError(f"proposals.detector={config.proposals.detector} is a"
                       f" {task(loaded.config)!r} run, not a detector.")
    if jax.process_index() == 0:
      own.mkdir(parents=True, exist_ok=True)
      _, params, stats, _ = nnx.split(loaded.model, nnx.Param, nnx.BatchStat, ...)
      checkpoint.save_weights(own / inference.WEIGHTS, {"params": params, "stats": stats})
      (own / "config.json").write_text(loaded.config.to_json_best_effort(indent=2) + "\n")
  log("Proposals: the detector of %s", loaded.source)
  graph, state = nnx.split(loaded.model)
  if mesh is not None:
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
  k = max(config.proposals.topk, 1)
  if loaded.model.cfg.max_detections < k:
    raise ValueError(f"The detector keeps {loaded.model.cfg.max_detections} boxes per image;"
                     f" proposals.topk={k} needs more.")

  @jax.jit
  def propose(state, batch):
    m = nnx.merge(graph, state)
    props, mask = detector.as_proposals(m.detect(_images(batch, False), batch["image_hw"]))
    return {**batch, "proposals": props[:, :k], "proposal_mask": mask[:, :k]}

  return lambda batch: propose(state, batch)


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------


def maybe_initialize_distributed() -> None:
  """Multi-host: the same command on every host. TPU pods configure themselves; GPU and CPU
  clusters set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
  if jax.distributed.is_initialized():
    return
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()


def train_and_evaluate(config, workdir: str) -> dict:
  # --- setup ---------------------------------------------------------------------------------
  maybe_initialize_distributed()
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  if config.data.batch_size % mesh.size or config.data.eval_batch_size % mesh.size:
    raise ValueError(f"data.batch_size ({config.data.batch_size}) and data.eval_batch_size"
                     f" ({config.data.eval_batch_size}) must be multiples of the {mesh.size}"
                     " devices.")
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)

  # --- input ---------------------------------------------------------------------------------
  ensure_data(config)
  require_prepared(config)
  train_iter = iter(pipeline.make_dataset(_pipeline_config(config, "train", train=True)))

  # --- model and sharding --------------------------------------------------------------------
  with jax.set_mesh(mesh):
    model = sharding.create_sharded(lambda: build_model(config, config.seed), mesh)
  model_cfg = model.cfg
  if config.model.pretrained:
    _load_pretrained_vit(model, config.model.pretrained)
  model.train()
  train_def, params, stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  model.eval()
  eval_def = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
  writer.parameter_overview(params)
  tx = optim.make(config, params, model_cfg.vit.depth)
  # Scalars (step counts) replicated on the mesh, moments sharded like their parameters; an
  # explicit layout also makes restores land on the same devices.
  opt_state = jax.jit(tx.init)(params)
  opt_state = jax.tree.map(
      lambda x: x if isinstance(getattr(x, "sharding", None), NamedSharding)
      else jax.device_put(x, NamedSharding(mesh, PartitionSpec())), opt_state)
  dropout_key = jax.random.key(config.seed + 1)

  # --- update step ---------------------------------------------------------------------------
  train_step = make_train_step(config, train_def, tx, dropout_key)

  @jax.jit
  def eval_step(state, batch):
    m = nnx.merge(eval_def, state["params"], state["stats"], state["rngs"])
    return eval_outputs(m, batch, config)

  proposer = make_proposer(config, workdir, mesh)
  if proposer is not None:
    eval_step = (lambda step: lambda state, batch: step(state, proposer(batch)))(eval_step)

  # --- checkpoints and resume ----------------------------------------------------------------
  ckpts = checkpoint.Checkpoints(workdir)
  metric = selection_metric(config)
  counters = {"best_metric": -1.0, "bad_evals": 0, "stopped_early": False}
  step = 0
  restored = ckpts.restore_latest({"params": params, "stats": stats, "opt_state": opt_state})
  if restored is not None:
    step, state, counters, data_state = restored
    counters.setdefault("best_metric", counters.pop("best_auc", -1.0))  # Older runs.
    params, stats, opt_state = state["params"], state["stats"], state["opt_state"]
    train_iter.set_state(data_state)
    log("Resumed from step %d in %s", step, workdir)

  def current_state():
    return {"params": params, "stats": stats, "opt_state": opt_state}

  # --- evals ---------------------------------------------------------------------------------
  def evaluate(split: str):
    pred = predict_split(eval_step, {"params": params, "stats": stats, "rngs": rngs}, config,
                         split, mesh)
    return pred, summarize(pred, config)

  # --- loop ----------------------------------------------------------------------------------
  total = config.train.steps
  start_step, start_time = step, time.perf_counter()
  while step < total and not counters["stopped_early"]:
    batch = _to_global(next(train_iter), mesh)
    if proposer is not None:
      batch = proposer(batch)
    params, stats, opt_state, terms = train_step(params, stats, opt_state, rngs, step, batch)
    step += 1
    loss = float(terms["loss"])
    if not np.isfinite(loss):
      ckpts.wait()
      raise TrainingDivergedError(
          f"Loss is {loss} at step {step}; stopped. The last good checkpoint"
          f" (step {ckpts.latest.latest_step()}) is in {workdir / checkpoint.LATEST}.")
    if step % config.train.log_every == 0 or step == total:
      rate = (step - start_step) / (time.perf_counter() - start_time)
      scalars = {k: float(v) for k, v in terms.items()}
      scalars["lr"] = float(optim.schedule(config)(step))
      writer.write(step, "train", scalars)
      log("step %d/%d  loss %.4f  %.2f steps/s  ETA %.0f s", step, total, loss, rate,
          (total - step) / max(rate, 1e-9))
    if step % config.train.eval_every == 0 or step == total:
      _, val = evaluate(config.data.eval_split)
      writer.write(step, "val", {k: v for k, v in val.items() if isinstance(v, (int, float))})
      value = val.get(metric)
      if value is None:
        log("The %s split gives no %s (%s); no best checkpoint is chosen from it.",
            config.data.eval_split, metric,
            "it holds no lesion" if task(config) == "detect" else "it holds one class only")
        value = -1.0
      log("step %d  %s %s %.4f (best so far %.4f)", step, config.data.eval_split, metric, value,
          max(value, counters["best_metric"]))
      if value > counters["best_metric"]:
        counters.update(best_metric=value, bad_evals=0)
        ckpts.save_best(step, current_state(), {f"val_{metric}": value})
      else:
        counters["bad_evals"] += 1
        if counters["bad_evals"] >= config.train.patience:
          counters["stopped_early"] = True
          log("No better validation %s in %d evaluations: stopping early.", metric,
              config.train.patience)
    if step % config.train.checkpoint_every == 0 or step == total or counters["stopped_early"]:
      ckpts.save_latest(step, current_state(), counters, train_iter.get_state())
  ckpts.wait()
  if hasattr(train_iter, "close"):
    train_iter.close()

  # --- final evaluation of the best checkpoint ------------------------------------------------
  best = ckpts.restore_best(current_state())
  if best is not None:
    params, stats = best[1]["params"], best[1]["stats"]
  from attend_jax.data import records

  split = config.data.test_split
  if split not in records.splits(config.data.dir, config.data.name):
    log("No %r split in %s; the final evaluation uses %r.", split, config.data.name,
        config.data.eval_split)
    split = config.data.eval_split
  pred = predict_split(eval_step, {"params": params, "stats": stats, "rngs": rngs}, config,
                       split, mesh)
  summary = {}
  if jax.process_index() == 0:
    summary = write_eval(pred, workdir / "eval", split, config)
    log("%s: %s", split, json.dumps({k: v for k, v in summary.items()
                                    if not isinstance(v, dict)}))
    log("Wrote %s", workdir / "eval")
  ckpts.close()
  writer.close()
  return summary
