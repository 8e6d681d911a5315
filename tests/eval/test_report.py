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


def _colours(path):
  """The PNG's RGB pixels, (h, w, 3) in [0, 1]."""
  from matplotlib import image

  return image.imread(path)[..., :3]


def _has(pixels, rgb, tol=0.08):
  return bool((np.abs(pixels - np.asarray(rgb)).max(axis=-1) < tol).any())


_LIME, _BRIGHT = (0.0, 1.0, 0.0), (0.940015, 0.975158, 0.131326)  # plasma(1.0)


@pytest.mark.parametrize("with_truth", [True, False])
def test_an_overlay_draws_the_boxes_in_their_weight_s_colour_and_the_lesions_in_green(
    tmp_path, with_truth):
  tile = report.Tile(np.zeros((200, 100)), np.array([[10.0, 10.0, 60.0, 80.0]]), np.array([1.0]),
                     truth=np.array([[20.0, 100.0, 90.0, 190.0]]) if with_truth else np.zeros((0, 4)),
                     caption="p = 0.5")
  pixels = _colours(report.plot_overlay(tile, tmp_path / "o.png", width=2.0))
  assert pixels.shape[:2] == (480, 240)  # 2 x 4 inches at 120 dpi: the image's aspect.
  assert _has(pixels, _BRIGHT)
  assert _has(pixels, _LIME) is with_truth


def test_a_gallery_has_a_row_per_group_and_leaves_missing_cells_blank(tmp_path):
  tile = report.Tile(np.ones((50, 50)), np.array([[5.0, 5.0, 45.0, 45.0]]), np.array([1.0]))
  path = report.plot_gallery({"a": [tile, tile], "b": []}, tmp_path / "g.png", columns=3)
  pixels = _colours(path)
  assert pixels.shape[:2] == (round(2 * 2.7 * 120), round(3 * 2.4 * 120))
  bottom = pixels[pixels.shape[0] // 2 + 20:]
  assert _has(pixels[: pixels.shape[0] // 2], _BRIGHT) and not _has(bottom, _BRIGHT)
