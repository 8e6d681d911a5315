"""Synthetic studies in each real dataset's layout, read back by that dataset's own source.

The checks compare against the generator's truth (``synthetic.plan``'s draws, the rendered
lesions, the official split each image was written under), never against what the layout code
put in its CSVs; prepare's own steps (``process_example``, the CLI) turn the ROI masks and the
proposal files into boxes.
"""

import collections
import csv
import dataclasses
import json
import re
import shlex

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from attend_jax import geometry, paths
from attend_jax.data import dicom, layouts, prepare, records
from attend_jax.data import synthetic as S
from attend_jax.data.sources import SOURCES
import helpers

# Its 4 studies hold Mass and Calc cases, cancers beside benign masses, breasts with findings of
# both families (CBIS keeps one), lesions in L and R breasts, and lesion-free images.
SEED = 23
STUDIES = 4
SIZES = (200, 300)
CALCS = (S.CALCIFICATION_CLUSTER, S.BENIGN_CALCIFICATIONS)
# The real datasets' headers, as their files have them.
CBIS_MASS = ("patient_id,breast_density,left or right breast,image view,abnormality id,"
             "abnormality type,mass shape,mass margins,assessment,pathology,subtlety,"
             "image file path,cropped image file path,ROI mask file path")
CBIS_CALC = ("patient_id,breast density,left or right breast,image view,abnormality id,"
             "abnormality type,calc type,calc distribution,assessment,pathology,subtlety,"
             "image file path,cropped image file path,ROI mask file path")
VINDR_BREAST = ("study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,"
                "breast_density,split")
VINDR_FINDING = ("study_id,series_id,image_id,laterality,view_position,height,width,"
                 "breast_birads,breast_density,finding_categories,finding_birads,xmin,ymin,xmax,"
                 "ymax,split")
RSNA = ("site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,"
        "density,machine_id,difficult_negative_case")


def _write(tmp_path_factory, layout):
  out = tmp_path_factory.mktemp(layout)
  return out, layouts.write(layout, out, STUDIES, seed=SEED, size_range=SIZES, workers=1)


@pytest.fixture(scope="module")
def plan():
  """The generator's own draws for these studies, which every layout renders, in order."""
  return S.plan("unused", STUDIES, seed=SEED, size_range=SIZES)


@pytest.fixture(scope="module")
def cbis(tmp_path_factory):
  return _write(tmp_path_factory, "cbis_ddsm")


@pytest.fixture(scope="module")
def vindr(tmp_path_factory):
  return _write(tmp_path_factory, "vindr")


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
  return _write(tmp_path_factory, "rsna")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return _write(tmp_path_factory, "csv")


def _header(path) -> str:
  with open(path, newline="") as f:
    return ",".join(next(csv.reader(f)))


