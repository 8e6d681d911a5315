"""Each shipped config on a tiny fake dataset in its real layout, through the real CLIs.

The data go through ``tools/prepare_data.py`` and training through ``python -m
attend_jax.main``, exactly as the configs' docstrings tell users, with the ``:smoke`` variant.
"""

import importlib
import json
import pathlib

import numpy as np
import pytest

from attend_jax.data import proposals
from dicom_fixtures import phantom, write_mg
import helpers

REPO = helpers.REPO
SHARED = helpers.SHARED


def _run(*args):
  proc = helpers.run(*args)  # One CPU device, as a user has.
  return proc.returncode, proc.stdout + proc.stderr


def _train(config, workdir, *overrides):
  code, out = _run("-m", "attend_jax.main", f"--config={config}", f"--workdir={workdir}",
                   *overrides)
  assert code == 0, out[-4000:]
  metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
  assert metrics["num_examples"] > 0 and (workdir / "eval" / "roc.png").exists()
  return metrics, out


@pytest.mark.parametrize("name", ["demo", "cbis", "vindr", "vindr_reference", "detector_synthetic",
                                  "detector_cbis", "detector_vindr"])
def test_every_config_documents_its_command_and_has_a_smoke_variant(name):
  module = importlib.import_module(f"configs.{name}")
  assert f"--config=configs/{name}.py" in module.__doc__
  full, smoke = module.get_config(), module.get_config("smoke")
  assert smoke.train.steps < full.train.steps
  assert smoke.data.name == full.data.name  # The smoke run reads the same prepared data.


def test_missing_dataset_is_one_clear_message(tmp_path):
  code, out = _run("-m", "attend_jax.main", "--config=configs/cbis.py:smoke",
                   f"--workdir={tmp_path / 'w'}", f"--config.data.dir={tmp_path / 'nothing'}")
  assert code == 1
  assert "Traceback" not in out
  assert "No prepared dataset 'cbis_ddsm_2048'" in out
  assert "python tools/prepare_data.py --dataset cbis_ddsm" in out
  assert "mass_case_description_{train,test}_set.csv" in out  # The layout ROOT must have.


def _fake_cbis(root: pathlib.Path, patients: int = 32) -> None:
  header = ("patient_id,breast_density,left or right breast,image view,abnormality id,"
            "abnormality type,mass shape,mass margins,assessment,pathology,subtlety,"
            "image file path,cropped image file path,ROI mask file path\n")
  rows = {"train": [], "test": []}
  for p in range(patients):
    split = "test" if p % 4 == 0 else "train"
    malignant = p % 3 == 0
    for view in ("CC", "MLO"):
      prefix = f"Mass-{'Test' if split == 'test' else 'Training'}_P_{p:05d}_LEFT_{view}"
      img = phantom(160, 120, seed=p)
      mask = np.zeros_like(img)
      y, x = 50 + 3 * (p % 5), 20 + 2 * (p % 7)
      if malignant:
        img[y:y + 16, x:x + 16] = 7000
      mask[y:y + 16, x:x + 16] = 255
      image_dir = root / "CBIS-DDSM" / prefix / "07-20-2016-DDSM-1" / "1.000000-full mammogram"
      mask_dir = root / "CBIS-DDSM" / f"{prefix}_1" / "07-21-2016-DDSM-2" / "1.000000-ROI mask"
      image_dir.mkdir(parents=True)
      mask_dir.mkdir(parents=True)
      write_mg(img, image_dir, "1-1.dcm", bits=16)
      write_mg(mask, mask_dir, "1-1.dcm", bits=8)
      pathology = "MALIGNANT" if malignant else "BENIGN"
      rows[split].append(f"P_{p:05d},2,LEFT,{view},1,mass,OVAL,SPICULATED,4,{pathology},3,"
                         f"{prefix}/1.2/1.3/000000.dcm,{prefix}_1/1.2/1.4/000000.dcm,"
                         f"{prefix}_1/1.2/1.4/000001.dcm\n")
  for split, lines in rows.items():
    (root / f"mass_case_description_{split}_set.csv").write_text(header + "".join(lines))


