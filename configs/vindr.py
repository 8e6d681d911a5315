r"""VinDr-Mammo with what we add: contrastive term, bf16, cosine schedule, larger batch.

  python tools/prepare_data.py --dataset vindr --root /data/vindr-mammo --out data/vindr \
      --long_side 2048
  python tools/convert_dinov2.py --variant vitb14 --out weights/dinov2_vitb14
  python -m attend_jax.main --config=configs/vindr.py --workdir=workdirs/vindr

Cancer = breast BI-RADS 4 or 5, as the paper; the official test split, validation split off
the training studies. The RoIs are the breast and its 2 x 2 tiles; ``:detector`` takes the
breast and the top 4 boxes of the detector trained with configs/detector_vindr.py instead (the
two-stage recipe, see the README):

  python -m attend_jax.main --config=configs/detector_vindr.py --workdir=workdirs/detector_vindr
  python -m attend_jax.main --config=configs/vindr.py:detector --workdir=workdirs/vindr_det

``:smoke`` runs a tiny ViT for a few steps on any prepared folder:

  python -m attend_jax.main --config=configs/vindr.py:smoke --workdir=/tmp/vindr \
      --config.data.dir=data/vindr
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base()
  common.finetune(c, "vindr", batch_size=32)
  c.loss.pos_weight = 10.0  # About 1 cancer in 20 images, as in the paper's split.
  c.optim.warmup_steps = 500
  c.train.steps = 8_000  # 20 epochs of 12,800 images at batch 32.
  c.train.eval_every = 400
  c.train.checkpoint_every = 400
  if arg == "smoke":
    common.smoke(c)
  elif arg == "detector":
    common.two_stage(c, "workdirs/detector_vindr")
  elif arg:
    raise ValueError(f"configs/vindr.py takes '', 'smoke' or 'detector', got {arg!r}")
  return c
