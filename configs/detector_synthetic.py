r"""The RoI detector on the built-in synthetic mammograms: a small ViT from scratch, on CPU.

  python -m attend_jax.main --config=configs/detector_synthetic.py --workdir=workdirs/det_demo
  python -m attend_jax.main --config=configs/detector_synthetic.py:ci --workdir=/tmp/det_ci
  python -m attend_jax.main --config=configs/detector_synthetic.py:smoke --workdir=/tmp/det_s

The first run writes and prepares synthetic DICOMs into data.dir, as configs/demo.py does, with
more lesion-bearing breasts (benign masses count as lesions for a detector). The evaluation
(recall in the top k, FROC, mAP@0.5) goes to WORKDIR/eval/metrics.json with eval/froc.png.
The classifier then takes this detector's boxes with

  python -m attend_jax.main --config=configs/demo.py --workdir=workdirs/demo_det \
      --config.proposals.source=detector --config.proposals.detector=workdirs/det_demo
"""

from configs import common


def get_config(arg: str = ""):
  if arg not in ("", "ci", "smoke"):
    raise ValueError(f"configs/detector_synthetic.py takes '', 'ci' or 'smoke', got {arg!r}")
  c = common.base()
  c.task = "detect"
  c.data.dir = {"": "workdirs/det_data", "ci": "workdirs/det_ci_data",
                "smoke": "workdirs/det_smoke_data"}[arg]
  c.data.name = "synthetic_256"
  c.data.image_size = 256
  c.data.synthetic.num_studies = {"": 200, "ci": 80, "smoke": 4}[arg]
  c.data.synthetic.min_size, c.data.synthetic.max_size = 300, 400
  c.data.synthetic.benign_fraction = 0.4
  c.data.synthetic.conspicuity = 2.0
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.data.worker_count = 0
  c.proposals.source = "breast_only"  # Unused by the detector; no proposal files needed.
  c.proposals.topk = 1
  c.model.variant = "vits14"
  c.model.vit_overrides.update({"width": 64, "depth": 2, "num_heads": 4, "pretrained_grid": 8})
  c.model.freeze_blocks = -1
  # 18 x 18 patches, about the stored size: lesions are 10-50 px. At 224 px the smallest ones
  # (10-14 px) were the ones missed.
  c.detector.input_size = 112 if arg == "smoke" else 252
  c.detector.fpn_dim = 32
  c.detector.head_convs = 2
  c.detector.pre_nms = 100
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 50
  c.optim.clip_norm = 1.0
  c.train.steps = {"": 1500, "ci": 800, "smoke": 6}[arg]
  c.train.log_every = 2 if arg == "smoke" else 50
  c.train.eval_every = 3 if arg == "smoke" else 200
  c.train.checkpoint_every = 3 if arg == "smoke" else 200
  c.train.patience = 100
  return c
