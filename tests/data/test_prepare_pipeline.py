"""prepare_data end to end on fake datasets, and the grain pipeline over its records."""

import csv
import json
import pathlib

import numpy as np
import pytest

from attend_jax import geometry
from attend_jax.data import pipeline, prepare, records
from dicom_fixtures import MARKED, READING_ROOM, REFUSED, phantom, reading_room, write_mg
import helpers

REPO = pathlib.Path(__file__).resolve().parents[2]
OPTS = prepare.PrepareOptions(long_side=64)


def _rsna(root: pathlib.Path, patients=8):
  lines = ["site_id,patient_id,image_id,laterality,view,age,cancer"]
  for p in range(patients):
    folder = root / "train_images" / str(p)
    folder.mkdir(parents=True)
    for i, view in enumerate(("CC", "MLO")):
      img = phantom(120, 90, seed=10 * p + i)
      if p % 2:  # Chest wall on the right: the crop gets flipped.
        img = img[:, ::-1]
      write_mg(img, folder, f"{p}{i}.dcm", bits=14)
      lines.append(f"1,{p},{p}{i},L,{view},55,{int(p % 3 == 0)}")
  (root / "train_images" / "0" / "00.dcm").write_bytes(b"\0" * 200)  # A corrupt file.
  lines.append("1,9,90,L,CC,55,2")  # A label outside {0, 1}.
  (root / "train.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def rsna_prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("rsna")
  _rsna(root)
  out = tmp_path_factory.mktemp("out")
  result = prepare.prepare("rsna", root, out, OPTS, workers=2)
  return root, out, result


def test_prepare_counts_bad_files_and_manifest(rsna_prepared):
  root, out, result = rsna_prepared
  assert result.builder_name == "mammograms/rsna_64"
  assert sum(c["images"] for c in result.counts.values()) == 15
  with open(out / "bad_files.csv", newline="") as f:
    bad = {row["path"]: row["reason"] for row in csv.DictReader(f)}
  assert len(bad) == 2
  assert "not a DICOM file" in bad[str(root / "train_images" / "0" / "00.dcm")]
  assert "cancer must be 0 or 1, got '2'" in bad[str(root / "train.csv")]
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["counts"] == result.counts and manifest["bad_files"] == 2
  assert not (out / "cache").exists()


def test_records_hold_the_breast_crop(rsna_prepared):
  _, out, result = rsna_prepared
  n = 0
  for split in result.counts:
    source = records.data_source(out, "rsna_64", split)
    for i in range(len(source)):
      rec = source[i]
      image = rec["image"]
      assert image.dtype == np.uint16 and max(image.shape) == 64
      # The phantom's block touches the chest wall: after orientation it is on the left.
      assert image[:, :3].mean() > image[:, -3:].mean()
      n += 1
  assert n == 15


def test_rerun_skips_finished_work(rsna_prepared, tmp_path):
  root, out, _ = rsna_prepared
  again = prepare.prepare("rsna", root, out, OPTS, workers=2)
  assert again.seconds == 0.0  # The finished build was found; nothing was decoded.
  # An interrupted run resumes from its per-image cache.
  partial = tmp_path / "partial"
  prepare.prepare("rsna", root, partial, OPTS, workers=1, keep_cache=True)
  cached = sorted((partial / "cache").rglob("*.npz"))
  stamps = {p: p.stat().st_mtime_ns for p in cached}
  cached[0].unlink()
  import shutil
  shutil.rmtree(partial / "mammograms")
  prepare.prepare("rsna", root, partial, OPTS, workers=1, keep_cache=True)
  assert cached[0].exists()
  assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != cached[0])


