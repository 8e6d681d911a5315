r"""The RoI detector on VinDr-Mammo: lesion boxes of the masses and calcifications in
finding_annotations.csv.

  python tools/prepare_data.py --dataset vindr --root /data/vindr-mammo --out data/vindr \
      --long_side 2048
  python tools/convert_dinov2.py --variant vitb14 --out weights/dinov2_vitb14
  python -m attend_jax.main --config=configs/detector_vindr.py --workdir=workdirs/detector_vindr

Then the classifier on its boxes (the two-stage recipe; see docs/detector.md):

  python -m attend_jax.main --config=configs/vindr.py:detector --workdir=workdirs/vindr_det

The same prepared data as configs/vindr.py. Most VinDr images hold no boxed finding; they stay
in training as negatives, which is what keeps false positives per image down. Evaluation
(recall in the top k, FROC, mAP@0.5) goes to WORKDIR/eval/metrics.json and eval/froc.png.
``:smoke`` runs a tiny ViT for a few steps:

  python -m attend_jax.main --config=configs/detector_vindr.py:smoke --workdir=/tmp/det_vindr \
      --config.data.dir=data/vindr

``:tiny`` shrinks only sizes, keeping the pretrained backbone (one of its size:
weights/dinov2_vitb14_tiny), bf16, frozen blocks, layer decay, losses and RoIs; it reads the
dataset prepared with --long_side 256 (configs/common.py ``tiny``; the CI tier, tests/real_path,
runs it on tools/make_synthetic.py --layout vindr):

  python -m attend_jax.main --config=configs/detector_vindr.py:tiny --workdir=/tmp/detector_vindr_tiny \
      --config.data.dir=data/vindr_tiny
"""

from configs import common


def get_config(arg: str = ""):
  parts = common.variants(arg, "detector_vindr", ("smoke", "tiny"))
  c = common.base()
  common.detector(c, "vindr", batch_size=32)
  c.optim.warmup_steps = 500
  c.train.steps = 8_000  # 20 epochs of 12,800 images at batch 32.
  c.train.eval_every = 400
  c.train.checkpoint_every = 400
  if "smoke" in parts:
    common.smoke_detector(c)
  if "tiny" in parts:
    common.tiny(c)
  return c
