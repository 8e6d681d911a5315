"""Evaluation report: each plot writes a PNG; the confusion table reads right."""

import numpy as np
import pytest

from attend_jax.eval import report

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def predictions():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 300)
  logits = rng.normal(size=300) + 1.5 * labels
  return labels, logits


def _assert_png(path):
  data = path.read_bytes()
  assert len(data) > 1000 and data.startswith(_PNG_MAGIC)


def test_plot_roc_with_breast_curve(tmp_path, predictions):
  labels, logits = predictions
  breast = (labels[::2] | labels[1::2], (logits[::2] + logits[1::2]) / 2)
  path = report.plot_roc(labels, logits, tmp_path / "new" / "roc.png", title="Test",
                         breast=breast, num_bootstrap=50)
  assert path == tmp_path / "new" / "roc.png"
  _assert_png(path)


def test_plot_pr(tmp_path, predictions):
  _assert_png(report.plot_pr(*predictions, tmp_path / "pr.png"))


def test_plot_calibration(tmp_path, predictions):
  labels, logits = predictions
  path = report.plot_calibration(labels, 1 / (1 + np.exp(-logits)), str(tmp_path / "a" / "c.png"))
  _assert_png(path)


def test_confusion_markdown():
  table = report.confusion_markdown([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5], 0.5)
  assert "| Actual positive | 2 | 1 |" in table
  assert "| Actual negative | 1 | 1 |" in table
  assert "specificity 0.500" in table
  assert "precision n/a" in report.confusion_markdown([0, 1], [0.1, 0.2], 0.5)
