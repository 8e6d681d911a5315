"""Reference mode gives the authors' numbers: their crop, their pixels, no flip, no resize.

DICOMs are made so that the authors' breast crop of each holds the real Grounding-DINO proposal
files beside the checkout (the near side clipped on one, faint tissue below our robust threshold
on both, a left and a right breast); they go through the documented `prepare --dataset csv`
and predict with a converted random-weight checkpoint of the authors' architecture. The RoIs
predict reports must be the proposal boxes mapped through the authors' crop, to the pixel, and
the logits those of the PyTorch model fed the authors' own crops.
"""

import json
import pathlib

import cv2
import numpy as np
import pytest
import torch

from attend_jax import box_ops, inference, run
from attend_jax.data import availability, breast, dicom, prepare, proposals, synthetic
from attend_jax.models import roi
from attend_jax.train import trainer
from configs import demo
from dicom_fixtures import write_mg
from torch_reference import ReferenceAttend, randomize_
from torch_refs import hf_dinov2, reference_crop
import helpers

WIDTH, DEPTH, HEADS, SIZE = 64, 2, 4, 56
K = 5  # The reference's top-k.


def _authors_crop(u16: np.ndarray) -> tuple[int, int, np.ndarray]:
  """The authors' arithmetic, line by line: 8 bits, > 1, OpenCV's largest external contour, its
  bounding rect grown by 15 px (clipped at 0 on the near side, the size still grown by 30)."""
  img8 = (u16.astype(np.uint32) * 255 // 65535).astype(np.uint8)
  contours, _ = cv2.findContours((img8 > 1).astype(np.uint8), cv2.RETR_EXTERNAL,
                                 cv2.CHAIN_APPROX_SIMPLE)
  x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
  x, y = max(0, x - 15), max(0, y - 15)
  w, h = w + 30, h + 30
  return x, y, u16[y:y + h, x:x + w]


def _breast_for(reach_x: float, reach_y: float, right: bool) -> np.ndarray:
  """An image whose authors' crop holds boxes reaching (reach_x, reach_y): tissue near the left
  edge (so the crop's near side is clipped) or mirrored for a right breast, with a faint band
  (8-bit 3..5) along its far side that the reference keeps and a > 10 threshold drops."""
  wc, hc = int(np.ceil(reach_x)) + 10, int(np.ceil(reach_y)) + 10
  rx0, ry0 = 6, 40
  rx1, ry1 = wc + rx0 - 30, ry0 + hc - 30
  img = np.zeros((ry1 + 60, rx1 + 50))
  rng = np.random.default_rng(int(reach_x))
  img[ry0:ry1, rx0:rx1 - 25] = 30000 + rng.integers(0, 30000, (ry1 - ry0, rx1 - 25 - rx0))
  img[ry0:ry1, rx1 - 25:rx1] = 1000  # Faint: 1000 / 60000 * 255 is about 4 in 8 bits.
  return img[:, ::-1] if right else img


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("reference")
  files = sorted((helpers.SHARED / "proposals").glob("*/*_preds.txt"))[:2]
  images, rows = [], []
  for i, (path, side) in enumerate(zip(files, "LR")):
    study, image_id = path.parent.name, path.name[: -len("_preds.txt")]
    raw = proposals.read_proposals(path)
    reach = box_ops.to_xyxy(raw)[:, 2:].max(axis=0)
    (root / "images" / study).mkdir(parents=True, exist_ok=True)
    dcm = write_mg(_breast_for(*reach, right=side == "R"), root / "images" / study,
                   f"{image_id}.dicom", bits=16, ImageLaterality=side)
    images.append({"path": dcm, "proposals": path, "side": side})
    rows.append(f"{study}/{image_id}.dicom,{side},{i % 2},CC\n")
  (root / "csv").mkdir()
  for split in ("train", "val", "test"):
    (root / "csv" / f"{split}.csv").write_text("im_path,laterality,cancer,view\n" + "".join(rows))
  # The documented command (configs/vindr_reference.py).
  proc = helpers.run("tools/prepare_data.py", "--dataset=csv", f"--root={root / 'images'}",
                     f"--csv_dir={root / 'csv'}", f"--proposals={helpers.SHARED / 'proposals'}",
                     "--crop=reference", "--keep_orientation", "--long_side=0",
                     f"--out={root / 'data'}", "--workers=1")
  assert proc.returncode == 0, proc.stderr[-3000:]

  torch.manual_seed(0)
  vision = hf_dinov2(width=WIDTH, depth=DEPTH, heads=HEADS, image_size=SIZE, seed=0)
  ref = randomize_(ReferenceAttend(vision, WIDTH), 0).eval()
  torch.save(ref.state_dict(), root / "model_epoch_3.pt")
  side = max(max(dicom.read_dicom(im["path"]).pixels.shape) for im in images)
  size = -(-side // 64) * 64
  proc = helpers.run(
      "tools/convert_reference.py", f"--checkpoint={root / 'model_epoch_3.pt'}",
      f"--out={root / 'weights'}", f"--config.model.roi_size={SIZE}",
      f"--config.model.vit_overrides.width={WIDTH}", f"--config.model.vit_overrides.depth={DEPTH}",
      f"--config.model.vit_overrides.num_heads={HEADS}",
      "--config.model.vit_overrides.pretrained_grid=4", f"--config.data.image_size={size}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = helpers.run("-m", "attend_jax.predict", f"--checkpoint={root / 'weights'}",
                     f"--proposals={helpers.SHARED / 'proposals'}", root / "images",
                     f"--out={root / 'pred'}", "--batch_size=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((root / "pred" / "predictions.json").read_text())
  return {"root": root, "images": images, "ref": ref,
          "predictions": {p["path"]: p for p in out["images"]}}


@pytest.mark.slow
@helpers.needs_shared
def test_the_records_are_the_authors_crops_at_full_size(reference_run):
  manifest = json.loads((reference_run["root"] / "data" / "manifest.json").read_text())
  assert manifest["builder"] == "mammograms/csv_full"
  assert manifest["options"]["crop"] == "reference" and manifest["options"]["long_side"] == 0
  for im in reference_run["images"]:
    pixels = dicom.read_dicom(im["path"]).pixels
    x, y, crop = _authors_crop(pixels)
    got = breast.find_breast(pixels, rule="reference")
    assert (got.x0, got.y0, got.width, got.height) == (x, y, crop.shape[1], crop.shape[0])
    # The faint band is part of the authors' crop, and not of a > 10 threshold's.
    robust = breast.find_breast(pixels)
    assert (robust.x0, robust.x1) != (got.x0, got.x1)
    if im["side"] == "L":
      assert x == 0  # The near side was clipped: the crop still grew by 30.


@pytest.mark.slow
@helpers.needs_shared
def test_predict_reports_the_proposals_through_the_authors_crop_to_the_pixel(reference_run):
  for im in reference_run["images"]:
    pred = reference_run["predictions"][str(im["path"])]
    x, y, _ = _authors_crop(dicom.read_dicom(im["path"]).pixels)
    kept, is_real = proposals.select_proposals(proposals.read_proposals(im["proposals"]), K)
    assert is_real.all()
    want = box_ops.to_xyxy(kept) + [x, y, x, y]
    got = np.array([r["box_xyxy"] for r in pred["rois"]])
    np.testing.assert_allclose(got, want, atol=0.051)  # predict writes 0.1 px.
    assert [r["detector_score"] for r in pred["rois"]] == pytest.approx(kept[:, 4].tolist())
    assert not any(r["anchor"] for r in pred["rois"])  # The reference's box 0 is its top box.


@pytest.mark.slow
@helpers.needs_shared
def test_logits_equal_the_pytorch_model_on_the_authors_crops(reference_run):
  mean, std = np.array(roi.IMAGENET_MEAN), np.array(roi.IMAGENET_STD)
  for im in reference_run["images"]:
    _, _, crop = _authors_crop(dicom.read_dicom(im["path"]).pixels)
    kept, _ = proposals.select_proposals(proposals.read_proposals(im["proposals"]), K)
    crops = np.stack([reference_crop(crop, b, SIZE) for b in kept])
    crops = ((crops[..., None] - mean) / std).astype(np.float32)
    h, w = crop.shape
    positions = np.stack([[cx / w, cy / h, max(bw, bh) / w, max(bw, bh) / h]
                          for cx, cy, bw, bh, _ in kept]).astype(np.float32)
    with torch.no_grad():
      logit, _ = reference_run["ref"](torch.from_numpy(crops[None]).permute(0, 1, 4, 2, 3),
                                      torch.from_numpy(positions[None]))
    p = reference_run["predictions"][str(im["path"])]["probability"]
    assert np.log(p / (1 - p)) == pytest.approx(float(logit[0]), abs=1e-4), im["side"]


def _tiny_run(root: pathlib.Path, keep_orientation: bool) -> pathlib.Path:
  data = root / ("kept" if keep_orientation else "flipped")
  prepare.prepare("synthetic", root / "dicom", data,
                  prepare.PrepareOptions(long_side=96, normalize_orientation=not keep_orientation),
                  workers=1)
  c = helpers.tiny_config(data)
  c.data.prepare.normalize_orientation = not keep_orientation
  c.train.steps, c.train.eval_every, c.train.checkpoint_every = 2, 2, 2
  trainer.train_and_evaluate(c, str(data / "work"))
  return data / "work"


@pytest.mark.slow
def test_predict_follows_the_orientation_the_run_was_prepared_with(tmp_path):
  synthetic.generate(tmp_path / "dicom", 4, seed=0, size_range=(200, 260), jpeg2000_fraction=0)
  # Images whose chest wall is on the right: the default preparation flips them.
  right = [p for p in sorted((tmp_path / "dicom" / "images").rglob("*.dcm"))
           if breast.faces_left(dicom.read_dicom(p).pixels)][:2]
  assert right
  for keep in (True, False):
    work = _tiny_run(tmp_path, keep)
    saved = json.loads((work / run.CONFIG).read_text())["data"]["prepared_with"]
    assert saved["normalize_orientation"] is (not keep)
    loaded = run.load(work)
    records = [r for _, r, _ in inference.preprocess(right, loaded.config)]
    assert [bool(r["flipped"]) for r in records] == [not keep] * len(right)
  # A run whose dataset was made otherwise than its config asks refuses at start.
  c = demo.get_config("smoke")
  c.data.dir, c.data.name, c.data.image_size = str(tmp_path / "kept"), "synthetic_96", 96
  c.data.synthetic.num_studies = 0
  with pytest.raises(availability.PrepareMismatchError, match="normalize_orientation=False"):
    trainer.train_and_evaluate(c, str(tmp_path / "mismatch"))
