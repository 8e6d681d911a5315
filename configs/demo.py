r"""The built-in demo: synthetic mammogram DICOMs, a small ViT trained from scratch, on CPU.

  python -m attend_jax.main --config=configs/demo.py --workdir=workdirs/demo
  python -m attend_jax.main --config=configs/demo.py:smoke --workdir=/tmp/smoke   # seconds

The first run writes synthetic DICOMs and prepares them into data.dir, then trains. It reads
them through the same DICOM reader, sources and pipeline as real data.
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base()
  smoke = arg == "smoke"
  c.data.dir = "workdirs/demo_data" if not smoke else "workdirs/smoke_data"
  c.data.name = "synthetic_384"
  c.data.image_size = 384
  c.data.synthetic.num_studies = 8 if smoke else 80
  c.data.synthetic.min_size, c.data.synthetic.max_size = 400, 500
  c.data.synthetic.benign_fraction = 0.0  # Cancer vs normal; benign masses make it much harder.
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.data.worker_count = 0
  # The synthetic source attaches simulate_detector's boxes: its lesions, jittered, plus
  # false positives, 6 per image (see attend_jax/data/synthetic.py).
  c.proposals.source = "files"
  c.proposals.topk = 5
  c.model.variant = "vits14"
  c.model.vit_overrides.update({"width": 64, "depth": 2, "num_heads": 4, "pretrained_grid": 4})
  c.model.roi_size = 112
  c.model.freeze_blocks = -1  # Trained from scratch: nothing to keep.
  c.model.dropout = 0.1
  c.loss.pos_weight = 1.0
  c.loss.contrastive_weight = 0.1
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 20
  c.optim.clip_norm = 1.0
  c.train.steps = 10 if smoke else 600
  c.train.log_every = 5 if smoke else 25
  c.train.eval_every = 5 if smoke else 100
  c.train.checkpoint_every = 5 if smoke else 100
  c.train.patience = 100
  return c
