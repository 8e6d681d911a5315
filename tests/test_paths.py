"""Bucket URLs everywhere a user names a folder: on the GCS emulator, and by reading the code."""

import ast
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from flax import nnx

from attend_jax import checkpoint, errors, export, paths, run
from attend_jax.train.writer import MetricWriter

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
  """An empty current folder, where a URL mistaken for a local path would show up."""
  monkeypatch.chdir(tmp_path)
  return tmp_path


def _no_local_copy(cwd: pathlib.Path):
  assert not (cwd / "gs:").exists(), "a gs:// path became a local folder named gs:"


def test_checkpoints_save_and_restore_on_a_bucket_bit_exact(gcs, elsewhere):
  workdir = gcs.path("ckpt")
  state = {"params": {"w": jax.random.normal(jax.random.key(0), (5, 3)),
                      "b": jnp.arange(3, dtype=jnp.bfloat16)}, "stats": {"n": jnp.int32(7)}}
  ckpts = checkpoint.Checkpoints(workdir)
  ckpts.save_latest(4, state, {"best_metric": 0.5}, {"position": 12})
  ckpts.wait()
  ckpts.close()
  _no_local_copy(elsewhere)
  assert epath.Path(workdir, checkpoint.LATEST, "4").is_dir()
  ckpts = checkpoint.Checkpoints(workdir)
  step, restored, counters, data = ckpts.restore_latest(jax.tree.map(jnp.zeros_like, state))
  ckpts.close()
  assert (step, counters, data) == (4, {"best_metric": 0.5}, {"position": 12})
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_config_and_weights_export_round_trip_through_a_bucket(gcs, elsewhere):
  import ml_collections

  directory = gcs.path("export")
  config = ml_collections.ConfigDict({"model": {"roi_size": 28}, "task": "classify"})
  run.write_config(directory, config)
  _no_local_copy(elsewhere)
  assert run.read_config(directory).model.roi_size == 28
  state = {"params": {"w": jnp.ones((2, 2))}, "stats": {}}
  export.write(directory, state, config.to_json_best_effort(), step=3)
  step, back = export.restore(epath.Path(directory) / run.WEIGHTS, state)
  assert step == 3
  np.testing.assert_array_equal(back["params"]["w"], np.ones((2, 2)))
  _no_local_copy(elsewhere)


def test_metric_writer_uploads_events_and_metrics_to_a_bucket(gcs, elsewhere):
  workdir = paths.path(gcs.path("metrics"))
  writer = MetricWriter(workdir)
  writer.write(1, "train", {"loss": 0.5})
  writer.close()
  writer = MetricWriter(workdir)  # A resumed run appends.
  writer.write(2, "train", {"loss": 0.25})
  writer.close()
  _no_local_copy(elsewhere)
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2]
  assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_staged_output_reaches_the_bucket_even_after_an_error(gcs, elsewhere):
  out = paths.path(gcs.path("staged"))
  with pytest.raises(RuntimeError):
    with paths.staged(out) as folder:
      (folder / "sub").mkdir()
      (folder / "sub" / "a.txt").write_text("kept")
      raise RuntimeError("the run broke")
  assert (out / "sub" / "a.txt").read_text() == "kept"
  _no_local_copy(elsewhere)


def test_files_below_a_bucket_folder_are_those_of_the_same_folder_on_disk(gcs, tmp_path):
  """One listing of the bucket's prefix, in the local walk's order; a sibling folder whose name
  starts with the folder's is not below it."""
  names = ["b/z.dcm", "a.txt", "b/c/d.dcm", "b/a.dcm", "b-c/e.dcm"]
  for name in names:
    (tmp_path / "x" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "x" / name).write_text(name)
  (tmp_path / "x-1").mkdir()
  (tmp_path / "x-1" / "f.dcm").write_text("beside")
  bucket = paths.path(gcs.path("listing"))
  paths.upload(tmp_path, bucket)
  want = ["a.txt", "b/a.dcm", "b/c/d.dcm", "b/z.dcm", "b-c/e.dcm"]  # As sorted pathlib paths.
  assert paths.files_below(tmp_path / "x") == want
  assert paths.files_below(f"{bucket}/x/") == paths.files_below(bucket / "x") == want


