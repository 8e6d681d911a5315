"""Real faults, injected: corrupt pixel data, codec panics, crashed and hung workers, truncated
checkpoints, two trainers on one workdir, a full disk, kill -9, and the mistakes users make.

Each case checks the one-line message (the file and the reason), that the rest was processed,
and that nothing was lost against an uninterrupted run. ``CASES`` lists every fault case and the
tests, here and beside this file, that inject it.
"""

import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydicom.uid import JPEG2000Lossless, RLELossless

from attend_jax import inference
from attend_jax.data import dicom, pool, prepare, proposals, synthetic
from attend_jax.errors import ProposalError
from attend_jax.eval import tables
from attend_jax.data.sources import base as sources_base
from attend_jax.data.sources import cbis_ddsm
from configs import demo
from dicom_fixtures import corrupt as _corrupt, panics as _panics, phantom
from dicom_fixtures import pixel_offset as _pixel_offset, write_mg
import fault_jobs
import helpers

# The fault catalogue: every case tried as a new user would (issue P12's 34: 12 that failed or
# were partial, 22 that held), and the tests that inject each. Most live in this file; the rest
# beside it, with the code they exercise.
CASES = {
    # The 12 that failed or were partial.
    "a converted backbone in training (crashed under the run's mesh)": [
        "real_path/test_cbis_ddsm_path.py::test_the_classifier_trains_with_its_backbone_and_evaluates_and_predicts",
        "real_path/test_vindr_path.py::test_the_classifier_trains_with_its_backbone_and_evaluates_and_predicts",
        "models/test_build.py::test_the_backbone_loads_under_the_run_s_mesh_into_its_sharded_layout"],
    "two predicts on one --out": [
        "test_faults.py::test_a_second_predict_on_an_out_folder_refuses_naming_the_first"],
    "a batch that cannot fit": [
        "test_faults_training.py::test_a_batch_that_cannot_fit_is_one_line_naming_one_that_does",
        "test_faults_training.py::test_the_largest_batch_that_fits_is_estimated_from_two_compiles"],
    "a corrupt prepared shard": [
        "test_faults.py::test_a_corrupt_shard_names_itself_and_the_prepare_command",
        "test_faults.py::test_training_on_a_corrupt_shard_is_one_line"],
    "a decompression bomb": [
        "test_faults.py::test_a_header_claiming_a_huge_image_is_refused_before_decoding",
        "test_faults.py::test_a_decompression_bomb_is_a_bad_file_and_the_rest_is_prepared"],
    "Ctrl-C during prepare": [
        "test_faults.py::test_ctrl_c_in_prepare_is_one_line_saying_what_is_done_and_the_rerun_resumes"],
    "predict where no image is usable": [
        "test_faults.py::test_predict_on_files_that_are_no_images_exits_1_before_loading_a_model",
        "test_faults.py::test_predict_where_no_image_decodes_exits_1_and_keeps_the_reasons"],
    "an unreachable bucket workdir": [
        "test_faults_training.py::test_an_unreachable_bucket_is_given_up_on_within_about_10_s_naming_the_folder",
        "test_faults_training.py::test_training_in_an_unreachable_bucket_is_one_line_naming_the_workdir"],
    "a full disk during training": [
        "test_faults_training.py::test_a_full_disk_at_a_save_names_that_save_and_leaves_no_temp_folder",
        "test_faults.py::test_a_full_disk_in_training_is_one_line"],
    "a corrupt config.json of converted weights": [
        "models/test_build.py::test_a_corrupt_config_json_is_one_reason"],
    "the SemLock traceback of a pool stopped early": [
        "test_faults.py::test_a_pool_stopped_while_its_workers_start_prints_nothing"],
    "duplicate metric rows after a resume": [
        "test_faults_training.py::test_a_resumed_writer_keeps_each_step_s_row_once_the_rerun_s",
        "test_faults_training.py::test_a_rerun_after_a_run_that_logged_past_its_checkpoint_writes_each_row_once"],
    # The 22 that held.
    "kill -9 of training, then the same command": [
        "train/test_trainer.py::test_sigkill_then_the_same_command_resumes_exactly"],
    "a truncated checkpoint": [
        "test_faults.py::test_a_truncated_checkpoint_falls_back_and_loses_nothing"],
    "a second trainer on a workdir, and a killed one's lock": [
        "test_faults.py::test_a_second_trainer_on_a_workdir_refuses_and_a_killed_one_does_not_block"],
    "a decoder that raises, crashes, panics or hangs": [
        "test_faults.py::test_every_failure_of_a_worker_is_its_job_s_alone",
        "test_faults.py::test_a_guarded_worker_contains_each_failure_and_goes_on",
        "data/test_prepare_beam.py::test_the_decode_dofn_makes_every_failure_a_report_row_and_goes_on"],
    "fuzzed codec streams": [
        "test_faults.py::test_fuzzed_codecs_through_the_worker_pool_never_take_the_run_down"],
    "corrupt DICOMs in prepare": [
        "test_faults.py::test_the_real_reader_names_every_corruption",
        "test_faults.py::test_prepare_lists_each_corrupt_file_and_keeps_the_rest",
        "data/test_prepare_beam.py::test_beam_lists_the_truncated_and_the_panicking_file_as_the_pool_does"],
    "corrupt DICOMs in predict": [
        "test_faults.py::test_predict_s_preprocessing_contains_the_same_failures",
        "test_predict.py::test_predict_cli_on_a_folder_with_a_corrupt_file"],
    "proposal boxes off the image": [
        "test_faults.py::test_proposal_boxes_off_the_image_are_dropped_and_counted"],
    "bad proposal files": [
        "data/test_prepare_pipeline.py::test_bad_proposal_files_are_listed_and_the_rest_prepared"],
    "CBIS-DDSM rows without folders or masks, a CSV with a BOM": [
        "test_faults.py::test_cbis_rows_missing_folders_masks_and_a_bom"],
    "a dataset none of whose images is usable": [
        "test_faults.py::test_a_dataset_of_unusable_images_ends_in_bad_files_and_one_line"],
    "no training split": [
        "test_faults.py::test_no_training_split_is_warned_about_at_prepare_and_at_train_time"],
    "a typo or a value that cannot work in a config override": [
        "test_faults.py::test_a_bad_config_is_one_line_before_anything_is_written"],
    "a NaN loss": [
        "test_faults.py::test_the_nan_stop_is_one_line_and_says_there_was_no_checkpoint",
        "train/test_trainer.py::test_nan_stops_and_keeps_the_last_good_checkpoint"],
    "kill -9 of prepare": [
        "test_faults.py::test_kill_9_of_prepare_leaves_no_worker_behind_and_the_rerun_finishes"],
    "a full disk during prepare": [
        "test_faults.py::test_a_full_disk_in_prepare_is_one_line_and_the_rerun_loses_nothing"],
    "a read-only workdir": ["test_faults.py::test_a_read_only_workdir_is_one_line"],
    "a dataset that is not prepared": [
        "test_configs.py::test_missing_dataset_is_one_clear_message"],
    "predict's inputs and output folder, before the model loads": [
        "test_faults.py::test_predict_checks_its_inputs_and_output_before_loading_a_model"],
    "predict killed halfway keeps what it predicted": [
        "test_faults.py::test_predict_writes_each_row_as_its_batch_is_done"],
    "weights offline, truncated, of another variant": [
        "convert/test_dinov2.py::test_offline_download_says_which_url_and_where",
        "convert/test_dinov2.py::test_truncated_file",
        "convert/test_dinov2.py::test_wrong_variant_names_shapes"],
    "SIGTERM and SIGKILL of a run on a bucket": [
        "train/test_buckets_and_preemption.py::test_a_bucket_run_killed_then_preempted_resumes_exactly_and_is_read_back"],
}