def _rows(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _same_image(job: S.ImageJob, im: S.SyntheticImage) -> None:
  """``im`` is the picture ``job`` planned."""
  assert (im.laterality, im.view, im.label, im.width, im.height) == (
      job.meta.laterality, job.meta.view, job.meta.label, job.meta.width, job.meta.height)


def _boxes(lesions) -> tuple:
  return tuple(tuple(float(v) for v in l.box) for l in lesions)


def _malignant(lesions) -> tuple:
  return tuple(l.kind in S.MALIGNANT_KINDS for l in lesions)


def _iou(a, b) -> float:
  inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
           * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _check_proposals(record, lesions) -> int:
  """The record's proposals (reference crop, full size, not flipped) cover each true lesion,
  the first one is the breast; returns how many lesions lie farther from the crop's origin
  than their width, where proposals in the original image's pixels would miss them."""
  p = np.asarray(record["proposals"], np.float64)
  boxes = np.concatenate([p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2], 1)
  ys, xs = np.nonzero(record["image"] > 0)  # Air is black in these images.
  assert _iou(boxes[0], (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)) > 0.9
  x0, y0 = (int(v) for v in record["crop_box"][:2])
  far = 0
  for lesion in lesions:
    lx0, ly0, lx1, ly1 = lesion.box
    in_crop = (lx0 - x0, ly0 - y0, lx1 - x0, ly1 - y0)
    # simulate_detector jitters each lesion's box by up to 30 % in size and 10 % (one sigma)
    # in position: its IoU stays well above 0.3.
    assert max(_iou(in_crop, b) for b in boxes) > 0.3, (record["image_id"], lesion)
    far += x0 > lx1 - lx0
  return far


# ---------------------------------------------------------------------------------------------
# CBIS-DDSM.


def test_cbis_ddsm_layout_is_read_by_its_source_with_boxes_from_the_masks(cbis, plan):
  out, written = cbis
  listing = SOURCES["cbis_ddsm"](out)
  assert listing.bad == []
  # Only the breasts with an abnormality, each view; each keeps its first finding's family.
  jobs = [job for job in plan if job.findings]
  assert len(written) == len(jobs) == len(listing.examples)
  assert any(len({f.kind in CALCS for f in job.findings}) == 2 for job in jobs)
  examples = {ex.image_id: ex for ex in listing.examples}
  seen = collections.Counter()
  opts = prepare.PrepareOptions(long_side=0)
  for job, w in zip(jobs, written):
    im = w.image
    _same_image(job, im)
    calc = job.findings[0].kind in CALCS
    assert [l.kind for l in im.lesions] == [f.kind for f in job.findings
                                            if (f.kind in CALCS) == calc]
    ex = examples[im.image_id]
    name = re.fullmatch(r"(Mass|Calc)-(Training|Test)_(P_\d{5})_(LEFT|RIGHT)_(CC|MLO)",
                        ex.image_id)
    assert name, ex.image_id
    assert name[1] == ("Calc" if calc else "Mass")
    assert (name[2] == "Test") == (w.split == "test") == (ex.split == "test")
    assert name[4][0] == im.laterality and name[5] == im.view
    assert ex.study_id == ex.patient_id == name[3] == im.study_id
    assert (ex.laterality, ex.view, ex.label) == (im.laterality, im.view, im.label)
    # NBIA folders; a 16-bit MONOCHROME2 scan without view tags, whose names tell them.
    assert re.search(rf"/CBIS-DDSM/{ex.image_id}/\d\d-\d\d-\d{{4}}-DDSM-\d{{5}}/"
                     r"1\.000000-full mammogram images-\d{5}/1-1\.dcm$", ex.path), ex.path
    ds = pydicom.dcmread(ex.path)
    assert (ds.BitsStored, ds.PhotometricInterpretation, ds.PatientID) == (
        16, "MONOCHROME2", ex.image_id)
    assert "ImageLaterality" not in ds and "ViewPosition" not in ds
    assert (dicom.read_dicom(ex.path).laterality, dicom.read_dicom(ex.path).view) == (
        im.laterality, im.view)
    # Each abnormality's folder holds its ROI mask (255 in the lesion, the image's size) and the
    # cropped lesion, which prepare tells apart by size; the boxes come back from the masks.
    assert len(w.masks) == len(im.lesions) and len(ex.mask_paths) == 2 * len(im.lesions)
    for mask_path, lesion in zip(w.masks, im.lesions):
      assert re.search(rf"/{ex.image_id}_\d/.*/1\.000000-ROI mask images-\d{{5}}/1-1\.dcm$",
                       str(out / mask_path))
      mask = pydicom.dcmread(out / mask_path).pixel_array
      ys, xs = np.nonzero(mask)
      assert mask.shape == (im.height, im.width) and set(np.unique(mask)) == {0, 255}
      assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == lesion.box
    record = prepare.process_example(ex, opts)
    back = geometry.Placement.of(record).to_original(record["lesion_boxes"])
    assert sorted(zip(map(tuple, back.tolist()), record["lesion_malignant"].tolist())) == sorted(
        zip(_boxes(im.lesions), _malignant(im.lesions)))
    seen[name[1]] += 1
    seen[f"label {im.label}"] += 1
    seen[w.split] += 1
    seen["several abnormalities"] += len(im.lesions) > 1
  assert all(seen[k] for k in ("Mass", "Calc", "label 0", "label 1", "train", "test",
                               "several abnormalities")), seen


def test_cbis_ddsm_csvs_have_the_real_columns_and_a_row_per_abnormality(cbis):
  out, written = cbis
  truth = {w.image.image_id: w for w in written}
  rows = []
  for family, header in (("mass", CBIS_MASS), ("calc", CBIS_CALC)):
    for split in ("train", "test"):
      path = out / f"{family}_case_description_{split}_set.csv"
      assert _header(path) == header
      rows += [(family, split, row) for row in _rows(path)]
  assert len(rows) == sum(len(w.image.lesions) for w in written)
  uid = r"1\.3\.6\.1\.4\.1\.9590\.100\.1\.2\.\d+"
  for family, split, row in rows:
    # TCIA's UID paths, not the folders on disk: the source matches on the top folder.
    top = row["image file path"].split("/")[0]
    assert re.fullmatch(rf"{top}/{uid}/{uid}/000000\.dcm", row["image file path"])
    w = truth[top]
    k = int(row["abnormality id"])
    lesion = w.image.lesions[k - 1]
    assert re.fullmatch(rf"{top}_{k}/{uid}/{uid}/00000\d\.dcm", row["ROI mask file path"])
    assert row["patient_id"] == w.image.patient_id
    assert (row["left or right breast"], row["image view"]) == (
        {"L": "LEFT", "R": "RIGHT"}[w.image.laterality], w.image.view)
    assert row["abnormality type"] == ("calcification" if lesion.kind in CALCS else "mass")
    assert family == ("calc" if lesion.kind in CALCS else "mass")
    assert split == ("test" if w.split == "test" else "train")
    if lesion.kind in S.MALIGNANT_KINDS:
      assert row["pathology"] == "MALIGNANT"
    else:
      assert row["pathology"] in ("BENIGN", "BENIGN_WITHOUT_CALLBACK")


def test_the_same_seed_writes_the_same_files(tmp_path, cbis):
  out, _ = cbis
  again = tmp_path / "again"
  layouts.write("cbis_ddsm", again, STUDIES, seed=SEED, size_range=SIZES, workers=1)
  files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
  assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
  assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)
  other = tmp_path / "other"
  layouts.write("cbis_ddsm", other, STUDIES, seed=SEED + 1, size_range=SIZES, workers=1)
  name = "mass_case_description_train_set.csv"
  assert (other / name).read_bytes() != (out / name).read_bytes()


