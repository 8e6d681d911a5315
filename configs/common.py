"""Defaults shared by every config; each config file overrides what differs."""

import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classify"  # classify (the Attend model) | detect (the RoI detector)

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # Output folder of tools/prepare_data.py (TFDS data_dir).
  c.data.name = ""  # Builder config written by prepare_data, e.g. "vindr_1024".
  c.data.image_size = 1024  # Stored crops are padded to this square; = prepare's --long_side.
  c.data.batch_size = 4  # Global, over all hosts and devices.
  c.data.eval_batch_size = 8
  c.data.worker_count = 2  # grain worker processes per host.
  c.data.augment = True
  c.data.eval_split = "val"
  c.data.test_split = "test"
  # How the records must have been prepared (tools/prepare_data.py --crop, --keep_orientation,
  # --long_side; -1: data.image_size). A run checks its dataset against it at start and records
  # what it was trained on in config.json (data.prepared_with), which predict then follows.
  c.data.prepare = ml_collections.ConfigDict({"crop": "robust", "normalize_orientation": True,
                                              "long_side": -1})
  # Demo only: generate and prepare synthetic DICOMs into data.dir when it is empty
  # (attend_jax.data.synthetic.generate's arguments), and heldout_studies more, never prepared,
  # into data.dir/heldout for predict. difference >= 0 switches on the fine-grained mode (how
  # far a cancer looks from its benign look-alikes, 0 .. 1); oracle_proposals > 0 stores that
  # many boxes around the true lesions per image, for the ablation's oracle variant only.
  c.data.synthetic = ml_collections.ConfigDict({
      "num_studies": 0, "heldout_studies": 0, "min_size": 300, "max_size": 400,
      "benign_fraction": 0.2, "conspicuity": 1.0, "difference": -1.0,
      "lookalike_fraction": 0.0, "oracle_proposals": 0})

  c.proposals = ml_collections.ConfigDict()
  c.proposals.source = "files"  # files | detector | grid | breast_only
  c.proposals.detector = ""  # source=detector: a detector workdir (config.json + checkpoints).
  c.proposals.topk = 5  # RoIs per image, the breast anchor included.
  c.proposals.grid = 2  # grid: g x g tiles of the breast after the anchor.
  # RoI 0 is the whole breast crop. False (files only): the top-k proposals as they are, as
  # the reference does.
  c.proposals.anchor = True

  c.model = ml_collections.ConfigDict()
  c.model.variant = "vitb14"
  c.model.registers = False
  # Non-zero entries replace the variant's (e.g. a tiny ViT for tests and the demo).
  # pos_embed_interp: how position embeddings are resized; "" takes the pretrained weights'
  # own (recorded here at the start of a run), else Meta's.
  c.model.vit_overrides = ml_collections.ConfigDict(
      {"width": 0, "depth": 0, "num_heads": 0, "pretrained_grid": 0, "pos_embed_interp": ""})
  c.model.pretrained = ""  # A tools/convert_dinov2.py output folder; "" trains from scratch.
  c.model.roi_size = 448
  c.model.pool = "anchor"
  c.model.pool_attn_block = 3
  c.model.num_classes = 1
  c.model.dropout = 0.25
  c.model.freeze_blocks = 3  # Patch embedding and the first N ViT blocks; -1 freezes nothing.
  c.model.dtype = "float32"  # Or "bfloat16" compute.
  # How RoIs are cut from the breast image: "dense", float32 at HIGHEST (the reference's
  # numbers), or "bf16": bfloat16 operands summed in float32, one pass of an accelerator's 16-bit
  # matmul units (crops within 1e-2; models/roi.py crop_rois_bf16 has the costs).
  c.model.crop = "dense"
  # The ViT's attention kernel: auto (cuDNN flash on sm80+ GPUs in bf16, Pallas splash on TPU,
  # on a CPU the fused kernel of models/cpu_attention.cc, XLA otherwise) | xla | cudnn | splash
  # | cpu. The log says which ran and why.
  c.model.attention = "auto"
  # Recompute in the backward pass instead of keeping activations: none | dots (keep the
  # matmuls' outputs) | full (keep each ViT block's input only). Same loss and gradients.
  c.model.remat = "none"
  # One lax.scan over the ViT blocks: one block compiled instead of all of them (a shorter
  # compile for deep backbones), the same numbers; the weights' layout is unchanged.
  c.model.scan_blocks = False
  c.model.contrastive_dim = 128

  c.loss = ml_collections.ConfigDict()
  c.loss.pos_weight = 10.0
  c.loss.label_smoothing = 0.0  # Softmax head only.
  c.loss.repulsive_weight = 0.3
  c.loss.contrastive_weight = 0.0
  c.loss.contrastive_warmup = 0  # Updates over which that weight ramps up from 0 (0: none).
  c.loss.temperature = 0.1
  c.loss.beta = 1.0  # Hard-negative reweighting; 0 for plain SupCon.
  c.loss.top_m = 0  # > 0: keep only the m hardest negatives instead.
  c.loss.contrast_rois = True  # Add RoI embeddings (lesion hits vs the rest) to the contrast.
  # A RoI hits a lesion when it covers half of it (0), or from this IoU with it (> 0).
  c.loss.hit_iou = 0.0

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-6
  c.optim.weight_decay = 0.01
  c.optim.schedule = "constant"  # constant | cosine
  c.optim.warmup_steps = 0
  c.optim.clip_norm = 0.0  # 0 disables clipping.
  c.optim.grad_accum = 1
  c.optim.layer_decay = 1.0  # < 1: ViT block i gets lr * decay ** (depth - i).

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100_000
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.patience = 5  # Evaluations without a better validation AUC before stopping.
  # On SIGTERM / SIGINT: seconds to save and commit a checkpoint before the process exits anyway
  # (spot and preemptible VMs get about 30 s).
  c.train.preemption_grace_s = 25.0
  # Multi-host: steps between the hosts' agreement on a stop signal, beside the log, eval and
  # checkpoint steps (where they sync anyway); the steps in between run without a host sync.
  c.train.host_sync_every = 10
  # Global batches placed on the devices ahead of the step, by a background thread.
  c.train.prefetch = 2
  # Before the first batch is read, the train step is compiled and its memory (XLA's estimate)
  # compared with the devices' (on CPU: the host's available RAM, with the pipeline's batches);
  # a data.batch_size that cannot fit stops there, naming the largest that fits. False skips
  # the comparison, e.g. where the estimate is wrong for a backend.
  c.train.memory_check = True

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})

  # task=detect: the RoI detector (attend_jax/models/detector.py); its backbone is c.model's.
  c.detector = ml_collections.ConfigDict()
  c.detector.input_size = 518  # The whole breast crop is resized to this square (37 patches).
  c.detector.fpn_dim = 256
  c.detector.head_convs = 2
  c.detector.strides = (7, 14, 28)
  c.detector.object_scale = 3.0  # Lesions go to the level whose stride is ~ size / 3.
  c.detector.center_radius = 1.5  # Positives: points within 1.5 strides of a lesion centre.
  c.detector.focal_alpha = 0.25
  c.detector.focal_gamma = 2.0
  c.detector.giou_weight = 2.0
  c.detector.l1_weight = 1.0
  c.detector.pre_nms = 300
  c.detector.nms_iou = 0.5
  c.detector.max_detections = 100
  c.detector.select_metric = "recall@5_iou0.3"  # Picks the best checkpoint.
  return c


