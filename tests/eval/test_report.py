"""Evaluation report: each plot draws its curves and bars in their colours (read back from the
PNG's pixels); the confusion table reads right."""

import numpy as np
import pytest

from attend_jax.eval import report

import helpers


@pytest.fixture
def predictions():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 300)
  logits = rng.normal(size=300) + 1.5 * labels
  return labels, logits


def _part(pixels, rows, cols):
  """The pixels in the given fractions of the image's height and width."""
  h, w = pixels.shape[:2]
  return pixels[round(rows[0] * h):round(rows[1] * h), round(cols[0] * w):round(cols[1] * w)]


@pytest.mark.parametrize("with_breast", [True, False])
def test_plot_roc_draws_the_image_curve_and_the_breast_curve_only_when_given(
    tmp_path, predictions, with_breast):
  labels, logits = predictions
  breast = (labels[::2] | labels[1::2], (logits[::2] + logits[1::2]) / 2)
  path = report.plot_roc(labels, logits, tmp_path / "new" / "roc.png", title="Test",
                         breast=breast if with_breast else None, num_bootstrap=50)
  assert path == tmp_path / "new" / "roc.png"
  pixels = helpers.png_rgb(path)
  assert pixels.shape[:2] == (600, 660)  # 5.5 x 5 inches at 120 dpi.
  # Both curves (AUC about 0.9) rise from 0.1 to 0.5 sensitivity before 0.1 FPR, the first
  # marked point: that stretch of the plot holds curves only (the legend is at the lower right).
  steep_start = _part(pixels, (0.52, 0.8), (0.13, 0.19))
  assert helpers.has_colour(steep_start, helpers.C0)
  assert helpers.has_colour(steep_start, helpers.C1) is with_breast


def test_plot_pr_draws_the_curve(tmp_path, predictions):
  pixels = helpers.png_rgb(report.plot_pr(*predictions, tmp_path / "pr.png"))
  # The curve crosses the plot; the legend, which also shows its colour, is at the upper right.
  assert helpers.has_colour(_part(pixels, (0, 1), (0, 0.5)), helpers.C0)


@pytest.mark.parametrize("with_positives", [True, False])
def test_plot_calibration_draws_each_class_s_bars_in_its_colour(tmp_path, predictions,
                                                                with_positives):
  labels, logits = predictions
  labels = labels if with_positives else np.zeros_like(labels)
  path = report.plot_calibration(labels, 1 / (1 + np.exp(-logits)), str(tmp_path / "a" / "c.png"))
  pixels = helpers.png_rgb(path)
  # The histogram is the lower panel; its legend sits at its top centre. Negatives pile up
  # at low probabilities, the positives (logits 1.5 higher) at high ones.
  assert helpers.has_colour(_part(pixels, (0.7, 1), (0, 0.33)), helpers.C0)
  assert helpers.has_colour(_part(pixels, (0.7, 1), (0.67, 1)), helpers.C3) is with_positives


@pytest.mark.parametrize("with_calibrated", [True, False])
def test_plot_calibration_draws_the_calibrated_curve_only_when_given(tmp_path, predictions,
                                                                     with_calibrated):
  labels, logits = predictions
  raw = 1 / (1 + np.exp(-3 * logits))  # Over-confident: the calibrated curve lies elsewhere.
  path = report.plot_calibration(labels, raw, tmp_path / "c.png",
                                 calibrated=1 / (1 + np.exp(-logits)) if with_calibrated
                                 else None)
  pixels = helpers.png_rgb(path)
  assert pixels.shape[:2] == (780, 660)  # 5.5 x 6.5 inches at 120 dpi.
  # The reliability panel is the top three quarters; the histogram has no C1.
  assert helpers.has_colour(_part(pixels, (0.05, 0.7), (0.1, 0.95)), helpers.C0)
  assert helpers.has_colour(_part(pixels, (0.05, 0.7), (0.1, 0.95)),
                            helpers.C1) is with_calibrated


def test_plot_froc_holds_the_last_sensitivity_to_the_right_edge(tmp_path):
  # Marks at 0.5, 1 and 2 FP per image: 0.6, 0.6, 0.9; the axis runs to 1.25 x 2 = 2.5.
  path = report.plot_froc([0, 0.5, 2], [0, 0.6, 0.9], tmp_path / "new" / "froc.png")
  assert path == tmp_path / "new" / "froc.png"
  pixels = helpers.png_rgb(path)
  assert pixels.shape[:2] == (600, 660)
  # Sensitivity 0.9 from 2.25 to 2.45 FP per image: only the held staircase is drawn there.
  assert helpers.has_colour(_part(pixels, (0.15, 0.27), (0.82, 0.885)), helpers.C0)
  # A curve that stops short of the points and a single-point curve plot too.
  short = report.plot_froc([0, 0.1], [0, 0.5], str(tmp_path / "short.png"))
  assert helpers.has_colour(helpers.png_rgb(short), helpers.C0)
  empty = report.plot_froc([0], [0], tmp_path / "empty.png")
  assert helpers.has_colour(helpers.png_rgb(empty), helpers.C0)


def test_confusion_markdown():
  table = report.confusion_markdown([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5], 0.5)
  assert "| Actual positive | 2 | 1 |" in table
  assert "| Actual negative | 1 | 1 |" in table
  assert "specificity 0.500" in table
  assert "precision n/a" in report.confusion_markdown([0, 1], [0.1, 0.2], 0.5)


_LIME, _BRIGHT = (0.0, 1.0, 0.0), (0.940015, 0.975158, 0.131326)  # plasma(1.0)


@pytest.mark.parametrize("with_truth", [True, False])
def test_an_overlay_draws_the_boxes_in_their_weight_s_colour_and_the_lesions_in_green(
    tmp_path, with_truth):
  tile = report.Tile(np.zeros((200, 100)), np.array([[10.0, 10.0, 60.0, 80.0]]), np.array([1.0]),
                     truth=(np.array([[20.0, 100.0, 90.0, 190.0]]) if with_truth
                            else np.zeros((0, 4))),
                     caption="p = 0.5")
  pixels = helpers.png_rgb(report.plot_overlay(tile, tmp_path / "o.png", width=2.0))
  assert pixels.shape[:2] == (480, 240)  # 2 x 4 inches at 120 dpi: the image's aspect.
  assert helpers.has_colour(pixels, _BRIGHT)
  assert helpers.has_colour(pixels, _LIME) is with_truth


def test_a_gallery_has_a_row_per_group_and_leaves_missing_cells_blank(tmp_path):
  tile = report.Tile(np.ones((50, 50)), np.array([[5.0, 5.0, 45.0, 45.0]]), np.array([1.0]))
  path = report.plot_gallery({"a": [tile, tile], "b": []}, tmp_path / "g.png", columns=3)
  pixels = helpers.png_rgb(path)
  assert pixels.shape[:2] == (round(2 * 2.7 * 120), round(3 * 2.4 * 120))
  bottom = pixels[pixels.shape[0] // 2 + 20:]
  assert helpers.has_colour(pixels[: pixels.shape[0] // 2], _BRIGHT)
  assert not helpers.has_colour(bottom, _BRIGHT)
