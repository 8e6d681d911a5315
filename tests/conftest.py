"""Test set-up: 8 simulated CPU devices, so sharded code paths run on any machine; a temp root and
an XLA compilation cache of this session's own; the `slow` tier; a GCS emulator (``gcs``) for the
bucket tests; Orthanc (``orthanc``, ``orthanc_auth``) for the DICOMweb tests."""

import os

import helpers  # noqa: E402  (imports no jax)

# Must happen before jax is imported anywhere; FAST_COMPILE: see helpers.py.
for _flag in ("--xla_force_host_platform_device_count=8", helpers.FAST_COMPILE):
  if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for this session, its xdist workers (they inherit the
# environment) and every child process the tests start: most of the suite is the same few smoke
# configs trained in subprocesses, and each would compile the same steps again (measured: a
# smoke training run 70-80 s -> 41-43 s once cached). Compiled code is the same code, so exact
# resume and parity checks are unaffected. Removed with the session's temp root.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile as _tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = _tempfile.mkdtemp(prefix="attend_jax-xla-cache-")
  os.environ["ATTEND_JAX_OWN_XLA_CACHE"] = "1"
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# A size bound makes JAX guard each read and write with a file lock (filelock), so a process never
# reads an entry another one is still writing.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

import gcs as gcs_emulator  # noqa: E402
import orthanc as orthanc_server  # noqa: E402
import readme_commands  # noqa: E402

# Every command the tests run, for the check that each command of the README and docs/ is run
# by some test (readme_commands.py); the workers inherit it, as they do the XLA cache.
if readme_commands.LOG_ENV not in os.environ:
  os.environ[readme_commands.LOG_ENV] = tempfile.mkdtemp(prefix="attend_jax-commands-")
  os.environ["ATTEND_JAX_OWN_COMMAND_LOG"] = "1"

# The PyTorch model of the reference lives with the dev tools (tools/bench_train.py uses it).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
  # pytest's default temp root (/tmp/pytest-of-$USER) is shared by every session on the
  # machine, and each session prunes the others' numbered folders: two suites at once then
  # delete each other's files. A fresh root per session (xdist workers get folders inside it)
  # cannot be touched by another run.
  if config.option.basetemp is None and not hasattr(config, "workerinput"):
    config.option.basetemp = tempfile.mkdtemp(prefix="attend_jax-pytest-")
    config._attend_jax_basetemp = config.option.basetemp


def pytest_unconfigure(config):
  if os.environ.get("ATTEND_JAX_OWN_XLA_CACHE") and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  if os.environ.get("ATTEND_JAX_OWN_COMMAND_LOG") and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ[readme_commands.LOG_ENV], ignore_errors=True)
  root = getattr(config, "_attend_jax_basetemp", None)
  if root and getattr(config, "_attend_jax_passed", False):
    shutil.rmtree(root, ignore_errors=True)  # Kept after a failure, to look at.


def _whole_suite(config) -> bool:
  """Whether this session runs every test: only then must it have run every documented
  command."""
  opt = config.option
  if opt.keyword or opt.markexpr or getattr(opt, "deselect", None) or getattr(opt, "lf", False):
    return False
  here = pathlib.Path(__file__).parent.resolve()
  return [pathlib.Path(a).resolve() for a in config.args] in ([], [here])


def pytest_sessionfinish(session, exitstatus):
  config = session.config
  if (exitstatus == 0 and not hasattr(config, "workerinput") and _whole_suite(config)
      and os.environ.get("ATTEND_JAX_OWN_COMMAND_LOG")):
    missing = readme_commands.not_run(readme_commands.recorded(
        os.environ[readme_commands.LOG_ENV]))
    if missing:
      reporter = config.pluginmanager.get_plugin("terminalreporter")
      reporter.write_sep("=", "Commands of the README and docs/ that no test runs", red=True)
      for command in missing:
        reporter.write_line(f"{command.source}: not run by any test: {command.text}")
      session.exitstatus = exitstatus = pytest.ExitCode.TESTS_FAILED
  config._attend_jax_passed = exitstatus == 0