def test_every_case_of_the_catalogue_has_the_tests_it_names():
  import ast

  assert len(CASES) == 34
  here = pathlib.Path(__file__).parent
  defined = {}
  for ref in {r for refs in CASES.values() for r in refs}:
    file, name = ref.split("::")
    if file not in defined:
      tree = ast.parse((here / file).read_text())
      defined[file] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert name in defined[file], f"{ref} (in CASES) is no test"


# ----------------------------------------------------------------------------------------------
# Files whose decoders fail.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt_files(tmp_path_factory):
  """Good DICOMs and corrupt ones: RLE (one that panics pylibjpeg-rle), JPEG 2000 and
  uncompressed pixel data broken at several offsets, a truncated file."""
  root = tmp_path_factory.mktemp("corrupt")
  good, bad = root / "good", root / "bad"
  good.mkdir(), bad.mkdir()
  rng = np.random.default_rng(0)
  sources = {}
  for name, syntax in (("rle", RLELossless), ("j2k", JPEG2000Lossless), ("raw", None)):
    pixels = phantom(300, 200, seed=len(sources))
    pixels[40:260, :130] += rng.integers(0, 20000, (220, 130))
    sources[name] = write_mg(pixels, good, f"{name}.dcm", bits=16, syntax=syntax)
  made = []
  # 64 zero bytes 64+ bytes into an RLE frame: the segment lengths stop adding up, and for some
  # offsets pylibjpeg-rle's Rust code indexes out of bounds and panics.
  for offset in range(200, 60_000, 331):
    candidate = _corrupt(sources["rle"], bad / "rle_panic.dcm", offset)
    if _panics(candidate):
      made.append(candidate)
      break
  assert made, "no corruption made pylibjpeg-rle panic; the codec changed"
  for offset in (0, 8, 64, 1000):
    made.append(_corrupt(sources["rle"], bad / f"rle_{offset}.dcm", offset))
  for offset in (0, 8, 64):
    made.append(_corrupt(sources["j2k"], bad / f"j2k_{offset}.dcm", offset))
  raw, start, length = _pixel_offset(sources["raw"])
  (bad / "raw_truncated.dcm").write_bytes(raw[:start + length // 3])
  made.append(bad / "raw_truncated.dcm")
  return {"good": sorted(sources.values()), "bad": made, "root": root}


def test_every_failure_of_a_worker_is_its_job_s_alone():
  jobs = ["a", "raise", "panic", "b", "segfault", "hang", "exit", "c"]
  out = dict(pool.guarded_map(fault_jobs.job, jobs, workers=2, preload=["fault_jobs"],
                              time_limit=5))
  assert [out[k] for k in "abc"] == ["A", "B", "C"]  # The rest was processed.
  reasons = {k: v.reason for k, v in out.items() if isinstance(v, pool.Failure)}
  assert reasons == {
      "raise": "ValueError: corrupt segment / at offset 64",
      "panic": "RustPanic: index out of bounds: the len is 120000 but the index is 120001",
      "segfault": "the worker died decoding it (SIGSEGV)",
      "hang": "took longer than 5 s; skipped",
      "exit": "the worker died decoding it (exit code 3)"}


def test_a_guarded_worker_contains_each_failure_and_goes_on():
  worker = pool.GuardedWorker(preload=["fault_jobs"], time_limit=2)
  try:
    out = {kind: worker(fault_jobs.job, kind)
           for kind in ["a", "raise", "panic", "segfault", "b", "hang", "exit", "c"]}
  finally:
    worker.close()
  assert [out[k] for k in "abc"] == ["A", "B", "C"]
  assert {k: v.reason for k, v in out.items() if isinstance(v, pool.Failure)} == {
      "raise": "ValueError: corrupt segment / at offset 64",
      "panic": "RustPanic: index out of bounds: the len is 120000 but the index is 120001",
      "segfault": "the worker died decoding it (SIGSEGV)",
      "hang": "took longer than 2 s; skipped",
      "exit": "the worker died decoding it (exit code 3)"}


# Preloaded by the forkserver: of a pool's workers, the first to open the pool's locks goes on;
# the others wait there until the pool stops them (SIGTERM), and only then open the locks. The
# workers still being started when a pool stops (a short map on many cores: 2 of 15 predict
# runs) thus happen on cue, not by chance.
_HOLD_WORKERS = '''
import os, signal, time
from multiprocessing import synchronize

rebuild = synchronize.SemLock.__setstate__
went_on = False


def held(self, state):
  global went_on
  try:  # Atomic: one worker only is the first to open a lock.
    os.close(os.open(os.path.join(os.environ["HOLD_DIR"], state[-1].lstrip("/")),
                     os.O_CREAT | os.O_EXCL))
    went_on = True
  except FileExistsError:
    pass
  if went_on:
    return rebuild(self, state)
  stopped = []
  signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
  while not stopped:
    time.sleep(0.01)
  rebuild(self, state)  # Fails if the pool has already unlinked its locks.
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  os.kill(os.getpid(), signal.SIGTERM)


synchronize.SemLock.__setstate__ = held
'''


def test_a_pool_stopped_while_its_workers_start_prints_nothing(tmp_path):
  (tmp_path / "hold_workers.py").write_text(_HOLD_WORKERS)
  code = ("from attend_jax.data import pool\n"
          "out = list(pool.guarded_map(str, [1], workers=4, preload=['hold_workers']))\n"
          "assert out == [(1, '1')], out\n")
  # On PYTHONPATH: the forkserver of Python 3.11 imports its preload before it sets sys.path.
  python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
  proc = helpers.run("-c", code, extra_env={"HOLD_DIR": str(tmp_path), "PYTHONPATH": python_path})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr


def test_the_real_reader_names_every_corruption(corrupt_files):
  for path in corrupt_files["bad"]:
    with pytest.raises(dicom.DicomError) as e:
      dicom.read_dicom(path)
    assert e.value.path == str(path)
    assert "cannot decode transfer syntax" not in e.value.reason, e.value.reason
  # The panic's own words survive, not a truncated first line.
  with pytest.raises(dicom.DicomError, match="PanicException|index out of bounds"):
    dicom.read_dicom(corrupt_files["bad"][0])


def test_prepare_lists_each_corrupt_file_and_keeps_the_rest(corrupt_files, tmp_path):
  listing = sources_base.Listing(
      [sources_base.Example(image_id=p.stem, study_id=p.stem, patient_id=p.stem,
                            laterality="L", view="CC", label=i % 2, path=str(p), split="train")
       for i, p in enumerate(corrupt_files["good"] + corrupt_files["bad"])], [])
  prepare.SOURCES["faults"] = lambda root: listing
  try:
    result = prepare.prepare("faults", corrupt_files["root"], tmp_path,
                             prepare.PrepareOptions(long_side=64), workers=2)
  finally:
    del prepare.SOURCES["faults"]
  assert result.counts == {"train": {"images": 3, "cancer": 1}}
  bad = dict(result.bad)
  assert set(bad) == {str(p) for p in corrupt_files["bad"]}
  assert all(reason for reason in bad.values())
  with open(tmp_path / "bad_files.csv", newline="") as f:
    assert {r["path"] for r in csv.DictReader(f)} == set(bad)
  assert not list(tmp_path.rglob("*.tmp.npz"))


def test_predict_s_preprocessing_contains_the_same_failures(corrupt_files):
  config = demo.get_config("smoke")
  paths = corrupt_files["good"] + corrupt_files["bad"]
  out = {path: (record, error) for path, record, error in inference.preprocess(paths, config)}
  assert all(out[str(p)][0] is not None for p in corrupt_files["good"])
  assert all(out[str(p)][1] for p in corrupt_files["bad"])


def _bomb(folder: pathlib.Path, name: str = "bomb.dcm", syntax=RLELossless) -> pathlib.Path:
  """A small compressed DICOM whose header says 60,000 x 60,000 pixels (7.2 GB decoded)."""
  path = write_mg(phantom(64, 48), folder, name, bits=16, syntax=syntax)
  ds = pydicom.dcmread(path)
  ds.Rows = ds.Columns = 60_000
  ds.save_as(path)
  return path


def test_a_header_claiming_a_huge_image_is_refused_before_decoding(corrupt_files, tmp_path,
                                                                  monkeypatch):
  bombs = [_bomb(tmp_path, "rle.dcm"), _bomb(tmp_path, "j2k.dcm", JPEG2000Lossless)]
  with monkeypatch.context() as m:
    m.setattr(dicom, "_decode", lambda ds, path: pytest.fail(f"{path} was decoded"))
    for bomb in bombs:
      with pytest.raises(dicom.DicomError) as e:
        dicom.read_dicom(bomb)
      assert e.value.path == str(bomb)
      assert "60000 x 60000 pixels (3600 megapixels)" in e.value.reason, e.value.reason
      assert "--max_megapixels" in e.value.reason
  # The default takes the largest real mammograms (about 5k x 6k) with room to spare: a header
  # of 6000 x 5000 gets as far as decoding (its pixel data is short: a decoder's reason).
  big = write_mg(phantom(64, 48), tmp_path, "big.dcm")
  ds = pydicom.dcmread(big)
  ds.Rows, ds.Columns = 6000, 5000
  ds.save_as(big)
  with pytest.raises(dicom.DicomError, match="pixel data truncated or corrupt"):
    dicom.read_dicom(big)
  # The limit is the caller's to set.
  good = corrupt_files["good"][0]
  assert dicom.read_dicom(good, max_pixels=300 * 200).pixels.shape == (300, 200)
  with pytest.raises(dicom.DicomError, match="above the limit of 0.05 megapixels"):
    dicom.read_dicom(good, max_pixels=50_000)
  # predict's preprocessing (in its worker pool) refuses it the same way.
  config = demo.get_config("smoke")
  out = {path: error for path, _, error in inference.preprocess([good, bombs[0]], config)}
  assert out[str(good)] is None and "3600 megapixels" in out[str(bombs[0])]


@pytest.mark.slow
def test_a_decompression_bomb_is_a_bad_file_and_the_rest_is_prepared(tmp_path):
  synthetic.generate(tmp_path / "dicom", 1, seed=3, size_range=(200, 260), jpeg2000_fraction=0)
  victim = sorted((tmp_path / "dicom" / "images").rglob("*.dcm"))[0]
  _bomb(victim.parent, victim.name)
  proc = helpers.run("tools/prepare_data.py", "--dataset=synthetic",
                     f"--root={tmp_path / 'dicom'}", f"--out={tmp_path / 'out'}",
                     "--long_side=64", "--workers=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "out" / "bad_files.csv", newline="") as f:
    [row] = list(csv.DictReader(f))
  assert row["path"] == str(victim) and "above the limit of 100 megapixels" in row["reason"]
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert sum(c["images"] for c in manifest["counts"].values()) == 3


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["rle", "j2k", "raw"]), st.floats(0, 1),
                          st.integers(1, 512), st.integers(0, 255)), min_size=12, max_size=12))