def test_cbis_mask_boxes_land_on_the_lesion(tmp_path):
  img = phantom(200, 160)
  img[100:120, 30:50] = 8000  # The lesion.
  img = img[:, ::-1]  # Right breast, chest wall on the right: the crop is flipped.
  mask = np.zeros_like(img)
  mask[100:120, 160 - 50:160 - 30] = 255
  top, mask_top = "Mass-Training_P_00001_RIGHT_CC", "Mass-Training_P_00001_RIGHT_CC_1"
  image_dir = tmp_path / "CBIS-DDSM" / top / "07-20-2016-DDSM-74994" / "1.000000-full mammogram images-24515"
  mask_dir = tmp_path / "CBIS-DDSM" / mask_top / "07-21-2016-DDSM-09887" / "1.000000-ROI mask images-18744"
  image_dir.mkdir(parents=True)
  mask_dir.mkdir(parents=True)
  write_mg(img, image_dir, "1-1.dcm", bits=16)
  write_mg(mask, mask_dir, "1-1.dcm", bits=8)
  write_mg(mask[95:125, 105:135], mask_dir, "1-2.dcm", bits=8)  # The cropped lesion image.
  (tmp_path / "mass_case_description_train_set.csv").write_text(
      "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
      "mass shape,mass margins,assessment,pathology,subtlety,image file path,"
      "cropped image file path,ROI mask file path\n"
      f"P_00001,3,RIGHT,CC,1,mass,OVAL,SPICULATED,4,MALIGNANT,4,{top}/1.2/1.3/000000.dcm,"
      f"{mask_top}/1.2/1.4/000000.dcm,{mask_top}/1.2/1.4/000001.dcm\n")
  out = tmp_path / "out"
  result = prepare.prepare("cbis_ddsm", tmp_path, out, prepare.PrepareOptions(long_side=100),
                           workers=1)
  assert result.bad == []
  [split] = result.counts
  rec = records.data_source(out, "cbis_ddsm_100", split)[0]
  assert rec["label"] == 1 and bool(rec["flipped"])
  [box] = rec["lesion_boxes"]
  x0, y0, x1, y1 = np.round(box).astype(int)
  inside = rec["image"][y0:y1, x0:x1].mean()
  assert inside > 2 * rec["image"][rec["image"] > 0].mean()
  back = geometry.Placement.of(rec).to_original(box)
  np.testing.assert_allclose(back, [[110, 100, 130, 120]], atol=1.5)


