"""Each shipped config documents its command and has its small variants; a missing dataset is one
line; the paper's config on the reference's real proposal files.

The real-path tier (tests/real_path) trains every shipped config's ``:tiny`` variant from its
dataset's layout with a converted backbone.
"""

import importlib
import json
import pathlib

import numpy as np
import pytest

from attend_jax.data import proposals
from dicom_fixtures import write_mg
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


CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                 if p.stem not in ("__init__", "common"))
# What a small variant may change: sizes, and the folders named after them.
SIZES = {"data.name", "data.dir", "data.image_size", "data.batch_size", "data.eval_batch_size",
         "data.worker_count", "data.synthetic.num_studies", "data.synthetic.heldout_studies",
         "model.vit_overrides.width", "model.vit_overrides.depth",
         "model.vit_overrides.num_heads", "model.vit_overrides.pretrained_grid",
         "model.pretrained", "proposals.detector", "model.roi_size", "optim.warmup_steps",
         "train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
         "detector.input_size", "detector.fpn_dim", "detector.pre_nms"}


def _flat(c, prefix=""):
  out = {}
  for k, v in c.items():
    out.update(_flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k: v})
  return out


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_has_a_small_variant_that_changes_sizes_only(name):
  """``:tiny`` for a config with a pretrained backbone keeps it (a converter output of the tiny
  size), its dtype, frozen blocks, layer decay, losses, data and proposals; a config that trains
  from scratch has no backbone to keep, and its ``:smoke`` is that variant."""
  from configs import common

  module = importlib.import_module(f"configs.{name}")
  full = module.get_config()
  small_arg = "tiny" if full.model.pretrained else "smoke"
  extras = {"cbis": ["detector"], "vindr": ["detector"], "demo": ["detector", "fine"]}
  for arg in ["", *extras.get(name, [])]:
    big = _flat(module.get_config(arg))
    small = _flat(module.get_config(",".join(filter(None, (small_arg, arg)))))
    assert big.keys() == small.keys()
    changed = {k for k in big if big[k] != small[k]}
    assert changed <= SIZES, (name, arg, changed - SIZES)
    assert small["train.steps"] < big["train.steps"]
    if full.model.pretrained:
      assert small["model.pretrained"] == common.TINY_WEIGHTS


def test_missing_dataset_is_one_clear_message(tmp_path):
  code, out = _run("-m", "attend_jax.main", "--config=configs/cbis.py:smoke",
                   f"--workdir={tmp_path / 'w'}", f"--config.data.dir={tmp_path / 'nothing'}")
  assert code == 1
  assert "Traceback" not in out
  assert "No prepared dataset 'cbis_ddsm_2048'" in out
  assert "python tools/prepare_data.py --dataset cbis_ddsm" in out
  assert "mass_case_description_{train,test}_set.csv" in out  # The layout ROOT must have.


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