def test_fuzzed_codecs_through_the_worker_pool_never_take_the_run_down(tmp_path_factory,
                                                                       corruptions):
  """Random corruptions of real encoded files, decoded by the real reader in the real pool:
  every file ends as pixels or as a reason, and the run goes on (25 x 12 = 300 corruptions)."""
  root = tmp_path_factory.mktemp("fuzz")
  rng = np.random.default_rng(1)
  src = {}
  for name, syntax in (("rle", RLELossless), ("j2k", JPEG2000Lossless), ("raw", None)):
    src[name] = write_mg(rng.integers(0, 4000, (96, 80)), root, f"{name}.dcm", bits=12,
                         syntax=syntax)
  files = []
  for i, (kind, where, length, value) in enumerate(corruptions):
    _, _, size = _pixel_offset(src[kind])
    files.append(_corrupt(src[kind], root / f"c{i}.dcm", int(where * max(size - 1, 0)), length,
                          value))
  results = list(pool.guarded_map(fault_jobs.decode, files, workers=2, preload=["fault_jobs"],
                                  time_limit=60))
  assert [f for f, _ in results] == files
  for _, out in results:
    assert isinstance(out, (tuple, str, pool.Failure)), out


# ----------------------------------------------------------------------------------------------
# Proposal boxes and CBIS-DDSM rows.
# ----------------------------------------------------------------------------------------------