def finetune(c: ml_collections.ConfigDict, dataset: str, batch_size: int) -> None:
  """Our recipe on a real dataset, beyond the reference: pretrained ViT-B/14 in bf16, cosine lr
  with warmup, layer decay, clipping, the contrastive term; breast + 2 x 2 tiles as RoIs until
  the detector writes proposals. Prepared at --long_side 2048 into data/<dataset>."""
  c.data.dir = f"data/{dataset.split('_')[0]}"
  c.data.name = f"{dataset}_2048"
  c.data.image_size = 2048
  c.data.batch_size = c.data.eval_batch_size = batch_size
  c.data.worker_count = 8
  c.proposals.source = "grid"
  c.proposals.topk = 5
  c.model.variant = "vitb14"
  c.model.pretrained = "weights/dinov2_vitb14"
  c.model.dtype = "bfloat16"
  c.model.freeze_blocks = 3
  # 4 images per chip fit a 16 GB v5e with the matmuls' outputs kept and the rest recomputed
  # (tools/scale_report.py: about 6.5 GB against 15.6 without remat, for 7 % more FLOPs).
  c.model.remat = "dots"
  c.model.crop = "bf16"
  c.loss.contrastive_weight = 0.1
  c.optim.lr = 2e-5
  c.optim.schedule = "cosine"
  c.optim.clip_norm = 1.0
  c.optim.layer_decay = 0.8
  c.train.patience = 5


def smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks a config to a tiny from-scratch ViT and a few CPU steps; the data stay as they are.

  For checking a prepared dataset and a config end to end before spending accelerator hours.
  """
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.data.worker_count = 0
  c.model.variant = "vits14"
  c.model.vit_overrides.update({"width": 32, "depth": 2, "num_heads": 2, "pretrained_grid": 4})
  c.model.pretrained = ""
  c.model.roi_size = 56
  c.model.dtype = "float32"
  c.model.freeze_blocks = -1
  c.optim.lr = 1e-4
  c.train.steps = 6
  c.train.log_every = 2
  c.train.eval_every = 3
  c.train.checkpoint_every = 3


# The backbone of the :tiny variants: DINOv2's blocks at a CPU size, on the 37 x 37 position
# grid of its 518 px pretraining, deep enough for 3 frozen blocks and a trained one.
TINY_VIT = {"width": 64, "depth": 4, "num_heads": 2, "pretrained_grid": 37}
TINY_WEIGHTS = "weights/dinov2_vitb14_tiny"
TINY_CONVERT = ("python tools/convert_dinov2.py --variant vitb14 --width 64 --depth 4"
                " --num_heads 2 --checkpoint FILE --out " + TINY_WEIGHTS)


def tiny(c: ml_collections.ConfigDict, image_size: int = 256) -> None:
  """Shrinks a config's sizes and nothing else, for CI and for trying a set-up on a CPU: a
  4-block, 64-wide backbone, 28 px RoIs, stored crops of ``image_size`` px, batch 8, 6 steps.

  Unlike ``smoke``, what users depend on stays as the config has it: the pretrained backbone
  (``TINY_WEIGHTS``, a converter output of ``TINY_VIT``'s size: ``TINY_CONVERT``), the dtype,
  the frozen blocks, layer decay, the losses, the dataset and its layout, the proposals source.
  The prepared data are the config's dataset at ``image_size``
  (tools/prepare_data.py --long_side ``image_size``, or full size where the config keeps it).
  """
  if c.data.prepare.long_side != 0:  # Full-size records (the reference's) stay full size.
    c.data.name = f"{c.data.name.rsplit('_', 1)[0]}_{image_size}"
  c.data.image_size = image_size
  c.data.batch_size = c.data.eval_batch_size = 8
  c.data.worker_count = min(c.data.worker_count, 1)  # Still a worker process, when it had any.
  c.model.vit_overrides.update(TINY_VIT)
  if c.model.pretrained:
    c.model.pretrained = TINY_WEIGHTS
  c.model.roi_size = 28
  c.optim.warmup_steps = min(c.optim.warmup_steps, 2)
  c.train.steps = 6
  c.train.log_every = 2
  c.train.eval_every = 3
  c.train.checkpoint_every = 3
  if c.task == "detect":
    c.detector.input_size = 112
    c.detector.fpn_dim = 32
    c.detector.pre_nms = 100


def variants(arg: str, name: str, allowed: tuple[str, ...]) -> set[str]:
  """A config argument as a set of comma-separated variants (``tiny,detector``); a ValueError
  naming the allowed ones otherwise."""
  parts = {p for p in arg.split(",") if p}
  if parts - set(allowed) or {"smoke", "tiny"} <= parts:
    raise ValueError(f"configs/{name}.py takes a comma-separated subset of"
                     f" {', '.join(allowed)} (smoke or tiny, not both), got {arg!r}")
  return parts


def detector(c: ml_collections.ConfigDict, dataset: str, batch_size: int) -> None:
  """The RoI detector on a real dataset, on the same prepared data as the classifier: the
  pretrained ViT-B/14 in bf16 on the breast crop resized to 518 px, fine-tuned with layer decay;
  the best checkpoint by validation recall of lesions in the top 5 boxes at IoU 0.3."""
  finetune(c, dataset, batch_size)
  c.task = "detect"
  c.proposals.source = "breast_only"  # Unused by the detector.
  c.proposals.topk = 1
  c.loss.contrastive_weight = 0.0
  c.optim.lr = 1e-4
  c.optim.layer_decay = 0.75
  c.detector.input_size = 518


def smoke_detector(c: ml_collections.ConfigDict) -> None:
  """``smoke`` for a detector config: a tiny ViT at 112 px, a small head."""
  smoke(c)
  c.detector.input_size = 112
  c.detector.fpn_dim = 32
  c.detector.pre_nms = 100


def two_stage(c: ml_collections.ConfigDict, detector_workdir: str) -> None:
  """The classifier on the RoIs of a trained detector (configs/detector_<dataset>.py): the
  breast anchor and its top 4 boxes, proposed on the fly on device."""
  c.proposals.source = "detector"
  c.proposals.detector = detector_workdir
  c.proposals.topk = 5


# The suffix of a prepared dataset whose records hold a detector's boxes as their proposals
# (tools/export_proposals.py --records).
DETECTOR_RECORDS = "_det"


def precomputed_proposals(c: ml_collections.ConfigDict) -> None:
  """``two_stage`` with the detector's boxes computed once instead of at every step: the breast
  anchor and the top 4 boxes the records hold, which tools/export_proposals.py --records wrote
  from the trained detector (dataset ``<name>_det`` beside the prepared one). The step then
  runs no detector (tools/scale_report.py --detector_config prices both ways)."""
  c.proposals.source = "files"
  c.proposals.detector = ""
  c.proposals.topk = 5
  c.data.name = c.data.name + DETECTOR_RECORDS