def test_paths_keep_urls_and_make_local_paths_absolute(elsewhere):
  assert str(paths.path("gs://b/run")) == "gs://b/run"
  assert str(paths.path("run")) == str(elsewhere / "run")
  assert paths.is_local("run") and paths.is_local("/x") and not paths.is_local("gs://b/x")
  with pytest.raises(ValueError, match="not on the local file system"):
    paths.local("gs://b/x")


# Where pathlib.Path (or its .absolute()) may take a path: local by nature (DICOM inputs, the
# staging folders paths.staged hands out, caches), each with why. Every other call in the
# package is a test failure: a user's gs:// folder would become a local folder named gs:.
LOCAL_BY_NATURE = {
    "paths.py:local": "the one conversion, after is_local",
    "paths.py:as_given": "a local path kept relative, after is_local (a URL: path)",
    "paths.py:files_below": "a local folder's walk, after is_local (a bucket: one listing)",
    "paths.py:staged": "the local staging folder",
    "paths.py:Mirror.__init__": "the local mirror folder",
    "errors.py:DiskFullError.__init__": "disk_usage of a local disk",
    "data/dicom.py:_names": "only the folder names of a DICOM's path, local or gs://",
    "data/prepare.py:decode": "a bucket's DICOM copied into a local temporary folder",
    "data/records.py:_StagedExampleWriter.write": "a bucket shard's local temporary file",
    "data/synthetic/dataset.py:generate": "synthetic DICOMs, then prepared",
    "data/synthetic/dataset.py:plan": "synthetic DICOMs, then prepared",
    "data/layouts.py:write": "a synthetic raw dataset: raw datasets are read from local disk",
    "data/layouts.py:prepare_command": "the prepare command of that local folder",
    "convert/dinov2/mapping.py:write_random": "a local weights file, for the converter to read",
    "data/synthetic/labels.py:read_labels": "synthetic DICOMs, then prepared",
    "data/records.py:Mammograms._split_generators": "prepare's local per-image cache",
    "data/prepare.py:prepare": "prepare's local per-image cache (paths.staged for --out)",
    "inference.py:find_dicoms": "local DICOM inputs, after is_local (a bucket: paths.path)",
    "inference.py:OutputWriter.__init__": "called with a paths.staged folder",
    "convert/dinov2/state_dict.py:read_state_dict": "a downloaded or local torch / safetensors file",
    "paths.py:cache_root": "the local cache: downloads, the CPU attention kernel's build",
    "models/cpu_attention.py:": "the kernel's source, a file of the package",
    "convert/dinov2/download.py:fetch": "the local download cache",
    "convert/dinov2/download.py:resolve_source": "a local torch / safetensors file",
    "tasks/classify.py:Classify.write": "called with a paths.staged folder",
    "tasks/detect.py:Detect.write": "called with a paths.staged folder",
    "eval/report.py:_save": "called with a paths.staged folder",
    "dicom_out.py:write": "--dicom_out (predict refuses a URL there) and its staged folder",
    "dicom_out.py:secondary_capture": "an overlay in predict's paths.staged folder",
    "dicom_out.py:render_gsps": "the PNG that tools/render_gsps.py draws, a local file",
    "dicomweb.py:fetch": "--out/fetched: --dicomweb refuses a bucket --out",
    "dicomweb.py:store": "the files of --dicom_out, a local folder",
    "predict.py:main": "--dicom_out, after is_local",
    "predict.py:_fetch": "the fetched files, in the local --out",
}


def _pathlib_calls(tree: ast.AST):
  """(qualified function name, line) of each ``pathlib.Path(...)`` / ``Path(...)`` call and each
  ``.absolute()``."""
  found = []

  def visit(node, scope):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        visit(child, scope + [child.name])
        continue
      if isinstance(child, ast.Call):
        f = child.func
        if ((isinstance(f, ast.Attribute) and f.attr in ("Path", "absolute")
             and (f.attr == "absolute" or getattr(f.value, "id", "") == "pathlib"))
            or (isinstance(f, ast.Name) and f.id == "Path")):
          found.append((".".join(scope), child.lineno))
      visit(child, scope)

  visit(tree, [])
  return found