@pytest.fixture(scope="session")
def gcs():
  """fake-gcs-server on 127.0.0.1, one per test process; ``gcs.path(name)`` is a fresh
  ``gs://`` folder, and this process and its children talk to the emulator."""
  process, emulator = gcs_emulator.emulator()
  yield emulator
  gcs_emulator.stop(process)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
  """Orthanc with DICOMweb on 127.0.0.1, no authentication, one per test process (tests/orthanc.py:
  fails where Orthanc is not installed, unless ATTEND_JAX_SKIP_ORTHANC=1)."""
  orthanc_server.require()
  server = orthanc_server.start(tmp_path_factory.mktemp("orthanc"))
  yield server
  orthanc_server.stop(server)


@pytest.fixture(scope="session")
def orthanc_auth(tmp_path_factory):
  """Orthanc with HTTP basic authentication on: ``users`` holds a read-write account and
  ``orthanc.READER``, which may only read."""
  orthanc_server.require()
  server = orthanc_server.start(tmp_path_factory.mktemp("orthanc-auth"),
                                {"radiology": "c0rrect-h0rse", orthanc_server.READER: "look-only"})
  yield server
  orthanc_server.stop(server)


def _made_once(tmp_path_factory, name: str, make) -> pathlib.Path:
  """A folder that ``make(folder)`` fills once per session, shared by every xdist worker: the
  first worker to ask makes it under the session's temp root, the others wait for it (a file
  lock) and reuse it. Fixtures built on it are read-only for their users."""
  from filelock import FileLock

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # The session's root, above each worker's own.
  folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
  with FileLock(str(root / f"shared-{name}.lock")):
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)  # A worker that failed half-way.
      folder.mkdir()
      make(folder)
      done.touch()
  return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  """``helpers.tiny_prepared``: six synthetic studies as DICOMs (``dicom/``), prepared at 96 px."""
  return _made_once(tmp_path_factory, "tiny-data", helpers.tiny_prepared)


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory):
  """``helpers.tiny_config``'s classifier (grid RoIs) trained 4 steps on a tiny prepared set
  with some JPEG 2000 DICOMs: ``ROOT/work`` (the run, with the calibration.json it fitted on
  its validation split), ``ROOT/data``, ``ROOT/dicom``."""

  def make(root):
    from attend_jax.train import trainer

    # Seed 8: the validation and test splits both hold cancers and normals (seed 0's
    # validation split is all normal, and it has no test split).
    helpers.tiny_prepared(root, root / "data", seed=8, jpeg2000_fraction=0.25)
    c = helpers.tiny_config(root / "data")
    c.train.steps, c.train.eval_every, c.train.checkpoint_every = 4, 2, 2
    trainer.train_and_evaluate(c, str(root / "work"))

  return _made_once(tmp_path_factory, "trained-classifier", make)


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory):
  """The smoke RoI detector (configs/detector_synthetic.py:smoke: 4 synthetic studies, 6
  steps) trained by the command users run: ``ROOT/work`` (the run) and ``ROOT/data``. Its users
may add datasets beside its own (export_proposals --records), never change it."""

  def make(root):
    proc = helpers.run("-m", "attend_jax.main", "--config=configs/detector_synthetic.py:smoke",
                       f"--workdir={root / 'work'}", f"--config.data.dir={root / 'data'}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

  return _made_once(tmp_path_factory, "trained-detector", make)


# The longest files first (measured with --durations on 2 workers): xdist hands out whole files
# (--dist=loadfile) in collection order, so a long file collected last would run alone at the
# end while the other workers idle.
LONGEST_FIRST = (
    "train/test_trainer.py", "test_faults.py", "real_path/test_cbis_ddsm_path.py",
    "real_path/test_vindr_path.py", "test_notebooks.py", "test_demo.py", "test_ablate.py",
    "models/test_attend.py", "models/test_vit.py", "test_reference_mode.py",
    "test_scale_report.py", "test_faults_training.py", "real_path/test_vindr_reference_path.py",
    "train/test_buckets_and_preemption.py", "test_export_proposals.py", "convert/test_dinov2.py",
    "test_losses.py", "test_predict.py", "test_dicomweb.py",
)


def pytest_collection_modifyitems(config, items):
  here = pathlib.Path(__file__).parent

  def rank(item):
    name = pathlib.Path(str(item.fspath)).relative_to(here).as_posix()
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

  items.sort(key=rank)  # Stable: each file keeps its own order.
