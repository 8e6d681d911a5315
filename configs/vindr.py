r"""VinDr-Mammo with what we add: contrastive term, bf16, cosine schedule, larger batch.

  python tools/prepare_data.py --dataset vindr --root /data/vindr-mammo --out data/vindr \
      --long_side 2048
  python tools/convert_dinov2.py --variant vitb14 --out weights/dinov2_vitb14
  python -m attend_jax.main --config=configs/vindr.py --workdir=workdirs/vindr

Cancer = breast BI-RADS 4 or 5, as the paper; the official test split, validation split off
the training studies. Until a detector has written proposals (issue P4), the RoIs are the
breast and its 2 x 2 tiles. ``:smoke`` runs a tiny ViT for a few steps on any prepared folder:

  python -m attend_jax.main --config=configs/vindr.py:smoke --workdir=/tmp/vindr \
      --config.data.dir=data/vindr
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base()
  c.data.dir = "data/vindr"
  c.data.name = "vindr_2048"
  c.data.image_size = 2048
  c.data.batch_size = 32
  c.data.eval_batch_size = 32
  c.data.worker_count = 8
  c.proposals.source = "grid"
  c.proposals.topk = 5
  c.model.variant = "vitb14"
  c.model.pretrained = "weights/dinov2_vitb14"
  c.model.dtype = "bfloat16"
  c.model.freeze_blocks = 3
  c.loss.pos_weight = 10.0  # About 1 cancer in 20 images, as in the paper's split.
  c.loss.contrastive_weight = 0.1
  c.optim.lr = 2e-5
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 500
  c.optim.clip_norm = 1.0
  c.optim.layer_decay = 0.8
  c.train.steps = 8_000  # 20 epochs of 12,800 images at batch 32.
  c.train.eval_every = 400
  c.train.checkpoint_every = 400
  c.train.patience = 5
  if arg == "smoke":
    common.smoke(c)
  return c