# ---------------------------------------------------------------------------------------------
# VinDr-Mammo.


def test_vindr_layout_is_read_by_its_source_with_the_finding_boxes(vindr, plan):
  out, written = vindr
  listing = SOURCES["vindr"](out)
  assert listing.bad == []
  assert len(written) == len(plan) == len(listing.examples) == 4 * STUDIES
  examples = {ex.image_id: ex for ex in listing.examples}
  for job, w in zip(plan, written):
    im = w.image
    _same_image(job, im)
    # Study ids are chosen where the source's validation split (a hash of the id) puts them.
    assert im.image_id == job.meta.image_id
    assert [l.kind for l in im.lesions] == [f.kind for f in job.findings]
    ex = examples[im.image_id]
    assert re.fullmatch("[0-9a-f]{32}", ex.image_id) and re.fullmatch("[0-9a-f]{32}", ex.study_id)
    assert ex.path == str(out / "images" / im.study_id / f"{im.image_id}.dicom")
    assert (ex.study_id, ex.laterality, ex.view, ex.label) == (
        im.study_id, im.laterality, im.view, im.label)
    assert (ex.split == "test") == (w.split == "test")
    assert ex.lesion_boxes == _boxes(im.lesions)
    assert ex.lesion_malignant == _malignant(im.lesions)
    ds = pydicom.dcmread(ex.path, stop_before_pixels=True)
    assert (ds.ImageLaterality, ds.ViewPosition, ds.Rows, ds.Columns) == (
        im.laterality, im.view, im.height, im.width)
  # The official test split is a fifth of the studies, whole studies.
  studies = collections.defaultdict(set)
  for w in written:
    studies[w.image.study_id].add(w.split)
  assert sorted(map(tuple, studies.values())) == [("test",)] + [("train",)] * (STUDIES - 1)


