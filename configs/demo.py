r"""The built-in demo: synthetic mammogram DICOMs, a small ViT trained from scratch, on CPU.

  python -m attend_jax.main --config=configs/demo.py --workdir=workdirs/demo      # ~4 min
  python -m attend_jax.main --config=configs/demo.py:ci --workdir=/tmp/demo_ci    # ~3 min
  python -m attend_jax.main --config=configs/demo.py:smoke --workdir=/tmp/smoke   # seconds

The first run writes synthetic MG DICOMs (300 studies, cancer vs normal) and prepares them into
data.dir with the same reader, source and pipeline as real data, then trains. The RoIs come
from the synthetic source's stand-in detector (``simulate_detector``: the lesions, jittered,
plus false positives, 6 boxes on every image) until the real detector lands.

Two choices make a from-scratch ViT learn in CPU minutes, and both are visible here:
- lesions twice as conspicuous as the generator's default (``conspicuity=2``);
- RoIs at 56 px (4 x 4 patches) and the classification loss alone. With the reference's
  repulsive term or our contrastive term on, the same run learned more slowly in our trials
  (see the README); they are meant for pretrained backbones.
"""

from configs import common


def get_config(arg: str = ""):
  if arg not in ("", "ci", "smoke"):
    raise ValueError(f"configs/demo.py takes '', 'ci' or 'smoke', got {arg!r}")
  c = common.base()
  c.data.dir = {"": "workdirs/demo_data", "ci": "workdirs/demo_ci_data",
                "smoke": "workdirs/smoke_data"}[arg]
  c.data.name = "synthetic_384"
  c.data.image_size = 384
  c.data.synthetic.num_studies = {"": 300, "ci": 200, "smoke": 8}[arg]
  c.data.synthetic.min_size, c.data.synthetic.max_size = 400, 500
  c.data.synthetic.benign_fraction = 0.0  # Cancer vs normal; benign masses make it much harder.
  c.data.synthetic.conspicuity = 2.0
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.data.worker_count = 0
  c.proposals.source = "files"
  c.proposals.topk = 5
  c.model.variant = "vits14"
  c.model.vit_overrides.update({"width": 64, "depth": 2, "num_heads": 4, "pretrained_grid": 4})
  c.model.roi_size = 56
  c.model.freeze_blocks = -1  # Trained from scratch: nothing to keep.
  c.model.dropout = 0.1
  c.loss.pos_weight = 1.0
  c.loss.repulsive_weight = 0.0
  c.loss.contrastive_weight = 0.0
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.optim.clip_norm = 1.0
  c.train.steps = {"": 2000, "ci": 1500, "smoke": 10}[arg]
  c.train.log_every = 5 if arg == "smoke" else 100
  c.train.eval_every = 5 if arg == "smoke" else 250
  c.train.checkpoint_every = 5 if arg == "smoke" else 500
  c.train.patience = 100
  return c
