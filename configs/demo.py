r"""The built-in demo: the paper's two-stage system on synthetic mammogram DICOMs, on CPU.

  make demo    # = the three commands below, about 10 minutes on 2 CPU cores
  python -m attend_jax.main --config=configs/demo.py:detector --workdir=workdirs/demo_detector
  python -m attend_jax.main --config=configs/demo.py --workdir=workdirs/demo
  python -m attend_jax.predict --workdir=workdirs/demo workdirs/demo_data/heldout \
      --out=workdirs/demo/predict --overlays

The first run writes synthetic MG DICOMs (cancer vs normal) and prepares them into data.dir with
the same reader, source and pipeline as real data, plus a few held-out studies in
data.dir/heldout that are never prepared. Stage one trains the RoI detector on the lesion
boxes; stage two trains the classifier on the breast and the detector's top 4 boxes, proposed
on the fly (proposals.source="detector"), and copies the detector into its workdir, so that
predict then works on any DICOM folder without proposal files.

Arguments, comma-separated (e.g. ``configs/demo.py:ci,detector``):
- ``ci`` / ``smoke``: smaller data and fewer steps (the CI test; seconds);
- ``detector``: stage one on the same data;
- ``fine``: the fine-grained set (benign masses and calcifications beside cancers, on the same
  images; data.synthetic.difference sets how far a cancer looks from benign), the one
  tools/ablate.py compares the method's parts on; VARIANTS below are that comparison.

Choices that make small from-scratch ViTs learn in CPU minutes, all visible here: lesions twice
as conspicuous as the generator's default (``conspicuity=2``), RoIs at 56 px, and for the
default classifier the classification loss alone (the ablation measures the other terms).
"""

from configs import common

SIZES = {"": (300, 1500, 600), "ci": (160, 1000, 500), "smoke": (8, 10, 6)}  # studies, steps


def _parse(arg: str) -> tuple[str, bool, bool]:
  parts = {p for p in arg.split(",") if p}
  unknown = parts - {"ci", "smoke", "detector", "fine"}
  if unknown or {"ci", "smoke"} <= parts:
    raise ValueError(f"configs/demo.py takes a comma-separated subset of ci|smoke, detector and"
                     f" fine, got {arg!r}")
  size = "ci" if "ci" in parts else "smoke" if "smoke" in parts else ""
  return size, "detector" in parts, "fine" in parts


def workdir(size: str = "", detector: bool = False, fine: bool = False) -> str:
  """Where the Makefile and the docs put each run; the classifier reads its detector there."""
  return ("workdirs/demo" + ("_fine" if fine else "") + (f"_{size}" if size else "")
          + ("_detector" if detector else ""))


def get_config(arg: str = ""):
  size, detector, fine = _parse(arg)
  studies, steps, detector_steps = SIZES[size]
  c = common.base()
  c.data.dir = workdir(size, fine=fine) + "_data"
  c.data.name = "synthetic_384"
  c.data.image_size = 384
  syn = c.data.synthetic
  syn.num_studies = studies
  syn.heldout_studies = 1 if size == "smoke" else 4
  syn.min_size, syn.max_size = 400, 500
  syn.conspicuity = 2.0
  syn.benign_fraction = 0.0  # Cancer vs normal.
  if fine:
    # difference 1: the most distinct classes; at 0.7 a from-scratch ViT-tiny reached test AUC
    # 0.58 (validation 0.63, still rising) in the CI-size 1,000 steps, too close to chance for an
    # ablation to separate the parts.
    syn.benign_fraction, syn.difference, syn.lookalike_fraction = 0.3, 1.0, 0.5
    syn.oracle_proposals = 6  # Stored for the oracle variant; the default reads the detector's.
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.data.worker_count = 0
  c.model.variant = "vits14"
  c.model.freeze_blocks = -1  # Trained from scratch: nothing to keep.
  c.optim.schedule = "cosine"
  c.optim.clip_norm = 1.0
  c.optim.lr = 1e-3
  smoke = size == "smoke"
  c.train.log_every = 2 if smoke else 100
  c.train.eval_every = 3 if smoke else 250
  c.train.checkpoint_every = 3 if smoke else 250
  c.train.patience = 100
  if detector:
    c.task = "detect"
    c.proposals.source, c.proposals.topk = "breast_only", 1  # Unused by the detector.
    c.model.vit_overrides.update({"width": 64, "depth": 2, "num_heads": 4, "pretrained_grid": 8})
    # 16 x 16 patches over the 384 px crop: the lesions are 20-60 px there.
    c.detector.input_size = 112 if smoke else 224
    c.detector.fpn_dim = 32
    c.detector.pre_nms = 100
    c.optim.warmup_steps = 50
    c.train.steps = detector_steps
    return c
  c.proposals.source = "detector"
  c.proposals.detector = workdir(size, detector=True, fine=fine)
  c.proposals.topk = 5  # The breast anchor and the detector's top 4 boxes.
  c.model.vit_overrides.update({"width": 64, "depth": 2, "num_heads": 4, "pretrained_grid": 4})
  c.model.roi_size = 56
  c.model.dropout = 0.1
  c.loss.pos_weight = 1.0
  c.loss.repulsive_weight = 0.0
  c.loss.contrastive_weight = 0.0
  c.optim.warmup_steps = 100
  c.train.steps = steps
  return c


# tools/ablate.py --config=configs/demo.py:fine: each variant is a set of overrides of the
# classifier config above (the baseline, first), all trained on the same prepared data.
VARIANTS = {
    "cls only": {},
    "+ repulsive": {"loss.repulsive_weight": 0.3},
    "+ contrastive (beta)": {"loss.contrastive_weight": 0.5, "loss.beta": 1.0},
    "+ contrastive (top-m)": {"loss.contrastive_weight": 0.5, "loss.beta": 0.0, "loss.top_m": 8},
    "+ both": {"loss.repulsive_weight": 0.3, "loss.contrastive_weight": 0.5},
    "oracle RoIs": {"proposals.source": "files"},
    "grid RoIs": {"proposals.source": "grid"},
    "breast only": {"proposals.source": "breast_only", "proposals.topk": 1},
    "attn pooling": {"model.pool": "attn"},
    # Why the contrastive term hurts here (docs/results.md): a tenth of the weight, the weight
    # ramped up over half the run, and image embeddings only (no RoIs in the contrast).
    "+ contrastive (w 0.1)": {"loss.contrastive_weight": 0.1, "loss.beta": 1.0},
    "+ contrastive (warm-up)": {"loss.contrastive_weight": 0.5, "loss.contrastive_warmup": 500},
    "+ contrastive (images only)": {"loss.contrastive_weight": 0.5, "loss.contrast_rois": False},
}
