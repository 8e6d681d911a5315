r"""The paper's setting: VinDr-Mammo, the reference's CSVs and Grounding-DINO proposals.

Prepare once with the reference's own preprocessing (its breast crop, whose pixels the
proposal files use; full resolution, no resizing; the original orientation), then train:

  python tools/prepare_data.py --dataset csv --root /data/vindr-mammo/images \
      --csv_dir /data/reference_csvs --proposals /data/focal_rois \
      --crop=reference --keep_orientation --long_side 0 --out data/vindr_reference
  python tools/convert_dinov2.py --variant vitb14 --out weights/dinov2_vitb14
  python -m attend_jax.main --config=configs/vindr_reference.py --workdir=workdirs/vindr_ref

``:smoke`` is a tiny ViT on a few steps, for checking a prepared folder end to end on a CPU:

  python -m attend_jax.main --config=configs/vindr_reference.py:smoke --workdir=/tmp/ref \
      --config.data.dir=data/vindr_reference

Every hyper-parameter is the released code's (docs/method.md): ViT-B/14 at 448, patch embedding
and blocks 0-2 frozen, the top 5 proposals after NMS at IoU 0.5 with no forced anchor, anchor
pooling, BCE with pos_weight 10 plus 0.3 x repulsive, AdamW at a constant 1e-6, batch 4,
dropout 0.25, early stopping on validation AUC with patience 5, evaluated once per epoch of
12,800 training images. Nothing beyond the reference is switched on: no contrastive term,
float32.

``:tiny`` keeps all of that and shrinks only sizes (a 4-block backbone converted like the real
one, 28 px RoIs, 6 steps; configs/common.py ``tiny``), for a CPU run of the whole path on the
layout's synthetic stand-in (the CI tier, tests/real_path):

  python tools/make_synthetic.py --layout csv --out /tmp/ref_layout
  python -m attend_jax.main --config=configs/vindr_reference.py:tiny --workdir=/tmp/ref_tiny \
      --config.data.dir=... --config.model.pretrained=weights/dinov2_vitb14_tiny
"""

from configs import common

EPOCH_STEPS = 12_800 // 4


def get_config(arg: str = ""):
  c = common.base()
  c.data.dir = "data/vindr_reference"
  c.data.name = "csv_full"  # = prepare's --dataset csv --long_side 0.
  # Breast crops are stored at full size and padded to this square; one larger is an error.
  c.data.image_size = 4096
  c.data.prepare.update({"crop": "reference", "normalize_orientation": False, "long_side": 0})
  c.data.batch_size = 4
  c.data.eval_batch_size = 8
  c.proposals.source = "files"
  c.proposals.topk = 5
  c.proposals.anchor = False  # The reference's box 0 is its top proposal, usually the breast.
  c.model.variant = "vitb14"
  c.model.pretrained = "weights/dinov2_vitb14"
  c.model.roi_size = 448
  c.model.pool = "anchor"
  c.model.freeze_blocks = 3
  c.model.dropout = 0.25
  c.loss.pos_weight = 10.0
  c.loss.repulsive_weight = 0.3
  c.loss.contrastive_weight = 0.0
  c.optim.lr = 1e-6
  c.optim.schedule = "constant"
  c.optim.weight_decay = 0.01  # torch AdamW's default.
  c.train.steps = 100 * EPOCH_STEPS
  c.train.eval_every = EPOCH_STEPS
  c.train.checkpoint_every = EPOCH_STEPS // 4
  c.train.patience = 5
  parts = common.variants(arg, "vindr_reference", ("smoke", "tiny"))
  if "smoke" in parts:
    common.smoke(c)
  if "tiny" in parts:
    common.tiny(c, image_size=512)  # Full-size records, of smaller images.
  return c
