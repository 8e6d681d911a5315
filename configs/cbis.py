r"""CBIS-DDSM: malignant vs benign/normal from the TCIA release, boxes from the ROI masks.

  python tools/prepare_data.py --dataset cbis_ddsm --root /data/CBIS-DDSM --out data/cbis \
      --long_side 2048
  python tools/convert_dinov2.py --variant vitb14 --out weights/dinov2_vitb14
  python -m attend_jax.main --config=configs/cbis.py --workdir=workdirs/cbis

An image is positive when any of its abnormalities is MALIGNANT. CBIS-DDSM's own train/test
split is kept; validation is split off the training patients. The RoIs are the breast and its
2 x 2 tiles; ``:detector`` takes the breast and the top 4 boxes of the detector trained with
configs/detector_cbis.py instead (the two-stage recipe, see docs/detector.md):

  python -m attend_jax.main --config=configs/detector_cbis.py --workdir=workdirs/detector_cbis
  python -m attend_jax.main --config=configs/cbis.py:detector --workdir=workdirs/cbis_det

``:proposals`` is the same recipe with the detector's boxes computed once, written into a copy
of the records, instead of at every step (the step then runs no detector):

  python tools/export_proposals.py --detector workdirs/detector_cbis --records
  python -m attend_jax.main --config=configs/cbis.py:proposals --workdir=workdirs/cbis_props

``:smoke`` runs a tiny ViT for a few steps on any prepared folder:

  python -m attend_jax.main --config=configs/cbis.py:smoke --workdir=/tmp/cbis \
      --config.data.dir=data/cbis

``:tiny`` shrinks only sizes, keeping the pretrained backbone (one of its size:
weights/dinov2_vitb14_tiny), bf16, frozen blocks, layer decay, losses and RoIs; it reads the
dataset prepared with --long_side 256 (configs/common.py ``tiny``; the CI tier, tests/real_path,
runs it on tools/make_synthetic.py --layout cbis_ddsm):

  python -m attend_jax.main --config=configs/cbis.py:tiny --workdir=/tmp/cbis_tiny \
      --config.data.dir=data/cbis_tiny
"""

from configs import common


def get_config(arg: str = ""):
  c = common.base()
  common.finetune(c, "cbis_ddsm", batch_size=16)
  c.loss.pos_weight = 1.5  # About 40 % of CBIS-DDSM images hold a malignant finding.
  c.optim.warmup_steps = 300
  c.train.steps = 3_000  # About 20 epochs of 2,400 training images at batch 16.
  c.train.eval_every = 150
  c.train.checkpoint_every = 150
  parts = common.variants(arg, "cbis", ("smoke", "tiny", "detector", "proposals"))
  if "detector" in parts:
    common.two_stage(c, "workdirs/detector_cbis")
  if "smoke" in parts:
    common.smoke(c)
  if "tiny" in parts:
    common.tiny(c)
  if "proposals" in parts:  # Last: the records' name follows the size variants'.
    common.precomputed_proposals(c)
  return c