def test_vindr_csvs_have_the_real_columns_birads_and_no_finding_rows(vindr):
  out, written = vindr
  truth = {w.image.image_id: w for w in written}
  assert _header(out / "breast-level_annotations.csv") == VINDR_BREAST
  assert _header(out / "finding_annotations.csv") == VINDR_FINDING
  breasts = collections.defaultdict(set)
  for row in _rows(out / "breast-level_annotations.csv"):
    im = truth[row["image_id"]].image
    birads = int(row["breast_birads"].removeprefix("BI-RADS "))
    assert birads in ((4, 5) if im.label else (2, 3) if im.lesions else (1,)), (row, im)
    assert row["split"] == ("test" if truth[row["image_id"]].split == "test" else "training")
    assert re.fullmatch("DENSITY [ABCD]", row["breast_density"])
    assert (int(row["height"]), int(row["width"])) == (im.height, im.width)
    breasts[(row["study_id"], row["laterality"])].add(row["breast_birads"])
  assert len(breasts) == 2 * STUDIES and all(len(b) == 1 for b in breasts.values())
  findings = collections.defaultdict(list)
  for row in _rows(out / "finding_annotations.csv"):
    findings[row["image_id"]].append(row)
  assert set(findings) == set(truth)
  for image_id, rows in findings.items():
    lesions = truth[image_id].image.lesions
    if lesions:
      assert [r["finding_categories"] for r in rows] == [
          "['Suspicious Calcification']" if l.kind in CALCS else "['Mass']" for l in lesions]
    else:
      assert [(r["finding_categories"], r["finding_birads"], r["xmin"]) for r in rows] == [
          ("['No Finding']", "", "")]
  assert any(not w.image.lesions for w in written) and any(w.image.lesions for w in written)


# ---------------------------------------------------------------------------------------------
# RSNA.


def test_rsna_layout_is_read_by_its_source(rsna, plan):
  out, written = rsna
  assert _header(out / "train.csv") == RSNA
  listing = SOURCES["rsna"](out)
  assert listing.bad == []
  assert len(written) == len(plan) == len(listing.examples) == 4 * STUDIES
  examples = {ex.image_id: ex for ex in listing.examples}
  rows = {row["image_id"]: row for row in _rows(out / "train.csv")}
  splits, j2k = collections.defaultdict(set), 0
  for job, w in zip(plan, written):
    im = w.image
    _same_image(job, im)
    assert im.image_id.isdigit() and im.patient_id.isdigit()
    ex = examples[im.image_id]
    assert ex.path == str(out / "train_images" / im.patient_id / f"{im.image_id}.dcm")
    assert (ex.patient_id, ex.laterality, ex.view, ex.label) == (
        im.patient_id, im.laterality, im.view, im.label)
    row = rows[im.image_id]
    # Benign findings were biopsied: RSNA's difficult negatives.
    assert row["biopsy"] == str(int(bool(job.findings)))
    assert row["difficult_negative_case"] == str(bool(job.findings) and not im.label)
    ds = pydicom.dcmread(ex.path)
    assert ds.PatientID == im.patient_id
    j2k += ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert dicom.read_dicom(ex.path).pixels.shape == (im.height, im.width)
    splits[ex.patient_id].add(ex.split)
  assert len(splits) == STUDIES and all(len(s) == 1 for s in splits.values())
  assert j2k >= len(written) / 2  # Many, as in the real set.