def test_proposal_boxes_off_the_image_are_dropped_and_counted(tmp_path):
  boxes = np.array([[50, 50, 20, 20, 0.9], [5000, 50, 20, 20, 0.8], [60, 40, 30, 10, 0.7],
                    [-100, -100, 10, 10, 0.6]], np.float32)
  kept, off = proposals.on_image(boxes, (120, 90))
  assert off == 2 and kept[:, 4].tolist() == pytest.approx([0.9, 0.7])
  with pytest.raises(ProposalError, match="none of its 2 boxes overlaps the image"):
    proposals.on_image(boxes[[1, 3]], (120, 90), tmp_path / "x_preds.txt")
  # Through prepare: the record's proposals all lie on the crop.
  img = phantom(120, 90)
  path = write_mg(img, tmp_path, "img.dcm")
  (tmp_path / "img_preds.txt").write_text("".join(" ".join(map(str, b)) + "\n" for b in boxes))
  ex = sources_base.Example("img", "s", "p", "L", "CC", 0, str(path), "train",
                            proposals_path=str(tmp_path / "img_preds.txt"))
  record = prepare.process_example(ex, prepare.PrepareOptions(long_side=256, crop="reference"))
  assert record["proposals_off_image"] == 2 and len(record["proposals"]) == 2


def _fake_cbis_rows(root: pathlib.Path, bom: bool) -> None:
  """Two patients x two views, NBIA folders; one row whose DICOM folder is missing and one
  whose ROI mask is missing."""
  header = ("patient_id,breast density,left or right breast,image view,abnormality id,"
            "abnormality type,pathology,image file path,cropped image file path,"
            "ROI mask file path\n")
  lines = []
  for p in range(2):
    for view in ("CC", "MLO"):
      name = f"Mass-Training_P_{p:05d}_LEFT_{view}"
      folder = root / "CBIS-DDSM" / name / "07-20-2016-DDSM-1" / "1.000000-full"
      folder.mkdir(parents=True)
      write_mg(phantom(160, 120, seed=p), folder, "1-1.dcm", bits=16)
      if view == "CC":
        mask = root / "CBIS-DDSM" / f"{name}_1" / "07-21-2016-DDSM-2" / "1.000000-ROI"
        mask.mkdir(parents=True)
        m = np.zeros((160, 120))
        m[50:70, 20:40] = 255
        write_mg(m, mask, "1-1.dcm", bits=8)
      lines.append(f"P_{p:05d},2,LEFT,{view},1,mass,MALIGNANT,{name}/1.2/0.dcm,{name}_1/x.dcm,"
                   f"{name}_1/1.2/1.dcm\n")
  lines.append("P_00009,2,LEFT,CC,1,mass,BENIGN,Mass-Training_P_00009_LEFT_CC/1.2/0.dcm,x,"
               "Mass-Training_P_00009_LEFT_CC_1/1.dcm\n")
  text = header + "".join(lines)
  (root / "mass_case_description_train_set.csv").write_bytes(
      ("\ufeff" if bom else "").encode() + text.encode())


