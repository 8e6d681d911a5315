r"""The RoI detector on CBIS-DDSM: lesion boxes from the ROI masks (masses and calcifications).

  python tools/prepare_data.py --dataset cbis_ddsm --root /data/CBIS-DDSM --out data/cbis \
      --long_side 2048
  python tools/convert_dinov2.py --variant vitb14 --out weights/dinov2_vitb14
  python -m attend_jax.main --config=configs/detector_cbis.py --workdir=workdirs/detector_cbis

Then the classifier on its boxes (the two-stage recipe; see docs/detector.md):

  python -m attend_jax.main --config=configs/cbis.py:detector --workdir=workdirs/cbis_det

The same prepared data as configs/cbis.py. Every CBIS-DDSM image holds at least one
abnormality, so every image teaches the detector. Evaluation (recall in the top k, FROC, mAP@0.5)
goes to WORKDIR/eval/metrics.json and eval/froc.png. ``:smoke`` runs a tiny ViT for a few steps:

  python -m attend_jax.main --config=configs/detector_cbis.py:smoke --workdir=/tmp/det_cbis \
      --config.data.dir=data/cbis

``:tiny`` shrinks only sizes, keeping the pretrained backbone (one of its size:
weights/dinov2_vitb14_tiny), bf16, frozen blocks, layer decay, losses and RoIs; it reads the
dataset prepared with --long_side 256 (configs/common.py ``tiny``; the CI tier, tests/real_path,
runs it on tools/make_synthetic.py --layout cbis_ddsm):

  python -m attend_jax.main --config=configs/detector_cbis.py:tiny --workdir=/tmp/detector_cbis_tiny \
      --config.data.dir=data/cbis_tiny
"""

from configs import common


def get_config(arg: str = ""):
  parts = common.variants(arg, "detector_cbis", ("smoke", "tiny"))
  c = common.base()
  common.detector(c, "cbis_ddsm", batch_size=16)
  c.optim.warmup_steps = 300
  c.train.steps = 3_000  # About 20 epochs of 2,400 training images at batch 16.
  c.train.eval_every = 150
  c.train.checkpoint_every = 150
  if "smoke" in parts:
    common.smoke_detector(c)
  if "tiny" in parts:
    common.tiny(c)
  return c