# ---------------------------------------------------------------------------------------------
# The reference's CSVs and proposal files.


def _reference_listing(out):
  return SOURCES["csv"](out / "images", csv_dir=out, proposal_dir=out / "proposals")


def test_reference_layout_is_read_by_its_source_with_its_three_csvs(reference, plan):
  out, written = reference
  assert _header(out / "train.csv") == _header(out / "val.csv") == (
      "study_id,laterality,im_path,cancer,view")
  assert _header(out / "test.csv") == "im_path,laterality,cancer,view"
  listing = _reference_listing(out)
  assert listing.bad == []
  assert len(written) == len(plan) == len(listing.examples) == 4 * STUDIES
  examples = {ex.image_id: ex for ex in listing.examples}
  studies = collections.defaultdict(set)
  for job, w in zip(plan, written):
    im = w.image
    _same_image(job, im)
    ex = examples[im.image_id]
    assert ex.path == str(out / "images" / im.study_id / f"{im.image_id}.dicom")
    # test.csv has no study_id: the source takes it from the path.
    assert (ex.study_id, ex.laterality, ex.view, ex.label, ex.split) == (
        im.study_id, im.laterality, im.view, im.label, w.split)
    assert ex.proposals_path == str(out / w.proposals)
    assert w.proposals == f"proposals/{im.study_id}/{im.image_id}_preds.txt"
    studies[im.study_id].add(w.split)
  assert all(len(s) == 1 for s in studies.values())
  assert collections.Counter(s for (s,) in studies.values()) == {"train": 2, "val": 1, "test": 1}


def test_reference_proposals_land_on_the_lesions_in_the_reference_crop(reference):
  out, written = reference
  truth = {w.image.image_id: w.image for w in written}
  opts = prepare.PrepareOptions(long_side=0, crop="reference", normalize_orientation=False)
  far = 0
  for ex in _reference_listing(out).examples:
    raw = np.loadtxt(ex.proposals_path, ndmin=2)
    assert raw.shape == (layouts.PROPOSALS_PER_IMAGE, 5)
    assert np.all(np.diff(raw[:, 4]) <= 0)  # Sorted by score.
    record = prepare.process_example(ex, opts)
    assert record["proposals_off_image"] == 0
    far += _check_proposals(record, truth[ex.image_id].lesions)
  assert far  # Some lesions that proposals in the wrong pixels would miss.


