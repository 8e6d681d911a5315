"""tools/export_proposals.py: a trained detector's boxes as the reference's proposal files."""

import dataclasses
import json
import pathlib

import export_proposals
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attend_jax import geometry, inference
from attend_jax import run as run_lib
from attend_jax.data import pipeline, prepare, proposals, records
from attend_jax.data.sources import DatasetNotFoundError
from attend_jax.data.sources import synthetic_csv

import helpers

DATASET = "synthetic_256"
BATCH = 5  # 12 train and 4 val records: full batches and padded last ones.


def _cli(*args):
  return helpers.run(*args)  # One CPU device, as a user has.


@pytest.fixture(scope="module")
def run(trained_detector, tmp_path_factory):
  """The smoke detector (4 synthetic studies, 6 steps) and its exported proposals."""
  work, data = trained_detector / "work", trained_detector / "data"
  out = tmp_path_factory.mktemp("export") / "proposals"
  # --data_dir and --dataset are left to their defaults: the detector's own config.data.
  proc = _cli("tools/export_proposals.py", f"--detector={work}", f"--out={out}",
              f"--batch_size={BATCH}", "--records")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return {"work": work, "data": data, "out": out, "stdout": proc.stdout, "stderr": proc.stderr}


def _detect_directly(loaded, data, split):
  """The detector run on the split's records by hand, in the export's batches: per record
  (record, valid boxes in stored pixels best first, their scores)."""
  graph, state = nnx.split(loaded.model)
  detect = jax.jit(lambda state, images, hw: nnx.merge(graph, state).detect(
      images.astype(jnp.float32) / 65535.0, hw))
  cfg = pipeline.PipelineConfig(data_dir=str(data), config=DATASET,
                                image_size=loaded.config.data.image_size)
  source = records.data_source(data, DATASET, split)
  out = []
  for start in range(0, len(source), BATCH):
    recs = [source[i] for i in range(start, min(start + BATCH, len(source)))]
    fixed = [pipeline.to_fixed_shapes(r, start + j, cfg.image_size, cfg.num_proposals)
             for j, r in enumerate(recs)]
    images = np.zeros((BATCH, cfg.image_size, cfg.image_size), np.uint16)
    hw = np.ones((BATCH, 2), np.int32)
    for j, f in enumerate(fixed):
      images[j], hw[j] = f["image"], f["image_hw"]
    det = jax.device_get(detect(state, images, hw))
    for j, r in enumerate(recs):
      valid = det["valid"][j]
      boxes, scores = det["boxes"][j][valid], det["scores"][j][valid]
      order = np.argsort(-scores, kind="stable")
      out.append((r, boxes[order], scores[order]))
  return out


@pytest.fixture(scope="module")
def direct(run):
  loaded = run_lib.load(run["work"])
  return {s: _detect_directly(loaded, run["data"], s) for s in records.splits(run["data"], DATASET)}


def _text(v):
  return v.decode() if isinstance(v, bytes) else str(v)


def _file(run, record):
  return run["out"] / _text(record["study_id"]) / f"{_text(record['image_id'])}_preds.txt"


def _stored_cxcywh(rows, record):
  """A proposal file's boxes into stored pixels, as prepare.process_example maps them."""
  rows = np.asarray(rows, np.float64)
  xyxy = np.concatenate([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], 1)
  if bool(record["flipped"]):
    x0, _, x1, _ = (int(v) for v in record["crop_box"])
    xyxy[:, [0, 2]] = (x1 - x0) - xyxy[:, [2, 0]]
  xyxy = xyxy * float(record["scale"])
  return np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)


def _cxcywh(xyxy):
  xyxy = np.asarray(xyxy, np.float64)
  return np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)


@pytest.mark.slow
def test_every_record_has_one_parsable_file_best_first(run, direct):
  expected = {_file(run, r) for items in direct.values() for r, _, _ in items}
  assert len(expected) == 16 and set(direct) == {"train", "val"}
  assert set(run["out"].rglob("*_preds.txt")) == expected  # Nothing more, nothing less.
  for items in direct.values():
    for record, boxes, _ in items:
      rows = proposals.read_proposals(_file(run, record))
      assert rows.ndim == 2 and rows.shape[1] == 5 and len(rows) == len(boxes) > 0
      assert np.all(np.diff(rows[:, 4]) <= 0), "scores must be in descending order"
      assert np.all(rows[:, 2:4] > 0)

  manifest = json.loads((run["out"] / "manifest.json").read_text())
  assert manifest["dataset"] == DATASET
  assert manifest["detector"].startswith(str(run["work"] / "best"))
  assert manifest["files"] == "<study_id>/<image_id>_preds.txt"
  assert {s: c["images"] for s, c in manifest["splits"].items()} == {"train": 12, "val": 4}
  assert manifest["boxes"] == sum(len(b) for items in direct.values() for _, b, _ in items)
  assert "original resolution" in manifest["format"] and "orientation" in manifest["format"]
  assert "exporting train: 100%" in run["stderr"] and "12/12" in run["stderr"]  # Progress.
  assert "exporting val: 100%" in run["stderr"] and "4/4" in run["stderr"]
  assert "16 images (train 12, val 4)" in run["stdout"]


