r"""VinDr-Mammo with what we add: contrastive term, bf16, cosine schedule, larger batch.

  python tools/prepare_data.py --dataset vindr --root /data/vindr-mammo --out data/vindr \
      --long_side 2048
  python tools/convert_dinov2.py --variant vitb14 --out weights/dinov2_vitb14
  python -m attend_jax.main --config=configs/vindr.py --workdir=workdirs/vindr

Cancer = breast BI-RADS 4 or 5, as the paper; the official test split, validation split off
the training studies. The RoIs are the breast and its 2 x 2 tiles; ``:detector`` takes the
breast and the top 4 boxes of the detector trained with configs/detector_vindr.py instead (the
two-stage recipe, see docs/detector.md):

  python -m attend_jax.main --config=configs/detector_vindr.py --workdir=workdirs/detector_vindr
  python -m attend_jax.main --config=configs/vindr.py:detector --workdir=workdirs/vindr_det

``:proposals`` is the same recipe with the detector's boxes computed once, written into a copy
of the records, instead of at every step (the step then runs no detector):

  python tools/export_proposals.py --detector workdirs/detector_vindr --records
  python -m attend_jax.main --config=configs/vindr.py:proposals --workdir=workdirs/vindr_props

``:smoke`` runs a tiny ViT for a few steps on any prepared folder:

  python -m attend_jax.main --config=configs/vindr.py:smoke --workdir=/tmp/vindr \
      --config.data.dir=data/vindr

``:tiny`` shrinks only sizes, keeping the pretrained backbone (one of its size:
weights/dinov2_vitb14_tiny), bf16, frozen blocks, layer decay, losses and RoIs; it reads the
dataset prepared with --long_side 256 (configs/common.py ``tiny``; the CI tier, tests/real_path,
runs it on tools/make_synthetic.py --layout vindr):

  python -m attend_jax.main --config=configs/vindr.py:tiny --workdir=/tmp/vindr_tiny \
      --config.data.dir=data/vindr_tiny
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
  parts = common.variants(arg, "vindr", ("smoke", "tiny", "detector", "proposals"))
  if "detector" in parts:
    common.two_stage(c, "workdirs/detector_vindr")
  if "smoke" in parts:
    common.smoke(c)
  if "tiny" in parts:
    common.tiny(c)
  if "proposals" in parts:  # Last: the records' name follows the size variants'.
    common.precomputed_proposals(c)
  return c
