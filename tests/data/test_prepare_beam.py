"""prepare on Apache Beam (``tools/prepare_data.py --beam``) on the real DirectRunner, in
multi-processing mode with 2 workers, against the local pool on the same files: a truncated
DICOM and one whose RLE decoder panics among synthetic VinDr-layout studies."""

import csv
import json
import pathlib
import shutil

import numpy as np
import pydicom
import pytest

from attend_jax import errors
from attend_jax.data import layouts, prepare, records
from attend_jax.data.sources import SOURCES
from dicom_fixtures import panicking_rle, phantom, pixel_offset
import fault_jobs
import helpers

pytestmark = pytest.mark.slow
OPTS = prepare.PrepareOptions(long_side=96)
DIRECT = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"


def _bad_rows(out: pathlib.Path) -> list[tuple[str, str]]:
  with open(out / "bad_files.csv", newline="") as f:
    return [(row["path"], row["reason"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
  """(root, the local pool's output, the Beam CLI's output, the CLI's stdout)."""
  root = tmp_path_factory.mktemp("vindr")
  images = layouts.write("vindr", root, 3, seed=0, size_range=(200, 260), workers=1)
  truncated, panicking, marked = (root / images[i].image.path for i in (1, 4, 2))
  ds = pydicom.dcmread(marked)  # Burned-in text: prepared, and counted in the manifest.
  ds.BurnedInAnnotation = "YES"
  ds.save_as(marked)
  raw, start, length = pixel_offset(truncated)
  truncated.write_bytes(raw[:start + length // 3])
  panicking_rle(phantom(300, 200), panicking.parent, panicking.name)
  local = tmp_path_factory.mktemp("local")
  prepare.prepare("vindr", root, local, OPTS, workers=2)
  beam = tmp_path_factory.mktemp("beam")
  # What a failed job leaves, which this run deletes: its listings and TFDS's unfinished version.
  for path in (beam / prepare.BEAM_WORK / "vindr_96" / "listing-train-00000.jsonl",
               beam / "mammograms" / "vindr_96" / "incomplete.ABC123_1.1.0" / "x.array_record"):
    path.parent.mkdir(parents=True)
    path.write_text("left by a failed job")
  proc = helpers.run("tools/prepare_data.py", "--dataset", "vindr", "--root", root, "--out", beam,
                     "--long_side", 96, "--beam", f"--beam_pipeline_options={DIRECT}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
  return root, local, beam, proc.stdout, (truncated, panicking)


def test_beam_lists_the_truncated_and_the_panicking_file_as_the_pool_does(both):
  _, local, beam, stdout, (truncated, panicking) = both
  rows = _bad_rows(beam)
  assert sorted(rows) == sorted(_bad_rows(local))
  reasons = dict(rows)
  assert set(reasons) == {str(truncated), str(panicking)}
  assert "index out of bounds" in reasons[str(panicking)] or "Panic" in reasons[str(panicking)]
  assert "2 unusable files or rows" in stdout
  manifest, expected = (json.loads((d / "manifest.json").read_text()) for d in (beam, local))
  for key in ("builder", "options", "counts", "bad_files", "flagged_rows", "proposals_off_image",
              "marks"):
    assert manifest[key] == expected[key], key
  assert manifest["marks"] == {"generated_2d": 0, "burned_in_annotation": 1, "cad_marks": 0}
  assert manifest["bad_files"] == 2 and sum(c["images"] for c in manifest["counts"].values()) == 10
  assert sorted(manifest["counts"]) == ["test", "train", "val"]
  assert not (beam / prepare.BEAM_WORK).exists()
  assert not list((beam / "mammograms" / "vindr_96").glob("incomplete.*"))


def test_beam_writes_the_pool_s_records_record_for_record(both):
  _, local, beam, _, _ = both
  splits = records.splits(local, "vindr_96")
  assert sorted(records.splits(beam, "vindr_96")) == sorted(splits)
  for split in splits:
    ours, theirs = (records.data_source(d, "vindr_96", split) for d in (beam, local))
    assert len(ours) == len(theirs) > 0
    for i in range(len(theirs)):
      a, b = ours[i], theirs[i]
      assert a.keys() == b.keys()
      for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split}[{i}] {key}")
    assert records.ids(beam, "vindr_96", split) is not None
    for a, b in zip(records.ids(beam, "vindr_96", split), records.ids(local, "vindr_96", split)):
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  assert prepare.read_options(beam, "vindr_96") == OPTS


def test_a_finished_beam_build_is_skipped(both):
  root, _, beam, _, _ = both
  again = prepare.prepare("vindr", root, beam, OPTS, beam_options=[])
  assert again.seconds == 0.0 and len(again.bad) == 2


def test_the_decode_dofn_makes_every_failure_a_report_row_and_goes_on():
  import apache_beam as beam
  from apache_beam.testing import util

  from attend_jax.data import beam_prepare
  from attend_jax.data.sources import Example

  kinds = ["a", "raise", "panic", "segfault", "hang", "exit", "b"]
  examples = [Example(image_id=k, study_id="s", patient_id="p", laterality="L", view="CC",
                      label=0, path=f"/data/{k}.dcm", split="train") for k in kinds]
  reasons = {
      "raise": "ValueError: corrupt segment / at offset 64",
      "panic": "RustPanic: index out of bounds: the len is 120000 but the index is 120001",
      "segfault": "the worker died decoding it (SIGSEGV)",
      "hang": "took longer than 2 s; skipped",
      "exit": "the worker died decoding it (exit code 3)"}
  decode = beam_prepare.DecodeFn(OPTS, 1, time_limit=2, decode=fault_jobs.decode_example)
  with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(
      ["--runner=DirectRunner"])) as p:
    out = p | beam.Create(examples) | beam.ParDo(decode).with_outputs(
        beam_prepare.REPORT, main="records")
    util.assert_that(out.records | beam.Keys(), util.equal_to(["a", "b"]), label="records")
    util.assert_that(
        out[beam_prepare.REPORT] | beam.Map(json.loads)
        | beam.Map(lambda r: (r["file"], r["reason"])),
        util.equal_to([("", "")] * 2 + [(f"/data/{k}.dcm", r) for k, r in reasons.items()]),
        label="reports")


def test_beam_reads_dicoms_from_a_bucket_and_writes_the_records_to_one(both, gcs, tmp_path):
  root, local, _, _, (truncated, panicking) = both
  from attend_jax import paths

  bucket_root, bucket_out = paths.path(gcs.path("vindr")), paths.path(gcs.path("prepared"))
  paths.upload(root, bucket_root)
  # A fresh process: gcsfs reads the emulator's settings when it is imported.
  proc = helpers.run("tools/prepare_data.py", "--dataset", "vindr", "--root", bucket_root,
                     "--out", bucket_out, "--long_side", 96, "--beam",
                     "--beam_pipeline_options=runner=DirectRunner")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
  # The same rows, naming the files on the bucket (also in the reasons that quote the path).
  rows = list(csv.reader((bucket_out / "bad_files.csv").read_text().splitlines()))[1:]
  assert sorted(map(tuple, rows)) == sorted(
      tuple(text.replace(str(root), str(bucket_root)) for text in row) for row in _bad_rows(local))
  assert (json.loads((bucket_out / "manifest.json").read_text())["counts"]
          == json.loads((local / "manifest.json").read_text())["counts"])
  assert not (bucket_out / prepare.BEAM_WORK).exists()
  import fsspec

  copy = tmp_path / "copy"  # The ArrayRecord reader opens local files only.
  gcs_fs, prefix = fsspec.filesystem("gs"), str(bucket_out).removeprefix("gs://")
  for name in gcs_fs.find(prefix):
    target = copy / name.removeprefix(prefix + "/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gcs_fs.cat_file(name))
  for split in records.splits(local, "vindr_96"):
    ours, theirs = (records.data_source(d, "vindr_96", split) for d in (copy, local))
    assert len(ours) == len(theirs)
    for i in range(len(theirs)):
      for key in theirs[i]:
        np.testing.assert_array_equal(ours[i][key], theirs[i][key], err_msg=f"{split} {key}")


def test_a_split_where_no_image_decodes_stops_the_job_with_one_line(both, tmp_path):
  root = both[0]
  copy = tmp_path / "vindr"
  shutil.copytree(root, copy)
  for ex in SOURCES["vindr"](copy).examples:
    if ex.split == "test":
      pathlib.Path(ex.path).write_bytes(b"not a DICOM")
  with pytest.raises(errors.NoUsableImagesError, match="no image of its test split could be used"):
    prepare.prepare("vindr", copy, tmp_path / "out", OPTS, beam_options=["--runner=DirectRunner"])


def test_a_listing_without_images_is_one_line_and_its_rows_are_in_bad_files(tmp_path):
  (tmp_path / "root" / "train_images").mkdir(parents=True)
  (tmp_path / "root" / "train.csv").write_text(
      "site_id,patient_id,image_id,laterality,view,age,cancer\n1,9,90,L,CC,55,2\n")
  with pytest.raises(errors.NoUsableImagesError, match="it lists no images"):
    prepare.prepare("rsna", tmp_path / "root", tmp_path / "out", OPTS, beam_options=[])
  assert "cancer must be 0 or 1" in dict(_bad_rows(tmp_path / "out"))[
      str(tmp_path / "root" / "train.csv")]