@pytest.mark.slow
def test_the_dataset_named_explicitly_gives_the_same_files(run, tmp_path):
  """docs/detector.md's form, --dataset (and --data_dir), one split: the default run's files."""
  out = tmp_path / "val_only"
  proc = _cli("tools/export_proposals.py", f"--detector={run['work']}", f"--dataset={DATASET}",
              f"--data_dir={run['data']}", "--splits=val", f"--out={out}",
              f"--batch_size={BATCH}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  files = sorted(p.relative_to(out) for p in out.rglob("*_preds.txt"))
  assert len(files) == 4
  for name in files:
    assert (out / name).read_text() == (run["out"] / name).read_text()


@pytest.mark.slow
def test_files_map_back_to_the_detectors_own_boxes(run, direct):
  """Original-resolution, original-orientation crop pixels: prepare's mapping gives back the
  detector's boxes in stored pixels, and the scores, in the same order."""
  items = [item for split_items in direct.values() for item in split_items]
  # Both branches of the mapping are exercised, and a scale that is not 1.
  assert {bool(r["flipped"]) for r, _, _ in items} == {True, False}
  assert all(float(r["scale"]) < 0.99 for r, _, _ in items)
  for record, boxes, scores in items:
    rows = proposals.read_proposals(_file(run, record))
    want = _cxcywh(boxes)
    np.testing.assert_allclose(_stored_cxcywh(rows, record), want, rtol=1e-5, atol=1e-3,
                               err_msg=_text(record["image_id"]))
    np.testing.assert_allclose(rows[:, 4], scores, rtol=1e-6)
    # The files hold the original-resolution boxes, not the stored ones.
    assert not np.allclose(rows[:, :4], want, atol=1.0)


@pytest.mark.slow
def test_prepare_data_and_predict_find_and_read_the_files(run, direct):
  """The consumers: the reference-CSV source's and predict's file naming, and
  prepare.process_example on the DICOMs the records came from."""
  listing = synthetic_csv.list_examples(run["data"] / "dicom")
  examples = {ex.image_id: ex for ex in listing.examples}
  opts = prepare.PrepareOptions(long_side=256, max_proposals=1000)
  checked = 0
  for record, boxes, scores in direct["val"] + direct["train"][:4]:
    path = _file(run, record)
    ex = examples[_text(record["image_id"])]
    dicom = pathlib.Path(ex.path)
    assert dicom.parent.name == ex.study_id
    im_path = f"{ex.study_id}/{ex.image_id}.dicom"  # The reference CSVs' im_path.
    assert proposals.proposal_path(run["out"], im_path) == path
    assert pathlib.Path(inference.example(dicom, str(run["out"])).proposals_path) == path

    redone = prepare.process_example(dataclasses.replace(ex, proposals_path=str(path)), opts)
    np.testing.assert_array_equal(redone["crop_box"], record["crop_box"])
    assert bool(redone["flipped"]) == bool(record["flipped"])
    props = redone["proposals"]
    assert len(props) == len(boxes)  # The detector's NMS already left no overlap above 0.5.
    np.testing.assert_allclose(props[:, :4], _cxcywh(boxes), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(props[:, 4], scores, rtol=1e-6)
    checked += 1
  assert checked == 8


def test_mapping_inverts_prepare_on_known_boxes():
  stored = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 3.5, 7.25]])
  record = {"crop_box": np.array([100, 40, 500, 640]), "flipped": True, "scale": 0.5}
  rows = export_proposals.proposal_rows(stored, np.array([0.2, 0.9], np.float32),
                                        np.array([True, True]), record)
  # Best first; crop width 400: stored x 10..50 at scale 0.5 is 20..100, flipped 300..380.
  np.testing.assert_allclose(rows[1], [340.0, 100.0, 80.0, 120.0, 0.2])
  np.testing.assert_allclose(rows[0, :4], [396.5, 7.25, 7.0, 14.5])
  assert rows[0, 4] == np.float32(0.9)
  np.testing.assert_allclose(_stored_cxcywh(rows, record), _cxcywh(stored[::-1]))
  # Placement.to_original is the same mapping plus the crop's offset in the DICOM.
  in_dicom = geometry.Placement.of(record).to_original(stored)
  np.testing.assert_allclose(rows[::-1, :4], _cxcywh(in_dicom - [100, 40, 100, 40]))
  # Invalid boxes are left out; nothing valid gives the whole crop at score 0.
  one = export_proposals.proposal_rows(stored, np.array([0.2, 0.9]), np.array([True, False]),
                                       record)
  assert one.shape == (1, 5) and one[0, 4] == np.float32(0.2)
  none = export_proposals.proposal_rows(stored, np.array([0.2, 0.9]), np.array([False, False]),
                                        record)
  np.testing.assert_array_equal(none, [[200.0, 300.0, 400.0, 600.0, 0.0]])
  text = export_proposals.format_rows(rows)
  assert text.splitlines()[1] == "340.0 100.0 80.0 120.0 0.2"


