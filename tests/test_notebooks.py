"""Every notebook runs end to end, as CI runs it: with ATTEND_JAX_QUICK=1 (tiny runs)."""

import nbformat
import pytest
from nbclient import NotebookClient

import helpers

REPO = helpers.REPO
pytestmark = pytest.mark.slow
NOTEBOOKS = ("quickstart", "predict_your_dicoms", "inspect_attention")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  return tmp_path_factory.mktemp("notebooks")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, work, monkeypatch):
  monkeypatch.setenv("ATTEND_JAX_QUICK", "1")
  monkeypatch.setenv("ATTEND_JAX_WORK", str(work))  # Shared: the grid model is trained once.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # One device, as a user's kernel has; compiled quickly, as every test's child (helpers.py).
  monkeypatch.setenv("XLA_FLAGS", helpers.FAST_COMPILE)
  nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
  assert "google.colab" in nb.cells[1].source  # The set-up cell installs on Colab.
  # execute() raises CellExecutionError at a cell's first error, unless the cell allows one.
  assert not [c for c in nb.cells if "raises-exception" in c.metadata.get("tags", [])]
  NotebookClient(nb, timeout=helpers.HANG_GUARD_S, kernel_name="python3",
                 resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert images, f"{name} drew nothing"
