"""Evaluation figures (PNG) and tables (markdown) built on ``attend_jax.eval.metrics`` and
``attend_jax.eval.detection``.

Figures are drawn on bare ``matplotlib.figure.Figure`` objects rather than through pyplot, so
they never touch a display or pyplot's global list of open figures, whatever backend the
process has chosen; PNGs are rendered by Agg. Each plot creates its file's parent folder and
returns the path it wrote. matplotlib is imported when the first figure is drawn, not when
this module is (every CLI imports it, through the tasks, and most never plot).
"""

from __future__ import annotations

import os
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
                     title: str | None = None) -> Path:
  """Reliability diagram over equal-width bins above a histogram of the predictions per class;
  the expected calibration error is in the title. Needs probabilities, not logits."""
  mean_probability, fraction_positive, counts = metrics.calibration_bins(labels, probabilities,
                                                                         bins)
  ece = metrics.expected_calibration_error(labels, probabilities, bins)
  fig = _figure((5.5, 6.5))
  top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  top.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="Perfect")
  filled = counts > 0
  top.plot(mean_probability[filled], fraction_positive[filled], marker="o", label="Model")
  top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Fraction positive",
          title=f"{title or 'Calibration'} (ECE {ece:.3f})")
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