def test_file_names(tmp_path):
  name = export_proposals.proposal_file
  assert name(tmp_path, "img", "st") == tmp_path / "st" / "img_preds.txt"
  assert name(tmp_path, "img", "", "flat") == tmp_path / "img_preds.txt"
  with pytest.raises(ValueError, match="study_id '' cannot be a file name.*--layout=flat"):
    export_proposals.proposal_file(tmp_path, "img", "")
  with pytest.raises(ValueError, match="image_id '../x'"):
    export_proposals.proposal_file(tmp_path, "../x", "st")


def test_a_bad_detector_path_is_an_error_naming_it(tmp_path):
  missing = tmp_path / "no_such_run"
  proc = _cli("tools/export_proposals.py", f"--detector={missing}", f"--out={tmp_path / 'o'}")
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_classifier_missing_or_too_large_dataset_is_an_error(run, tmp_path):
  loaded = run_lib.load(run["work"])
  classifier = dataclasses.replace(loaded, config=loaded.config.copy_and_resolve_references())
  classifier.config.task = "classify"
  with pytest.raises(ValueError, match="'classify' model, not a detector"):
    export_proposals.require_detector(classifier)
  export_proposals.require_detector(loaded)
  with pytest.raises(DatasetNotFoundError, match="No prepared dataset 'vindr_2048'"):
    export_proposals.resolve_dataset(loaded.config, "vindr_2048", str(run["data"]), None)
  with pytest.raises(DatasetNotFoundError, match=r"has the splits \['train', 'val'\], not"
                     r" \['test'\]"):
    export_proposals.resolve_dataset(loaded.config, DATASET, str(run["data"]), ["val", "test"])
  assert export_proposals.resolve_dataset(loaded.config, DATASET, str(run["data"]),
                                          None) == ["train", "val"]
  with pytest.raises(ValueError, match="up to 512 px.*trained on crops of at most 256 px"):
    export_proposals.export(loaded, tmp_path / "o", "synthetic_512", str(run["data"]), ["val"])
  with pytest.raises(ValueError, match="not a detector"):
    export_proposals.export(classifier, tmp_path / "o", DATASET, str(run["data"]), ["val"])
  assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_records_hold_the_detector_boxes_as_their_proposals(run, direct):
  """--records: the prepared dataset again, its pixels untouched, its proposals the detector's
  boxes in stored pixels best first, made with the same prepare options."""
  from attend_jax import box_ops

  name = DATASET + "_det"
  assert f"the prepared dataset {name} in" in run["stdout"]
  for split, rows in direct.items():
    made = records.data_source(run["data"], name, split)
    assert len(made) == len(rows)
    by_id = {_text(made[i]["image_id"]): made[i] for i in range(len(made))}
    for record, boxes, scores in rows:
      new = by_id[_text(record["image_id"])]
      np.testing.assert_array_equal(new["image"], record["image"])
      np.testing.assert_array_equal(new["crop_box"], record["crop_box"])
      want = np.concatenate([box_ops.to_cxcywh(boxes), scores[:, None]], 1)[:32]
      np.testing.assert_allclose(new["proposals"], want.reshape(-1, 5), atol=1e-3)
  assert prepare.read_options(run["data"], name) == prepare.read_options(run["data"], DATASET)
  assert records.ids(run["data"], name, "train") is not None