@pytest.mark.slow
def test_cli_writes_the_layout_and_prints_the_prepare_command_that_reads_it(tmp_path, reference):
  fixture, written = reference
  out = tmp_path / "reference"
  proc = helpers.run("tools/make_synthetic.py", "--layout=csv", f"--out={out}",
                     f"--num_studies={STUDIES}", f"--seed={SEED}", f"--min_size={SIZES[0]}",
                     f"--max_size={SIZES[1]}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = proc.stdout.strip().splitlines()[-1]
  malignant = sum(w.image.label for w in written)
  assert summary.startswith(f"wrote {len(written)} images ({STUDIES} studies, {malignant}"
                            " malignant,"), summary
  # Every core renders what one process rendered.
  files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
  assert files == sorted(p.relative_to(fixture) for p in fixture.rglob("*") if p.is_file())
  assert all((out / f).read_bytes() == (fixture / f).read_bytes() for f in files)

  command = shlex.split(summary.split("; prepare them with: ")[1])
  assert command[:2] == ["python", "tools/prepare_data.py"]
  proc = helpers.run(*command[1:])
  assert proc.returncode == 0, proc.stderr[-3000:]
  prepared = command[command.index("--out") + 1]
  truth = {w.image.image_id: w for w in written}
  far, seen = 0, collections.Counter()
  for split in ("train", "val", "test"):
    source = records.data_source(prepared, "csv_full", split)
    for i in range(len(source)):
      record = source[i]
      w = truth[record["image_id"].decode()]
      assert (split, int(record["label"])) == (w.split, w.image.label)
      assert not record["flipped"] and float(record["scale"]) == 1.0
      far += _check_proposals(record, w.image.lesions)
      seen[split] += 1
  assert seen == collections.Counter(w.split for w in written)
  assert far


# ---------------------------------------------------------------------------------------------
# The same folders on a bucket (the GCS emulator), as prepare reads them on Dataflow.


def _listing(layout, root):
  """The source's listing of the layout written in ``root``, a folder or a bucket folder."""
  if layout == "csv":
    return SOURCES["csv"](root / "images", csv_dir=root, proposal_dir=root / "proposals")
  return SOURCES[layout](root)


@pytest.fixture(scope="module")
def on_a_bucket(cbis, reference, gcs):
  """{layout: (its folder, a copy on the bucket, the images written)} for the two sources that
  scan folders."""
  copies = {}
  for layout, (out, written) in (("cbis_ddsm", cbis), ("csv", reference)):
    copies[layout] = out, paths.path(gcs.path(layout)), written
    paths.upload(*copies[layout][:2])
  return copies


def _moved(local, bucket):
  return lambda text: text and text.replace(str(local), str(bucket))


def _assert_same_records(ours: dict, theirs: dict, what: str) -> None:
  assert ours.keys() == theirs.keys(), what
  for key in theirs:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{what} {key}")


@pytest.mark.parametrize("layout", ["cbis_ddsm", "csv"])
def test_a_bucket_root_lists_and_decodes_as_the_same_files_on_disk(on_a_bucket, layout):
  """The CBIS-DDSM folder scan (its NBIA folders, the ROI masks) and the reference's CSVs and
  proposal files, from ``gs://``: the same examples naming the bucket's objects, and the same
  records from them, masks and proposals read from the bucket."""
  local, bucket, written = on_a_bucket[layout]
  on_disk, remote = _listing(layout, local), _listing(layout, bucket)
  moved = _moved(local, bucket)
  assert len(on_disk.examples) == len(written)
  assert remote.examples == [dataclasses.replace(
      ex, path=moved(ex.path), mask_paths=tuple(map(moved, ex.mask_paths)),
      proposals_path=moved(ex.proposals_path)) for ex in on_disk.examples]
  assert all(ex.path.startswith("gs://") for ex in remote.examples)
  assert [(str(e.path), e.reason) for e in remote.bad] == [
      (moved(str(e.path)), moved(e.reason)) for e in on_disk.bad]
  opts = prepare.PrepareOptions(long_side=96, crop="reference" if layout == "csv" else "robust")
  boxes = 0
  for ours, theirs in zip(remote.examples, on_disk.examples):
    records_ = [prepare.decode((ex, opts, dicom.MAX_PIXELS)) for ex in (ours, theirs)]
    assert all(isinstance(r, dict) for r in records_), records_
    _assert_same_records(*records_, theirs.image_id)
    boxes += len(records_[0]["lesion_boxes" if layout == "cbis_ddsm" else "proposals"])
  assert boxes  # Boxes from the masks, or the proposal files, were read from the bucket.


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["cbis_ddsm", "csv"])
def test_prepare_from_a_bucket_root_writes_the_records_of_the_local_root(on_a_bucket, layout,
                                                                        tmp_path):
  """``tools/prepare_data.py --root gs://...`` on the local pool, record for record against the
  same files on disk."""
  local, bucket, _ = on_a_bucket[layout]
  roots = {"csv": ("--root", bucket / "images", "--csv_dir", bucket, "--proposals",
                   bucket / "proposals")}.get(layout, ("--root", bucket))
  # A fresh process: gcsfs, in the pool's workers too, reads the emulator's address at start.
  proc = helpers.run("tools/prepare_data.py", "--dataset", layout, *roots, "--out",
                     tmp_path / "remote", "--long_side", 96, "--workers", 1)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
  name = prepare.config_name(layout, 96)
  opts = prepare.read_options(tmp_path / "remote", name)
  kwargs = {"csv": {"csv_dir": local, "proposal_dir": local / "proposals"}}.get(layout, {})
  prepare.prepare(layout, local / "images" if layout == "csv" else local, tmp_path / "local",
                  opts, workers=1, **kwargs)
  manifest = {d: json.loads((tmp_path / d / prepare.MANIFEST).read_text())
              for d in ("remote", "local")}
  assert manifest["remote"]["counts"] == manifest["local"]["counts"]
  assert manifest["remote"]["bad_files"] == manifest["local"]["bad_files"]
  splits = records.splits(tmp_path / "local", name)
  assert splits and sorted(records.splits(tmp_path / "remote", name)) == sorted(splits)
  for split in splits:
    ours, theirs = (records.data_source(tmp_path / d, name, split) for d in ("remote", "local"))
    assert len(ours) == len(theirs) > 0
    for i in range(len(theirs)):
      _assert_same_records(ours[i], theirs[i], f"{split}[{i}]")