@pytest.mark.slow
def test_cbis_config_runs_end_to_end_on_the_real_layout(tmp_path):
  _fake_cbis(tmp_path / "CBIS")
  code, out = _run("tools/prepare_data.py", "--dataset=cbis_ddsm", f"--root={tmp_path / 'CBIS'}",
                   f"--out={tmp_path / 'data'}", "--long_side=2048", "--workers=2")
  assert code == 0, out[-3000:]
  assert "train:" in out and "test:" in out
  metrics, _ = _train("configs/cbis.py:smoke", tmp_path / "work",
                      f"--config.data.dir={tmp_path / 'data'}")
  assert metrics["split"] == "test" and metrics["num_examples"] == 16  # 8 test patients x 2 views.
  assert 0 < metrics["num_positive"] < 16 and metrics["auc"] is not None

  # The two-stage recipe on the same prepared data: the detector learns from the ROI masks' boxes,
  # then the classifier takes its boxes on the fly.
  code, out = _run("-m", "attend_jax.main", "--config=configs/detector_cbis.py:smoke",
                   f"--workdir={tmp_path / 'det'}", f"--config.data.dir={tmp_path / 'data'}")
  assert code == 0, out[-4000:]
  det = json.loads((tmp_path / "det" / "eval" / "metrics.json").read_text())
  assert det["split"] == "test" and det["num_images"] == 16
  assert det["num_lesions"] == 16  # One mask per image.
  assert det["recall@10_iou0.3"] is not None and 0 <= det["froc_sens@2fp"] <= 1
  assert (tmp_path / "det" / "eval" / "froc.png").exists()
  metrics, out = _train("configs/cbis.py:smoke", tmp_path / "cls_det",
                        f"--config.data.dir={tmp_path / 'data'}",
                        "--config.proposals.source=detector",
                        f"--config.proposals.detector={tmp_path / 'det'}")
  assert metrics["num_examples"] == 16
  assert "Proposals: the detector of" in out
  # The run keeps its own copy of the detector, so prediction needs no other folder.
  assert (tmp_path / "cls_det" / "detector" / "config.json").exists()
  import shutil

  shutil.rmtree(tmp_path / "det")
  dicoms = sorted((tmp_path / "CBIS" / "CBIS-DDSM").glob("*/*/1.000000-full mammogram/1-1.dcm"))
  code, out = _run("-m", "attend_jax.predict", f"--workdir={tmp_path / 'cls_det'}",
                   f"--out={tmp_path / 'pred'}", "--workers=1", *map(str, dicoms[:3]))
  assert code == 0, out[-3000:]
  images = json.loads((tmp_path / "pred" / "predictions.json").read_text())["images"]
  assert len(images) == 3
  for image in images:
    assert len(image["rois"]) == 5 and image["rois"][0]["anchor"]
    # The four RoIs after the anchor are the detector's boxes, with its scores.
    assert all(r["detector_score"] is not None for r in image["rois"][1:]), image["rois"]


def _fake_reference(root: pathlib.Path, count: int = 16) -> None:
  """Reference CSVs for images that have real proposal files, with DICOMs to match."""
  files = sorted((SHARED / "proposals").glob("*/*_preds.txt"))[:count]
  lines = {"train": [], "val": [], "test": []}
  for i, path in enumerate(files):
    study, image_id = path.parent.name, path.name[: -len("_preds.txt")]
    raw = proposals.read_proposals(path)
    # The proposals are in breast-crop pixels: make a breast that fills a frame that holds them.
    h = int(np.ceil((raw[:, 1] + raw[:, 3] / 2).max())) + 30
    w = int(np.ceil((raw[:, 0] + raw[:, 2] / 2).max())) + 30
    img = np.zeros((h, w))
    img[15:h - 15, 15:w - 15] = 2000 + 500 * (i % 3)
    (root / "images" / study).mkdir(parents=True, exist_ok=True)
    write_mg(img, root / "images" / study, f"{image_id}.dicom", bits=12)
    split = ("train", "train", "val", "test")[i % 4]
    lines[split].append(f"{study}/{image_id}.dicom,L,{i // 4 % 2},{('CC', 'MLO')[i // 2 % 2]}\n")
  (root / "csv").mkdir()
  for split, rows in lines.items():
    (root / "csv" / f"{split}.csv").write_text("im_path,laterality,cancer,view\n" + "".join(rows))


@pytest.mark.slow
@helpers.needs_shared
def test_vindr_reference_config_runs_end_to_end_with_real_proposals(tmp_path):
  _fake_reference(tmp_path / "ref")
  code, out = _run("tools/prepare_data.py", "--dataset=csv", f"--root={tmp_path / 'ref' / 'images'}",
                   f"--csv_dir={tmp_path / 'ref' / 'csv'}", f"--proposals={SHARED / 'proposals'}",
                   "--keep_orientation", "--long_side=1024", f"--out={tmp_path / 'data'}",
                   "--workers=2")
  assert code == 0, out[-3000:]
  # 1024 instead of the config's 4096 keeps the test small; the proposals scale with it.
  metrics, _ = _train("configs/vindr_reference.py:smoke", tmp_path / "work",
                      f"--config.data.dir={tmp_path / 'data'}", "--config.data.name=csv_1024",
                      "--config.data.image_size=1024")
  assert metrics["num_examples"] == 4 and metrics["num_positive"] == 2