def test_no_module_takes_a_user_path_with_pathlib():
  """Static: user folders go through attend_jax.paths / epath (see LOCAL_BY_NATURE)."""
  package = REPO / "attend_jax"
  offenders, used = [], set()
  for file in sorted(package.rglob("*.py")):
    rel = file.relative_to(package).as_posix()
    for scope, line in _pathlib_calls(ast.parse(file.read_text())):
      key = f"{rel}:{scope}"
      if key in LOCAL_BY_NATURE:
        used.add(key)
      else:
        offenders.append(f"{rel}:{line} in {scope or 'module'}")
  assert not offenders, ("pathlib on a path a user may give as a gs:// URL; use"
                         " attend_jax.paths.path (epath) or paths.staged: " + ", ".join(offenders))
  assert not set(LOCAL_BY_NATURE) - used, f"stale entries: {set(LOCAL_BY_NATURE) - used}"


def test_prepare_writes_to_a_bucket_and_a_run_cannot_read_records_there(gcs, elsewhere):
  """prepare --out=gs://... prepares locally and uploads; ArrayRecord cannot read a bucket (it
  hangs there), so a run refuses it in one line that says to copy the folder to local disk."""
  from attend_jax.data import availability, prepare, records, synthetic

  synthetic.generate(elsewhere / "dicom", 2, seed=0, size_range=(200, 240),
                     jpeg2000_fraction=0.0)
  out = gcs.path("prepared")
  result = prepare.prepare("synthetic", elsewhere / "dicom", out,
                           prepare.PrepareOptions(long_side=64), workers=1)
  _no_local_copy(elsewhere)
  assert availability.is_prepared(out, "synthetic_64")
  assert prepare.read_options(out, "synthetic_64").long_side == 64
  again = prepare.prepare("synthetic", elsewhere / "dicom", out,
                          prepare.PrepareOptions(long_side=64), workers=1)
  assert again.counts == result.counts and again.seconds == 0.0  # Found on the bucket.
  with pytest.raises(errors.RemoteRecordsError, match="copy the prepared folder to local disk"):
    availability.require(out, "synthetic_64", ("train",), flag="config.data.dir", instead="",
                     split_advice="")
  with pytest.raises(errors.RemoteRecordsError):
    records.data_source(out, "synthetic_64", "train")


def test_a_pretrained_backbone_and_a_detector_are_read_from_a_bucket(gcs, elsewhere):
  """config.model.pretrained (a converter's weights folder) and proposals.detector on a bucket:
  the backbone's parameters arrive as saved, and the classifier's run copies the detector into
  its own bucket workdir."""
  from attend_jax import tasks
  from attend_jax.models import build, pretrained
  from configs import demo

  config = demo.get_config("smoke")
  source = tasks.get(config).build_model(seed=0)
  weights = gcs.path("weights/dinov2")
  pretrained.save(source.vision_model, weights)  # What tools/convert_dinov2.py --out writes.
  model = tasks.get(config).build_model(seed=1)
  build.load_pretrained_backbone(model, weights)
  want = jax.tree.leaves(nnx.state(source.vision_model, nnx.Param))
  got = jax.tree.leaves(nnx.state(model.vision_model, nnx.Param))
  assert len(want) == len(got) > 0
  for a, b in zip(want, got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  detector_config = demo.get_config("smoke,detector")
  detector = tasks.get(detector_config).build_model()
  config.proposals.detector = gcs.path("detector_run")
  run.save_export(config.proposals.detector, detector, detector_config)
  workdir = gcs.path("classifier_run")
  assert run.load_proposal_step(config, workdir) is not None
  copy = run.load(epath.Path(workdir) / run.DETECTOR_COPY)
  assert tasks.name(copy.config) == "detect"
  _no_local_copy(elsewhere)