# ---------------------------------------------------------------------------------------------
# Errors.


def test_bad_arguments_and_a_folder_holding_the_layout_are_one_clear_error(tmp_path, rsna):
  out, _ = rsna
  with pytest.raises(S.SyntheticError, match=r"holds a dataset \(train_images, train.csv\)"):
    layouts.write("rsna", out, 1, size_range=SIZES)
  with pytest.raises(S.SyntheticError, match="jpeg2000_fraction must be 0.0 in the cbis_ddsm"):
    layouts.write("cbis_ddsm", tmp_path / "a", 1, size_range=SIZES, jpeg2000_fraction=0.5)
  with pytest.raises(S.SyntheticError, match="only breasts with an abnormality"):
    layouts.write("cbis_ddsm", tmp_path / "b", 1, size_range=SIZES, malignant_fraction=0,
                  benign_fraction=0)
  with pytest.raises(S.SyntheticError, match="unknown layout 'ddsm'"):
    layouts.write("ddsm", tmp_path / "c", 1)
  with pytest.raises(S.SyntheticError, match="size range"):
    layouts.write("vindr", tmp_path / "d", 1, size_range=(300, 200))
  assert not any(tmp_path.iterdir())  # Nothing written.


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_every_split_the_source_makes_holds_both_classes(tmp_path, layout):
  """The sources split off validation (and RSNA's test) by a hash of the study or patient id:
  the layouts pick ids so that, from a handful of studies, train, val and test each hold cancers
  and others, as a run needs for its AUCs."""
  out = tmp_path / layout
  layouts.write(layout, out, 10, seed=1, size_range=(120, 160), workers=1)
  kwargs = {"csv": {"csv_dir": out, "proposal_dir": out / "proposals"}}.get(layout, {})
  listing = SOURCES[layout](out / "images" if layout == "csv" else out, **kwargs)
  labels = collections.defaultdict(set)
  for ex in listing.examples:
    labels[ex.split].add(ex.label)
  assert labels == {"train": {0, 1}, "val": {0, 1}, "test": {0, 1}}, labels


@pytest.mark.slow
def test_rsna_prepares_through_the_readme_s_command(tmp_path, rsna):
  """``tools/prepare_data.py --dataset rsna --root --out``: RSNA's splits come from the patient
  ids, the same for the records as for the source."""
  out, written = rsna
  proc = helpers.run("tools/prepare_data.py", "--dataset", "rsna", "--root", out, "--out",
                     tmp_path / "data", "--long_side", "128", "--workers", "1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  listing = SOURCES["rsna"](out)
  for split in ("train", "val", "test"):
    ids = {ex.image_id for ex in listing.examples if ex.split == split}
    stored = records.data_source(tmp_path / "data", "rsna_128", split) if ids else []
    assert {r["image_id"].decode() for r in stored} == ids, split