@pytest.mark.slow
def test_cbis_rows_missing_folders_masks_and_a_bom(tmp_path):
  _fake_cbis_rows(tmp_path / "raw", bom=True)  # As Excel saves it.
  listing = cbis_ddsm.list_examples(tmp_path / "raw")
  assert len(listing.examples) == 4
  reasons = [e.reason for e in listing.bad]
  assert sum("no DICOM folder 'Mass-Training_P_00009_LEFT_CC'" in r for r in reasons) == 1
  missing_masks = [e for e in listing.bad if isinstance(e, cbis_ddsm.MissingMaskError)]
  assert len(missing_masks) == 2  # Both MLO rows (P_00009's row has no images at all).
  proc = helpers.run("tools/prepare_data.py", "--dataset=cbis_ddsm", f"--root={tmp_path / 'raw'}",
                     f"--out={tmp_path / 'out'}", "--long_side=64", "--workers=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Every split is training here: CBIS's test split comes from the test CSVs, absent.
  assert "warning: no training images" not in proc.stderr
  with open(tmp_path / "out" / "bad_files.csv", newline="") as f:
    assert len(list(csv.DictReader(f))) == len(listing.bad)
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["flagged_rows"] == {"LabelError": 1, "MissingMaskError": 2}


@pytest.mark.slow
def test_a_dataset_of_unusable_images_ends_in_bad_files_and_one_line(tmp_path):
  _fake_cbis_rows(tmp_path / "raw", bom=False)
  for path in (tmp_path / "raw").rglob("1-1.dcm"):
    path.write_bytes(b"DICM" + bytes(100))  # Every image unreadable.
  proc = helpers.run("tools/prepare_data.py", "--dataset=cbis_ddsm", f"--root={tmp_path / 'raw'}",
                     f"--out={tmp_path / 'out'}", "--long_side=64", "--workers=1")
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and "none of its 4 images could be used" in lines[-1]
  assert "Traceback" not in proc.stderr and "No examples were yielded" not in proc.stderr
  with open(tmp_path / "out" / "bad_files.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert sum(r["path"].endswith("1-1.dcm") for r in rows) == 4


@pytest.mark.slow
def test_no_training_split_is_warned_about_at_prepare_and_at_train_time(tmp_path):
  _fake_cbis_rows(tmp_path / "raw", bom=False)
  csv_path = tmp_path / "raw" / "mass_case_description_train_set.csv"
  csv_path.rename(tmp_path / "raw" / "mass_case_description_test_set.csv")
  proc = helpers.run("tools/prepare_data.py", "--dataset=cbis_ddsm", f"--root={tmp_path / 'raw'}",
                     f"--out={tmp_path / 'out'}", "--long_side=64", "--workers=1")
  assert proc.returncode == 0 and "warning: no training images" in proc.stderr
  proc = helpers.run("-m", "attend_jax.main", "--config=configs/cbis.py:smoke",
                     f"--workdir={tmp_path / 'run'}", f"--config.data.dir={tmp_path / 'out'}",
                     "--config.data.name=cbis_ddsm_64", "--config.data.image_size=64")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert "training needs a 'train' split" in last and "eval_split" not in last


# ----------------------------------------------------------------------------------------------
# DDSM film scans as predict meets them: no tags, NBIA names, a StudyInstanceUID per image.
# ----------------------------------------------------------------------------------------------


def _nbia_tree(root: pathlib.Path) -> list[pathlib.Path]:
  paths = []
  for p in (1, 2):
    for side in ("LEFT", "RIGHT"):
      for view in ("CC", "MLO"):
        name = f"Mass-Training_P_{p:05d}_{side}_{view}"
        folder = root / name / "07-20-2016-DDSM-1" / "1.000000-full mammogram images-1"
        folder.mkdir(parents=True)
        paths.append(write_mg(phantom(120, 90, seed=p), folder, "1-1.dcm", bits=16,
                              ImageLaterality=None, ViewPosition=None, PatientID=name,
                              StudyInstanceUID=pydicom.uid.generate_uid()))
  return paths


def test_nbia_names_give_view_side_patient_exams_and_unique_ids(tmp_path):
  paths = _nbia_tree(tmp_path)
  ids = inference.image_ids(paths)
  assert len(set(ids)) == 8 and all(i.endswith("/1-1") for i in ids)
  examples = [inference.example(p, image_id=i) for p, i in zip(paths, ids)]
  assert {(e.laterality, e.view) for e in examples} == {(l, v) for l in "LR" for v in ("CC", "MLO")}
  assert {e.study_id for e in examples} == {"P_00001", "P_00002"}
  images = [{"study_id": e.study_id, "laterality": e.laterality, "probability": 0.5}
            for e in examples]
  breasts, exams = tables.breasts_and_exams(images)
  assert len(breasts) == 4 and len(exams) == 2
  # Overlay names follow the ids: one file per image, none overwritten.
  assert len({i.replace("/", "__") for i in ids}) == 8


def test_predict_writes_each_row_as_its_batch_is_done(tmp_path):
  writer = inference.OutputWriter(tmp_path)
  rows = [{"path": f"/x/{i}.dcm", "image_id": str(i), "study_id": "s", "laterality": "L",
           "view": "CC", "probability": 0.5, "rois": []} for i in range(3)]
  for row in rows:
    writer.rows([row])
  # A crash now (before finish) keeps what was predicted.
  with open(tmp_path / "predictions.csv", newline="") as f:
    assert [r["image_id"] for r in csv.DictReader(f)] == ["0", "1", "2"]


@pytest.mark.slow
def test_predict_checks_its_inputs_and_output_before_loading_a_model(tmp_path):
  no_model = tmp_path / "no_model"  # Not even a run: the inputs must be found wanting first.
  proc = helpers.run("-m", "attend_jax.predict", f"--workdir={no_model}", tmp_path / "nope.dcm",
                     tmp_path, f"--out={tmp_path / 'o'}")
  assert proc.returncode == 1
  assert f"warning: {tmp_path / 'nope.dcm'}: no such file or folder" in proc.stderr
  assert f"warning: {tmp_path}: a folder without DICOM files" in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: no DICOM files")
  (tmp_path / "in").mkdir()
  write_mg(phantom(60, 40), tmp_path / "in", "a.dcm")
  (tmp_path / "taken").write_text("a file, not a folder")
  proc = helpers.run("-m", "attend_jax.predict", f"--workdir={no_model}", tmp_path / "in",
                     f"--out={tmp_path / 'taken'}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and str(tmp_path / "taken") in last


def _bad_files(out: pathlib.Path) -> dict[str, str]:
  with open(out / "bad_files.csv", newline="") as f:
    return {pathlib.Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}


@pytest.mark.slow
def test_predict_on_files_that_are_no_images_exits_1_before_loading_a_model(tmp_path):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "zeros.dcm").write_bytes(b"DICM" + bytes(200))
  _bomb(tmp_path / "in")
  write_mg(phantom(60, 40), tmp_path / "in", "colour.dcm", photometric="RGB")
  out, no_model = tmp_path / "out", tmp_path / "no_model"  # It must not get as far as a model.
  proc = helpers.run("-m", "attend_jax.predict", f"--workdir={no_model}", tmp_path / "in",
                     tmp_path / "gone.dcm", f"--out={out}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last == f"error: none of the 3 files is a usable image; {out}/bad_files.csv says why", last
  assert "no config.json" not in proc.stderr and "0 images" not in proc.stdout
  bad = _bad_files(out)
  assert set(bad) == {"zeros.dcm", "bomb.dcm", "colour.dcm", "gone.dcm"}
  assert "megapixels" in bad["bomb.dcm"] and "MONOCHROME" in bad["colour.dcm"]


@pytest.fixture(scope="module")
def untrained_export(tmp_path_factory):
  """A classifier with fresh weights as a converted checkpoint: enough for predict to load."""
  from attend_jax import run, tasks

  c = helpers.tiny_config()
  folder = tmp_path_factory.mktemp("untrained")
  run.save_export(folder, tasks.get(c).build_model(), c)
  return folder


@pytest.mark.slow
def test_predict_where_no_image_decodes_exits_1_and_keeps_the_reasons(corrupt_files,
                                                                      untrained_export,
                                                                      tmp_path):
  broken = [p for p in corrupt_files["bad"] if p.name.startswith("j2k_")]
  out = tmp_path / "out"
  proc = helpers.run("-m", "attend_jax.predict", f"--checkpoint={untrained_export}", *broken,
                     f"--out={out}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (f"error: none of the {len(broken)} files is a usable image;"
                  f" {out}/bad_files.csv says why"), last
  assert "0 images" not in proc.stdout
  assert set(_bad_files(out)) == {p.name for p in broken}
  assert proc.stderr.count("this model has no calibration.json") == 1  # Said once.


def _start_predict_held_at_loading(*args):
  """A predict that holds still where it starts loading the model."""
  code = ("import sys, time\n"
          "from attend_jax import cli, predict, run\n"
          "def load(directory, mesh=None):\n"
          "  print('loading the model', flush=True)\n"
          "  while True:\n"
          "    time.sleep(1)\n"
          "run.load = load\n"
          "sys.argv = ['predict'] + sys.argv[1:]\n"
          "cli.run(predict.main)\n")
  return helpers.start("-c", code, *args)


@pytest.mark.slow
def test_a_second_predict_on_an_out_folder_refuses_naming_the_first(tmp_path):
  (tmp_path / "in").mkdir()
  write_mg(phantom(60, 40), tmp_path / "in", "a.dcm")
  out, no_model = tmp_path / "out", tmp_path / "no_model"
  args = (f"--workdir={no_model}", tmp_path / "in", f"--out={out}")
  first = _start_predict_held_at_loading(*args)
  try:
    assert first.stdout.readline().strip() == "loading the model"
    written = (out / "predictions.csv").stat().st_mtime_ns
    second = helpers.run("-m", "attend_jax.predict", *args)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    [line] = second.stderr.strip().splitlines()
    assert line.startswith(f"error: {out} is in use by another run (pid {first.pid} on"), line
    assert line.endswith("choose another --out.")
    assert (out / "predictions.csv").stat().st_mtime_ns == written  # Not touched.
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()


# ----------------------------------------------------------------------------------------------
# Mistakes users make: one line each, and nothing written.
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("override,message", [
    ("--config.train.stpes=5", 'error: --config.train.stpes: the config has no such setting;'
                               ' did you mean "steps"'),
    ("--config.proposals.source=gird", "error: config.proposals.source must be one of"),
    ("--config.data.batch_size=-8", "error: config.data.batch_size must be a positive integer"),
])
def test_a_bad_config_is_one_line_before_anything_is_written(tmp_path, override, message):
  proc = helpers.run("-m", "attend_jax.main", "--config=configs/demo.py:smoke",
                     f"--workdir={tmp_path / 'run'}", f"--config.data.dir={tmp_path / 'd'}",
                     override)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
  assert proc.stderr.strip().startswith(message), proc.stderr
  assert not (tmp_path / "run").exists() and not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------
# Runs: the workdir lock, checkpoints that do not read, NaN, kill -9, a full disk.
# ----------------------------------------------------------------------------------------------


def _train_args(data, workdir, *extra):
  return ("-m", "attend_jax.main", "--config=configs/demo.py:smoke", f"--workdir={workdir}",
          f"--config.data.dir={data}", "--config.data.name=synthetic_96",
          "--config.data.image_size=96", "--config.data.synthetic.num_studies=0",
          "--config.model.roi_size=28", "--config.train.checkpoint_every=3",
          "--config.proposals.source=grid",  # predict then needs no proposal files.
          "--config.data.eval_split=train",  # Both classes: a best checkpoint is kept.
          "--config.train.eval_every=3", "--config.train.log_every=1", *extra)


@pytest.mark.slow
def test_a_truncated_checkpoint_falls_back_and_loses_nothing(tiny_data, tmp_path):
  broken = tmp_path / "broken"
  assert helpers.run(*_train_args(tiny_data, broken, "--config.train.steps=6")).returncode == 0
  _, straight = helpers.latest_params(broken)  # Step 6 as trained, before it is broken.
  # Truncate every array file of the newest checkpoint, and of the best one.
  assert list((broken / "best").iterdir())
  for sub in ("checkpoints/6", "best"):
    for f in sorted((broken / sub).rglob("ocdbt.process_0/d/*")):
      f.write_bytes(f.read_bytes()[:50])
  proc = helpers.run("-m", "attend_jax.predict", f"--workdir={broken}",
                     tiny_data / "dicom" / "images", f"--out={tmp_path / 'pred'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr.count("could not be read") == 2  # best/ and checkpoints/6, each said.
  assert "checkpoints step 3" in proc.stderr  # best/ and step 6 broken: it says it used 3.
  # Resume: checkpoint 6 is set aside, 3 restores, and training to 6 again gives the same.
  shutil.rmtree(broken / "eval")
  proc = helpers.run(*_train_args(tiny_data, broken, "--config.train.steps=6"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "warning: checkpoint checkpoints/6 could not be read" in proc.stderr
  assert "Resumed from step 3" in proc.stdout and "Traceback" not in proc.stderr
  assert (broken / "corrupt_checkpoints" / "checkpoints-6").is_dir()  # Kept, not deleted.
  step, resumed = helpers.latest_params(broken)
  assert step == 6
  helpers.assert_same_trees(straight, resumed)


def _start_paused(data, workdir, steps=6, pause_at=4):
  """A trainer that holds still after step ``pause_at``, however long it takes to be killed."""
  code = (
      "import sys, time\n"
      "from attend_jax import main\n"
      "from attend_jax.train import trainer\n"
      "printed = trainer.log\n"
      "def log(message, *args):\n"
      "  printed(message, *args)\n"
      f"  if message.startswith('step %d/%d') and args[0] == {pause_at}:\n"
      "    while True:\n"
      "      time.sleep(1)\n"
      "trainer.log = log\n"
      "sys.argv = ['main'] + sys.argv[1:]\n"
      "main.cli.run(main.main)\n")
  return helpers.start("-c", code, *_train_args(data, workdir, f"--config.train.steps={steps}")[2:])


def _wait_for(path: pathlib.Path, proc) -> None:
  deadline = time.time() + helpers.HANG_GUARD_S
  while not path.exists():
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
    time.sleep(0.1)


@pytest.mark.slow
def test_a_second_trainer_on_a_workdir_refuses_and_a_killed_one_does_not_block(tiny_data,
                                                                             tmp_path):
  work = tmp_path / "run"
  first = _start_paused(tiny_data, work)
  _wait_for(work / "checkpoints" / "3" / "_CHECKPOINT_METADATA", first)
  second = helpers.run(*_train_args(tiny_data, work, "--config.train.steps=6"))
  assert second.returncode == 1 and "Traceback" not in second.stderr
  line = second.stderr.strip().splitlines()[-1]
  assert f"error: {work} is in use by another run (pid {first.pid} on" in line
  assert (work / "checkpoints" / "3").is_dir() and not (work / "checkpoints" / "6").exists()
  first.send_signal(signal.SIGKILL)
  first.wait()
  # The killed run's lock file is still there; the same command resumes and finishes.
  assert (work / ".lock").exists()
  proc = helpers.run(*_train_args(tiny_data, work, "--config.train.steps=6"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Resumed from step 3" in proc.stdout


def _corrupt_shards(data: pathlib.Path, split: str, copy: pathlib.Path) -> pathlib.Path:
  """The ``split`` shard of ``copy``, a copy of the prepared ``data``, with bytes flipped in
  every 4 kB (its chunks' hashes no longer match, wherever a reader starts)."""
  shutil.copytree(data, copy, ignore=shutil.ignore_patterns("dicom", "cache"))
  [shard] = copy.glob(f"mammograms/*/*/mammograms-{split}.array_record-*")
  raw = bytearray(shard.read_bytes())
  for start in range(100, len(raw) - 64, 4096):
    raw[start:start + 64] = b"\xff" * 64
  shard.write_bytes(bytes(raw))
  return shard


def test_a_corrupt_shard_names_itself_and_the_prepare_command(tiny_data, tmp_path):
  from attend_jax.data import pipeline, records
  from attend_jax.errors import CorruptRecordsError

  data = tmp_path / "data"
  shard = _corrupt_shards(tiny_data, "train", data)
  want = (f"{shard}: the prepared records cannot be read (Corrupted Riegeli/records file", (
      f"; prepare them again: delete {data / 'mammograms' / 'synthetic_96'} and rerun python"
      f" tools/prepare_data.py --dataset synthetic --root {tiny_data / 'dicom'} --out {data}"
      " --long_side 96"))
  for workers in (0, 1):  # Read here, and in a grain worker process.
    cfg = pipeline.PipelineConfig(data_dir=str(data), config="synthetic_96", batch_size=2,
                                  image_size=96, worker_count=workers)
    with pytest.raises(CorruptRecordsError) as e:
      next(iter(pipeline.make_dataset(cfg)))
    assert e.value.path == str(shard)
    assert str(e.value).startswith(want[0]) and str(e.value).endswith(want[1]), str(e.value)
  # Evaluation's ids come from the side table prepare wrote, without reading a shard; records
  # prepared before it existed are read, and name the corrupt shard.
  assert [r["image_id"] for r in pipeline.record_ids(cfg, [0, 1])] == [
      r["image_id"] for r in records.ids(data, "synthetic_96", "train")[:2]]
  pathlib.Path(records.builder(data, "synthetic_96").data_dir, "ids-train.json").unlink()
  with pytest.raises(CorruptRecordsError, match="prepare them again"):
    pipeline.record_ids(cfg, [0, 1])
  with pytest.raises(CorruptRecordsError, match="prepare them again"):
    records.write_ids(data, "synthetic_96", missing_only=True)


@pytest.mark.slow
def test_training_on_a_corrupt_shard_is_one_line(tiny_data, tmp_path):
  shard = _corrupt_shards(tiny_data, "train", tmp_path / "data")
  proc = helpers.run(*_train_args(tmp_path / "data", tmp_path / "run", "--config.train.steps=2",
                                  "--config.data.worker_count=1"))
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {shard}: the prepared records cannot be read"), last
  assert "rerun python tools/prepare_data.py --dataset synthetic" in last


@pytest.mark.slow
def test_the_nan_stop_is_one_line_and_says_there_was_no_checkpoint(tiny_data, tmp_path):
  proc = helpers.run(*_train_args(tiny_data, tmp_path / "run", "--config.loss.pos_weight=nan",
                                  "--config.train.steps=2"))
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith("error: Loss is nan at step 1") and "no checkpoint" in line
  assert "None" not in line


def _processes_with(marker: str) -> list[int]:
  found = []
  for proc in pathlib.Path("/proc").iterdir():
    if proc.name.isdigit():
      try:
        if marker.encode() in (proc / "environ").read_bytes():
          found.append(int(proc.name))
      except OSError:
        continue  # Gone meanwhile, or not ours to read.
  return found


@pytest.mark.slow
def test_ctrl_c_in_prepare_is_one_line_saying_what_is_done_and_the_rerun_resumes(tmp_path):
  synthetic.generate(tmp_path / "dicom", 1, seed=4, size_range=(200, 260), jpeg2000_fraction=0)
  with open(tmp_path / "dicom" / "labels.csv", newline="") as f:
    last = tmp_path / "dicom" / list(csv.DictReader(f))[-1]["path"]
  # The last image to decode (one worker, in order) is a pipe nothing writes to: its worker
  # waits there, so Ctrl-C finds three images done however fast the machine is.
  last.rename(tmp_path / "kept.dcm")
  os.mkfifo(last)
  args = [sys.executable, "tools/prepare_data.py", "--dataset=synthetic",
          f"--root={tmp_path / 'dicom'}", f"--out={tmp_path / 'out'}", "--long_side=64",
          "--workers=1", "--keep_cache"]
  # A session of its own, so that the signal goes to its process group, as a terminal's does,
  # and SIGINT's default handling as a shell gives it: pytest-xdist workers ignore SIGINT, and a
  # Python started with it ignored never raises KeyboardInterrupt.
  proc = subprocess.Popen(args, cwd=helpers.REPO, env=helpers.env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  cache = tmp_path / "out" / "cache"
  # Finished cache entries; one being written is a .tmp.npz until it is renamed.
  finished = lambda: [p for p in cache.rglob("*.npz") if not p.name.endswith(".tmp.npz")]  # noqa: E731
  deadline = time.time() + helpers.HANG_GUARD_S
  while len(finished()) < 3:
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.05)
  done = {p: p.stat().st_ino for p in finished()}
  os.killpg(proc.pid, signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=helpers.HANG_GUARD_S)
  assert proc.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
  said = [l for l in stderr.splitlines() if l.strip() and not l.startswith("decoding: ")]
  assert said == [f"interrupted: 3 of 4 images are prepared (kept in {cache / 'synthetic_64'});"
                  " rerunning the same command resumes"], stderr
  last.unlink()
  (tmp_path / "kept.dcm").rename(last)
  rerun = helpers.run(*args[1:])
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert {p: p.stat().st_ino for p in done} == done  # Kept, not decoded again.
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert sum(c["images"] for c in manifest["counts"].values()) == 4


@pytest.mark.slow
def test_kill_9_of_prepare_leaves_no_worker_behind_and_the_rerun_finishes(tmp_path):
  synthetic.generate(tmp_path / "dicom", 8, seed=1, size_range=(1200, 1500),
                     jpeg2000_fraction=1.0)  # Slow decodes: the kill lands mid-way.
  marker = f"ATTEND_JAX_TEST_{uuid.uuid4().hex}"
  args = ("tools/prepare_data.py", "--dataset=synthetic", f"--root={tmp_path / 'dicom'}",
          f"--out={tmp_path / 'out'}", "--long_side=64", "--workers=2")
  proc = helpers.start(*args, extra_env={marker: "1"})
  cache = tmp_path / "out" / "cache"
  deadline = time.time() + helpers.HANG_GUARD_S
  while not list(cache.rglob("*.npz")):
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
    time.sleep(0.05)
  assert len(_processes_with(marker)) > 1  # The tool, its forkserver and workers.
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  deadline = time.time() + 120  # Workers check for their parent every second.
  while _processes_with(marker) and time.time() < deadline:
    time.sleep(0.5)
  assert _processes_with(marker) == []
  done = helpers.run(*args)
  assert done.returncode == 0, done.stderr[-3000:]
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert sum(c["images"] for c in manifest["counts"].values()) == 32


def _tmpfs(script: str, size: str) -> subprocess.CompletedProcess:
  """``script`` in a private mount namespace with a ``size`` tmpfs at $FULL: a real full disk,
  as root or through a user namespace."""
  wrapper = (f'FULL=$(mktemp -d); mount -t tmpfs -o size={size} tmpfs "$FULL" || exit 77; '
             + script)
  return subprocess.run(["unshare", "-rm", "sh", "-c", wrapper], capture_output=True, text=True,
                        cwd=helpers.REPO, env=helpers.env(), timeout=helpers.HANG_GUARD_S)


def _tmpfs_or_skip():
  probe = _tmpfs("true", "1M") if shutil.which("unshare") else None
  if probe is None or probe.returncode != 0:
    pytest.skip("cannot mount a tmpfs here (unshare -rm and mount are needed for a full disk)")


@pytest.mark.slow
def test_a_full_disk_in_prepare_is_one_line_and_the_rerun_loses_nothing(tmp_path):
  _tmpfs_or_skip()
  synthetic.generate(tmp_path / "dicom", 6, seed=2, size_range=(300, 400), jpeg2000_fraction=0)
  python = sys.executable
  prepare_cmd = (f'{python} tools/prepare_data.py --dataset=synthetic --root={tmp_path / "dicom"}'
                 ' --out="$FULL/out" --long_side=256 --workers=1')
  proc = _tmpfs(f'{prepare_cmd}; echo "rc=$?"; ls -R "$FULL/out" | grep -c "tmp.npz";'
                f' cp -r "$FULL/out" {tmp_path / "after_full"} 2>/dev/null; true', "600k")
  assert "rc=1" in proc.stdout, proc.stdout + proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "no space left on the disk of" in errors[0], proc.stderr[-3000:]
  assert "needs" in errors[0] and "free there" in errors[0]
  assert "Traceback" not in proc.stderr
  assert proc.stdout.strip().splitlines()[-1] == "0"  # No temp file left behind.
  # The images decoded before the disk filled are kept; with room, the same command finishes.
  kept = len(list((tmp_path / "after_full").rglob("*.npz")))
  shutil.copytree(tmp_path / "after_full", tmp_path / "out")
  done = helpers.run("tools/prepare_data.py", "--dataset=synthetic", f"--root={tmp_path / 'dicom'}",
                     f"--out={tmp_path / 'out'}", "--long_side=256", "--workers=1")
  assert done.returncode == 0, done.stderr[-3000:]
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert sum(c["images"] for c in manifest["counts"].values()) == 24
  assert kept > 0


@pytest.mark.slow
def test_a_full_disk_in_training_is_one_line(tiny_data, tmp_path):
  _tmpfs_or_skip()
  args = " ".join(f"'{a}'" for a in _train_args(tiny_data, "$FULL/run", "--config.train.steps=6"))
  args = args.replace("'--workdir=$FULL/run'", '--workdir="$FULL/run"')
  proc = _tmpfs(f"{sys.executable} {args}", "700k")
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: no space left on the disk of"), lines
  assert "/run/" in lines[0] and "MB more" in lines[0]  # checkpoints/ or best/, whichever first.


@pytest.mark.slow
def test_a_read_only_workdir_is_one_line(tiny_data, tmp_path):
  _tmpfs_or_skip()
  (tmp_path / "ro").mkdir()
  args = " ".join(f"'{a}'" for a in _train_args(tiny_data, tmp_path / "ro" / "run"))
  proc = _tmpfs(f"mount --bind {tmp_path / 'ro'} {tmp_path / 'ro'} && mount -o remount,bind,ro"
                f" {tmp_path / 'ro'} && {sys.executable} {args}", "1M")
  assert proc.returncode == 1, proc.stderr[-3000:]
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith("error: ") and "Read-only file system" in line
  assert str(tmp_path / "ro" / "run") in line