def test_reference_csv_source_stores_the_nms_survivors_in_score_order_scaled(tmp_path):
  # cx cy w h score, not in score order. B overlaps A by IoU 190 * 200 / (2 * 200**2 - 190 * 200)
  # = 0.90 and E overlaps C by 45 * 50 / (2 * 50**2 - 45 * 50) = 0.82: both are dropped.
  (tmp_path / "props" / "s1").mkdir(parents=True)
  (tmp_path / "props" / "s1" / "img1_preds.txt").write_text(
      "300 400 200 200 0.9\n"    # A
      "310 400 200 200 0.8\n"    # B
      "100 100 50 50 0.7\n"      # C
      "500 900 100 100 0.95\n"   # D
      "105 100 50 50 0.6\n"      # E
      "300 700 100 60 0.5\n")    # F
  h, w = 1024, 600
  img = np.zeros((h, w))
  img[15:h - 15, 15:w - 15] = 3000  # A breast filling the image: crop == whole image.
  (tmp_path / "img" / "s1").mkdir(parents=True)
  write_mg(img, tmp_path / "img" / "s1", "img1.dicom", bits=12)
  (tmp_path / "csv").mkdir()
  (tmp_path / "csv" / "test.csv").write_text(
      "im_path,laterality,cancer,view\ns1/img1.dicom,L,1,CC\n")
  out = tmp_path / "out"
  opts = prepare.PrepareOptions(long_side=512, normalize_orientation=False, max_proposals=8)
  result = prepare.prepare("csv", tmp_path / "img", out, opts, workers=1, csv_dir=tmp_path / "csv",
                           proposal_dir=tmp_path / "props")
  assert result.bad == []
  rec = records.data_source(out, "csv_512", "test")[0]
  assert float(rec["scale"]) == 0.5  # The long side, 1024 px, stored at 512.
  # D, A, C, F at half their size and position; 8 were allowed, 4 survive.
  survivors = [[250, 450, 50, 50, 0.95], [150, 200, 100, 100, 0.9], [50, 50, 25, 25, 0.7],
               [150, 350, 50, 30, 0.5]]
  np.testing.assert_allclose(rec["proposals"], survivors, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The grain pipeline.
# ---------------------------------------------------------------------------------------------


def _cfg(out, **kw):
  return pipeline.PipelineConfig(**{"data_dir": str(out), "config": "rsna_64", "split": "train",
                                    "batch_size": 2, "image_size": 64, **kw})


def test_batches_have_fixed_shapes(rsna_prepared):
  _, out, _ = rsna_prepared
  batch = next(iter(pipeline.make_dataset(_cfg(out, augment=True))))
  assert batch["image"].shape == (2, 64, 64) and batch["image"].dtype == np.uint16
  assert batch["lesion_boxes"].shape == (2, 8, 4) and batch["proposals"].shape == (2, 16, 5)
  assert batch["image_hw"].shape == (2, 2) and batch["label"].dtype == np.int32
  assert ((batch["brightness"] >= 0.9) & (batch["brightness"] <= 1.1)).all()


def test_epochs_are_reshuffled_deterministically_and_hosts_are_disjoint(rsna_prepared):
  _, out, result = rsna_prepared
  n = result.counts["train"]["images"]
  cfg = _cfg(out, batch_size=1, num_epochs=2)
  order = [int(b["index"][0]) for b in pipeline.make_dataset(cfg)]
  assert len(order) == 2 * n
  assert sorted(order[:n]) == sorted(order[n:]) == list(range(n))
  assert order[:n] != order[n:]
  assert order == [int(b["index"][0]) for b in pipeline.make_dataset(cfg)]
  hosts = [[int(b["index"][0]) for b in pipeline.make_dataset(
      _cfg(out, batch_size=1, num_epochs=1, process_index=i, process_count=2))] for i in range(2)]
  assert not set(hosts[0]) & set(hosts[1]) and len(hosts[0]) + len(hosts[1]) == n


_RESUME = """
import json, sys
from attend_jax.data import pipeline
cfg = pipeline.PipelineConfig(**json.loads(sys.argv[1]))
it = iter(pipeline.make_dataset(cfg))
if sys.argv[2] == "save":
  for _ in range(3):
    next(it)
  print(json.dumps({"state": it.get_state().decode() if isinstance(it.get_state(), bytes) else it.get_state()}))
else:
  it.set_state(json.loads(sys.argv[3])["state"])
out = [next(it) for _ in range(4)]
print(json.dumps([[b["index"].tolist(), float(b["image"].astype("float64").sum())] for b in out]))
"""


@pytest.mark.slow
def test_iterator_resumes_exactly_in_a_fresh_process(rsna_prepared):
  _, out, _ = rsna_prepared
  cfg = json.dumps({"data_dir": str(out), "config": "rsna_64", "batch_size": 2,
                    "image_size": 64, "augment": True})
  def run(*args):
    proc = helpers.run("-c", _RESUME, cfg, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()

  state_line, expected = run("save")
  [resumed] = run("load", state_line)
  assert json.loads(resumed) == json.loads(expected)


def test_augmentation_keeps_boxes_on_their_pixels():
  image = np.full((60, 40), 1000, np.uint16)
  image[10:20, 25:35] = 60000
  record = {"image": image, "lesion_boxes": np.array([[25, 10, 35, 20]], np.float32),
            "proposals": np.array([[30, 15, 10, 10, 0.9]], np.float32), "label": 1}
  cfg = pipeline.PipelineConfig(data_dir="", config="", flip_prob=0.5, box_jitter=0.0)
  seen = set()
  for seed in range(40):
    out = pipeline.augment(record, np.random.default_rng(seed), cfg)
    x0, y0, x1, y1 = out["lesion_boxes"][0].astype(int)
    patch = out["image"][y0:y1, x0:x1]
    assert patch.min() > 3 * out["image"].mean(), seed
    cx, cy, w, h, _ = out["proposals"][0]
    assert (cx, cy, w, h) == ((x0 + x1) / 2, (y0 + y1) / 2, 10, 10)
    seen.add((x0, y0))
  assert seen == {(25, 10), (5, 10), (25, 40), (5, 40)}  # All four flip combinations.


def test_intensity_jitter_on_device_matches_colorjitter_semantics():
  import jax.numpy as jnp
  from attend_jax.data import device_augment

  rng = np.random.default_rng(0)
  images = np.zeros((2, 8, 8), np.float32)
  images[0, :5, :6] = rng.uniform(0.1, 0.9, (5, 6))
  images[1, :8, :3] = rng.uniform(0.1, 0.9, (8, 3))
  hw = np.array([[5, 6], [8, 3]], np.int32)
  b, c = np.array([1.1, 0.9], np.float32), np.array([0.9, 1.1], np.float32)
  out = np.asarray(device_augment.intensity_jitter(jnp.asarray(images), hw, b, c))
  for i, (h, w) in enumerate(hw):
    real = np.clip(images[i, :h, :w] * b[i], 0, 1)
    real = np.clip(real.mean() + c[i] * (real - real.mean()), 0, 1)
    np.testing.assert_allclose(out[i, :h, :w], real, atol=1e-6)
    assert (out[i][~(np.arange(8)[:, None] < h) | ~(np.arange(8)[None] < w)] == 0).all()


def test_synthetic_dicoms_prepare_end_to_end(tmp_path):
  from attend_jax.data import synthetic

  images = synthetic.generate(tmp_path / "syn", 3, seed=3, size_range=(300, 400),
                              malignant_fraction=0.5, jpeg2000_fraction=0.5)
  result = prepare.prepare("synthetic", tmp_path / "syn", tmp_path / "out",
                           prepare.PrepareOptions(long_side=256), workers=2)
  assert result.bad == [] and sum(c["images"] for c in result.counts.values()) == 12
  by_id = {im.image_id: im for im in images}
  checked = 0
  for split in result.counts:
    source = records.data_source(tmp_path / "out", "synthetic_256", split)
    for i in range(len(source)):
      rec = source[i]
      meta = by_id[rec["image_id"].decode()]
      assert rec["label"] == meta.label and len(rec["lesion_boxes"]) == len(meta.lesions)
      for box, lesion in zip(rec["lesion_boxes"], meta.lesions):
        back = geometry.Placement.of(rec).to_original(box)
        np.testing.assert_allclose(back[0], lesion.box, atol=2.5)
        checked += 1
  assert checked >= 4


def test_bad_proposal_files_are_listed_and_the_rest_prepared(tmp_path):
  (tmp_path / "img" / "s").mkdir(parents=True)
  (tmp_path / "props" / "s").mkdir(parents=True)
  lines = ["im_path,laterality,cancer,view"]
  for name, content in (("good", "30 40 20 20 0.9\n"), ("nan", "30 40 nan 20 0.9\n"),
                        ("short", "30 40 20\n"), ("empty", "")):
    write_mg(phantom(), tmp_path / "img" / "s", f"{name}.dicom")
    (tmp_path / "props" / "s" / f"{name}_preds.txt").write_text(content)
    lines.append(f"s/{name}.dicom,L,0,CC")
  (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
  result = prepare.prepare("csv", tmp_path / "img", tmp_path / "out", OPTS, workers=1,
                           csv_dir=tmp_path, proposal_dir=tmp_path / "props")
  assert result.counts == {"test": {"images": 1, "cancer": 0}}
  reasons = {pathlib.Path(p).name: r for p, r in result.bad}
  assert set(reasons) == {"nan_preds.txt", "short_preds.txt", "empty_preds.txt"}
  assert "NaN" in reasons["nan_preds.txt"] and "is empty" in reasons["empty_preds.txt"]


def test_prepare_refuses_and_counts_marks_as_predict_does(tmp_path):
  """The local pool's path through the same header check as predict (and as Beam's DoFn, which
  runs the same prepare.decode): refused files are bad files with their reasons, marked ones
  are prepared and counted in the manifest; the records keep their schema."""
  paths = reading_room(tmp_path / "img" / "s")
  lines = ["im_path,laterality,cancer,view"] + [
      f"s/{name}.dcm,{side},0,{view}" for name, (side, view, _) in READING_ROOM.items()]
  (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
  result = prepare.prepare("csv", tmp_path / "img", tmp_path / "out", OPTS, workers=1,
                           csv_dir=tmp_path)
  assert result.counts == {"test": {"images": len(MARKED), "cancer": 0}}
  reasons = dict(result.bad)
  assert set(reasons) == {str(paths[name]) for name in REFUSED}
  for name, start in REFUSED.items():
    assert reasons[str(paths[name])].startswith(start), reasons
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["marks"] == {"generated_2d": 1, "burned_in_annotation": 2, "cad_marks": 1}
  source = records.data_source(tmp_path / "out", "csv_64", "test")
  assert len(source) == len(MARKED) and "marks" not in source[0]


@pytest.mark.slow
def test_worker_processes_load_everything_and_resume(rsna_prepared):
  _, out, result = rsna_prepared
  n = result.counts["train"]["images"]
  cfg = _cfg(out, batch_size=1, num_epochs=1, worker_count=2)
  it = iter(pipeline.make_dataset(cfg))
  try:
    first = [int(next(it)["index"][0]) for _ in range(3)]
    state = it.get_state()
    rest = [int(b["index"][0]) for b in it]
  finally:
    it.close()
  assert sorted(first + rest) == list(range(n))
  again = iter(pipeline.make_dataset(cfg))
  try:
    again.set_state(state)
    assert [int(b["index"][0]) for b in again] == rest
  finally:
    again.close()
