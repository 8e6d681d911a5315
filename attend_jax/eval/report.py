"""Evaluation figures (PNG) and tables (markdown) built on ``attend_jax.eval.metrics`` and
``attend_jax.eval.detection``: the curves (ROC, precision-recall, calibration, FROC), and the
pictures of images with their boxes (predict's overlay, evaluate's gallery).

Figures are drawn on bare ``matplotlib.figure.Figure`` objects rather than through pyplot, so
they never touch a display or pyplot's global list of open figures, whatever backend the
process has chosen; PNGs are rendered by Agg. Each plot creates its file's parent folder and
returns the path it wrote. matplotlib is imported when the first figure is drawn, not when
this module is (every CLI imports it, through the tasks, and most never plot).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attend_jax.eval import detection, metrics

if TYPE_CHECKING:
  from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float]) -> Figure:
  from matplotlib.figure import Figure  # noqa: PLC0415  (see the module's docstring)

  return Figure(figsize=figsize)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  return path


def _draw_roc(ax, labels, scores, name: str, color: str, text_offset: tuple[int, int],
              num_bootstrap: int, seed: int) -> None:
  fpr, tpr, _ = metrics.roc_curve(labels, scores)
  value = metrics.auc(labels, scores)
  low, high = metrics.bootstrap_auc_ci(labels, scores, num_bootstrap, seed=seed)
  ax.plot(fpr, tpr, color=color, label=f"{name}: AUC {value:.3f} (95% CI {low:.3f}-{high:.3f})")
  targets = np.asarray(metrics.SUMMARY_FPRS)
  sensitivities = [metrics.sensitivity_at_fpr(labels, scores, t) for t in targets]
  ax.scatter(targets, sensitivities, color=color, zorder=3)
  for target, sensitivity in zip(targets, sensitivities):
    ax.annotate(f"{sensitivity:.2f}", (target, sensitivity), textcoords="offset points",
                xytext=text_offset, color=color, fontsize=8)


def plot_roc(labels, scores, path: str | os.PathLike, title: str | None = None,
             breast: tuple | None = None, num_bootstrap: int = 1000, seed: int = 0) -> Path:
  """ROC curve with AUC and bootstrap CI in the legend and the sensitivity marked at the
  summary FPRs; ``breast`` = (labels, scores) adds the breast-level curve."""
  fig = _figure((5.5, 5))
  ax = fig.subplots()
  ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
  _draw_roc(ax, labels, scores, "Image", "C0", (4, -12), num_bootstrap, seed)
  if breast is not None:
    _draw_roc(ax, *breast, "Breast", "C1", (-26, 6), num_bootstrap, seed)
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate",
         ylabel="Sensitivity (true positive rate)", title=title or "ROC")
  ax.legend(loc="lower right", fontsize=8)
  return _save(fig, path)


def plot_pr(labels, scores, path: str | os.PathLike, title: str | None = None) -> Path:
  """Precision-recall curve with average precision in the legend and prevalence as baseline."""
  precision, recall, _ = metrics.precision_recall_curve(labels, scores)
  fig = _figure((5.5, 5))
  ax = fig.subplots()
  # Each recall gain is credited with the precision at its end, as average precision counts it.
  ax.plot(recall, precision, drawstyle="steps-pre",
          label=f"AP {metrics.average_precision(labels, scores):.3f}")
  prevalence = float(np.mean(np.asarray(labels) == 1))
  ax.axhline(prevalence, color="0.7", linestyle="--", linewidth=1,
             label=f"Prevalence {prevalence:.3f}")
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision",
         title=title or "Precision-recall")
  ax.legend(loc="upper right", fontsize=8)
  return _save(fig, path)


def plot_calibration(labels, probabilities, path: str | os.PathLike, bins: int = 10,
                     title: str | None = None, calibrated=None) -> Path:
  """Reliability diagram over equal-width bins above a histogram of the predictions per class;
  the expected calibration error is in the title. Needs probabilities, not logits.
  ``calibrated`` (the same examples' calibrated probabilities) adds their curve (C1) beside
  the raw one (C0), each with its ECE in the legend."""
  ece = metrics.expected_calibration_error(labels, probabilities, bins)
  fig = _figure((5.5, 6.5))
  top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  top.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="Perfect")
  curves = [("Model", probabilities, "C0")]
  if calibrated is not None:
    curves = [("Raw", probabilities, "C0"), ("Calibrated", calibrated, "C1")]
  for name, values, color in curves:
    mean_probability, fraction_positive, counts = metrics.calibration_bins(labels, values, bins)
    filled = counts > 0
    label = name if calibrated is None else (
        f"{name} (ECE {metrics.expected_calibration_error(labels, values, bins):.3f})")
    top.plot(mean_probability[filled], fraction_positive[filled], marker="o", color=color,
             label=label)
  if calibrated is not None:
    after = metrics.expected_calibration_error(labels, calibrated, bins)
    name = f"{title or 'Calibration'} (ECE {ece:.3f} -> {after:.3f})"
  else:
    name = f"{title or 'Calibration'} (ECE {ece:.3f})"
  top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Fraction positive", title=name)
  top.legend(loc="upper left", fontsize=8)
  labels, probabilities = np.asarray(labels) == 1, np.asarray(probabilities)
  edges = np.linspace(0, 1, bins + 1)
  bottom.hist([probabilities[~labels], probabilities[labels]], bins=edges, stacked=True,
              label=["Negative", "Positive"], color=["C0", "C3"])
  bottom.set(xlabel="Predicted probability", ylabel="Count")
  bottom.legend(loc="upper center", fontsize=8)
  return _save(fig, path)


_FROC_MAX_FPS = 8.0  # The FROC x axis stops here unless the marked points lie further out.


def plot_froc(fps, sens, path: str | os.PathLike, points=(0.5, 1, 2),
              title: str | None = None) -> Path:
  """FROC curve, e.g. from ``detection.froc``, with the sensitivity marked at ``points`` false
  positives per image.

  The curve is drawn as the best sensitivity reachable at each rate, a staircase that holds its
  last value to the right edge, so the marks (``detection.sensitivity_at_fps``) sit on it. The
  linear x axis runs from 0 to 8 false positives per image, or to where the curve ends if that is
  sooner, and always a little past the largest point.
  """
  fps, sens = np.asarray(fps, dtype=np.float64), np.asarray(sens, dtype=np.float64)
  at = detection.sensitivity_at_fps(fps, sens, points)
  curve_end = float(fps.max()) if fps.size else 0.0
  x_max = max(min(curve_end, _FROC_MAX_FPS), 1.25 * max(at, default=0.0)) or 1.0
  fig = _figure((5.5, 5))
  ax = fig.subplots()
  if fps.size:
    ax.plot(np.r_[fps, max(x_max, curve_end)], np.r_[sens, sens[-1]], drawstyle="steps-post",
            color="C0", label="FROC")
  ax.scatter(list(at), list(at.values()), color="C0", zorder=3,
             label="Sensitivity at " + ", ".join(f"{p:g}" for p in at) + " FP/image")
  for point, sensitivity in at.items():
    ax.annotate(f"{sensitivity:.2f}", (point, sensitivity), textcoords="offset points",
                xytext=(4, -12), color="C0", fontsize=8)
  ax.grid(color="0.9", linewidth=0.8)
  ax.set(xlim=(0, x_max), ylim=(0, 1.01), xlabel="False positives per image",
         ylabel="Lesion sensitivity", title=title or "FROC")
  ax.legend(loc="lower right", fontsize=8)
  return _save(fig, path)


def _rate(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.3f}"


def confusion_markdown(labels, scores, threshold: float) -> str:
  """Markdown confusion matrix for "positive when score >= threshold", with its rates."""
  c = metrics.confusion_at(labels, scores, threshold)
  return "\n".join([
      f"Threshold {threshold:g}: precision {_rate(c['precision'])}, "
      f"recall {_rate(c['recall'])}, specificity {_rate(c['specificity'])}",
      "",
      "| | Predicted positive | Predicted negative |",
      "|---|---:|---:|",
      f"| Actual positive | {c['tp']} | {c['fn']} |",
      f"| Actual negative | {c['fp']} | {c['tn']} |",
  ]) + "\n"


def _rectangle(box, **kwargs):
  from matplotlib.patches import Rectangle  # noqa: PLC0415  (see the module's docstring)

  x0, y0, x1, y1 = (float(v) for v in box)
  return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, **kwargs)


@dataclasses.dataclass
class Tile:
  """One image with its boxes, for an overlay or a gallery cell.

  ``image`` is grey in [0, 1]; ``boxes`` (n, 4) ``x0 y0 x1 y1`` in its pixels, each coloured by
  its ``weights`` (n,) in [0, 1] (attention or score; bright is more) and labelled with its
  ``texts``; ``dashed`` (n,) marks boxes drawn dashed and thin (the whole-crop anchor);
  ``truth`` (m, 4) are the lesions, dotted green; ``caption`` goes in the top-left corner.
  """

  image: np.ndarray
  boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4)))
  weights: np.ndarray | None = None
  texts: Sequence[str] = ()
  dashed: np.ndarray | None = None
  truth: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4)))
  caption: str = ""
  title: str = ""


def _draw_tile(ax, tile: Tile, font: float) -> None:
  from matplotlib import colormaps  # noqa: PLC0415  (see the module's docstring)

  cmap = colormaps["plasma"]
  ax.imshow(tile.image, cmap="gray", vmin=0, vmax=1)
  boxes = np.asarray(tile.boxes, np.float64).reshape(-1, 4)
  weights = np.ones(len(boxes)) if tile.weights is None else np.asarray(tile.weights)
  dashed = np.zeros(len(boxes), bool) if tile.dashed is None else np.asarray(tile.dashed)
  for i, box in enumerate(boxes):
    color = cmap(float(np.clip(weights[i], 0, 1)))
    ax.add_patch(_rectangle(box, color=color, linewidth=1 if dashed[i] else 1.8,
                            linestyle="--" if dashed[i] else "-"))
    if i < len(tile.texts):
      ax.text(box[0], box[1], tile.texts[i], color=color, fontsize=font - 2, va="bottom")
  for box in np.asarray(tile.truth, np.float64).reshape(-1, 4):
    ax.add_patch(_rectangle(box, color="lime", linewidth=1, linestyle=":"))
  if tile.caption:
    ax.text(0.02, 0.98, tile.caption, transform=ax.transAxes, va="top", ha="left",
            color="white", fontsize=font, bbox={"facecolor": "black", "alpha": 0.6,
                                                "linewidth": 0})
  if tile.title:
    ax.set_title(tile.title, fontsize=font - 1)
  ax.axis("off")


def plot_overlay(tile: Tile, path: str | os.PathLike, width: float = 4.0) -> Path:
  """One image with its boxes (predict's ``--overlays``), ``width`` inches wide."""
  h, w = np.shape(tile.image)[:2]
  fig = _figure((width, width * h / max(w, 1)))
  _draw_tile(fig.subplots(), tile, font=8)
  fig.tight_layout()
  return _save(fig, path)


def plot_gallery(rows: Mapping[str, Sequence[Tile]], path: str | os.PathLike,
                 columns: int = 4) -> Path:
  """A grid with one row of up to ``columns`` tiles per entry of ``rows``, titled by its key;
  a row with fewer tiles leaves its cells blank."""
  columns = max(columns, 1)
  fig = _figure((2.4 * columns, 2.7 * max(len(rows), 1)))
  axes = fig.subplots(max(len(rows), 1), columns, squeeze=False)
  for row_axes, (name, tiles) in zip(axes, rows.items()):
    row_axes[0].set_title(name, loc="left", fontsize=9)
    for ax in row_axes:
      ax.axis("off")
    for ax, tile in zip(row_axes, tiles):
      _draw_tile(ax, tile, font=7)
  fig.tight_layout()
  return _save(fig, path)


def plot_detection_pr(recall, precision, path: str | os.PathLike, ap: float | None = None,
                      title: str | None = None) -> Path:
  """Lesion-detection precision against recall as the score threshold falls, e.g. from
  ``detection.precision_recall``; ``ap`` goes in the legend."""
  fig = _figure((5.5, 5))
  ax = fig.subplots()
  label = "Detections" if ap is None else f"AP {ap:.3f}"
  ax.plot(np.r_[0.0, recall], np.r_[precision[:1] if len(precision) else [1.0], precision],
          drawstyle="steps-pre", label=label)
  ax.grid(color="0.9", linewidth=0.8)
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Lesion recall", ylabel="Precision",
         title=title or "Detection precision-recall")
  ax.legend(loc="upper right", fontsize=8)
  return _save(fig, path)


def metrics_markdown(rows: Sequence[tuple[str, Sequence[float | None]]],
                     columns: Sequence[str]) -> str:
  """A markdown table: one row per (name, values), numbers to three places, None as n/a."""
  lines = ["| metric | " + " | ".join(columns) + " |",
           "|---|" + "---:|" * len(columns)]
  lines += [f"| {name} | " + " | ".join(_rate(v) for v in values) + " |" for name, values in rows]
  return "\n".join(lines) + "\n"
