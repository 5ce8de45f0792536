"""Evaluation figures written as PNG files: ROC, confusion, reliability, images.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas instead of
through `pyplot`: that renders off-screen on headless machines, does not
switch the global matplotlib backend of whoever imports this module, and
leaves no figure in pyplot's registry to leak memory over a long evaluation.

Every function writes one PNG to `path` (creating its directory) and returns
`path` as a string.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from sklearn import metrics as skm

from sgc_jax import metrics


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Figure, path) -> str:
  path = os.fspath(path)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
  if class_names is None:
    return [f"class {c}" for c in range(num_classes)]
  if len(class_names) != num_classes:
    raise ValueError(f"Got {len(class_names)} class names for {num_classes} "
                     "classes.")
  return list(class_names)


def roc_curve(labels, probs, path, class_names: Sequence[str] | None = None
             ) -> str:
  """Plots ROC curves: one for a binary task, one-vs-rest per class otherwise.

  Args:
    labels: [N] integer labels.
    probs: [N, C] class scores, or [N] class-1 scores for a binary task. Only
      their order matters, so log-posteriors or `binary_log_odds` give the
      same curves as probabilities, without the ties that saturated
      probabilities create.
    path: output PNG path.
    class_names: optional C names for the legend.

  A class with no positive or no negative example has no ROC curve and is
  left out of the plot.
  """
  labels = np.asarray(labels)
  scores = np.asarray(probs, dtype=np.float64)
  if scores.ndim == 1:
    # [N] class-1 scores: the binary case, with class 1 positive.
    curves = [(1, scores)]
    num_classes = 2
  else:
    num_classes = scores.shape[1]
    classes = [1] if num_classes == 2 else range(num_classes)
    curves = [(c, scores[:, c]) for c in classes]
  names = _names(class_names, num_classes)

  fig = _new_figure(5.0, 5.0)
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1,
          label="chance")
  for c, class_scores in curves:
    is_positive = labels == c
    if is_positive.all() or not is_positive.any():
      continue
    fpr, tpr, _ = skm.roc_curve(is_positive, class_scores)
    auc = skm.auc(fpr, tpr)
    ax.plot(fpr, tpr, linewidth=1.5, label=f"{names[c]} (AUC = {auc:.3f})")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("False positive rate (1 - specificity)")
  ax.set_ylabel("True positive rate (sensitivity)")
  ax.set_title("ROC curve" if num_classes == 2 else "One-vs-rest ROC curves")
  ax.legend(loc="lower right", fontsize=8)
  return _save(fig, path)


def confusion_matrix(labels, preds, path,
                     class_names: Sequence[str] | None = None) -> str:
  """Plots the confusion matrix (rows: true class, columns: predicted).

  Cells show counts and the fraction of the true class; the colour is that
  fraction (the row-normalised matrix), so a rare class is as readable as a
  common one.

  Args:
    labels: [N] integer true labels.
    preds: [N] integer predicted labels.
    path: output PNG path.
    class_names: optional C names; without them C is the largest label or
      prediction plus one.
  """
  labels = np.asarray(labels)
  preds = np.asarray(preds)
  num_classes = (len(class_names) if class_names is not None
                 else int(max(labels.max(), preds.max())) + 1)
  names = _names(class_names, num_classes)
  counts = skm.confusion_matrix(labels, preds, labels=np.arange(num_classes))
  row_totals = counts.sum(axis=1, keepdims=True)
  fraction = counts / np.maximum(row_totals, 1)

  size = 1.2 + 0.9 * num_classes
  fig = _new_figure(size + 1.0, size)
  ax = fig.add_subplot()
  image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, label="fraction of true class")
  for i in range(num_classes):
    for j in range(num_classes):
      ax.text(j, i, f"{counts[i, j]}\n{fraction[i, j]:.0%}", ha="center",
              va="center", fontsize=8,
              color="white" if fraction[i, j] > 0.5 else "black")
  ax.set_xticks(range(num_classes), names, rotation=45, ha="right")
  ax.set_yticks(range(num_classes), names)
  ax.set_xlabel("Predicted class")
  ax.set_ylabel("True class")
  ax.set_title("Confusion matrix")
  return _save(fig, path)


def reliability_diagram(labels, probs, path, num_bins: int = 15,
                        title: str = "Reliability diagram") -> str:
  """Plots top-label confidence against accuracy, with the ECE in the title.

  Args:
    labels: [N] integer labels.
    probs: [N, C] class probabilities, or a mapping name -> [N, C] to overlay
      several versions of the same predictions (e.g. {"uncalibrated": ...,
      "calibrated": ...}).
    path: output PNG path.
    num_bins: number of equal-width confidence bins (as in the ECE).
    title: first line of the title; the ECE of every series follows it.

  The lower panel shows how many examples fall in each bin, since a point
  far from the diagonal matters little when its bin is nearly empty.
  """
  series = dict(probs) if isinstance(probs, Mapping) else {"model": probs}
  fig = _new_figure(5.0, 6.0)
  top, bottom = fig.subplots(2, 1, sharex=True,
                             gridspec_kw={"height_ratios": [3, 1]})
  top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1,
           label="perfect calibration")
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  width = (edges[1] - edges[0]) / len(series)
  eces = []
  for k, (name, series_probs) in enumerate(series.items()):
    counts, confidence, accuracy = metrics.reliability_bins(
        series_probs, labels, num_bins)
    ece = metrics.expected_calibration_error(series_probs, labels, num_bins)
    eces.append(f"{name}: ECE = {ece:.3f}" if len(series) > 1
                else f"ECE = {ece:.3f}")
    filled = counts > 0
    top.plot(confidence[filled], accuracy[filled], marker="o", linewidth=1.5,
             label=name)
    # Side-by-side bars per bin, one colour per series, matching the lines.
    bottom.bar(edges[:-1] + k * width, counts, width=width, align="edge",
               color=top.lines[-1].get_color())
  top.set_xlim(0, 1)
  top.set_ylim(0, 1.01)
  top.set_ylabel("Accuracy")
  top.set_title(f"{title}\n" + ", ".join(eces), fontsize=10)
  top.legend(loc="upper left", fontsize=8)
  bottom.set_yscale("symlog", linthresh=1)
  bottom.set_xlabel("Confidence (top-label probability)")
  bottom.set_ylabel("Count")
  return _save(fig, path)


def image_grid(images, path, labels: Sequence | None = None, ncols: int = 8,
               title: str | None = None) -> str:
  """Tiles images into a grid, e.g. samples of each class.

  Args:
    images: [N, H, W, C] with C = 1 (grayscale) or 3 (RGB), or [N, H, W]
      grayscale; values in [0, 1] (clipped).
    path: output PNG path.
    labels: optional N captions (e.g. class names), one above each image.
    ncols: images per row.
    title: optional title over the whole grid.
  """
  images = np.asarray(images, dtype=np.float32)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
    raise ValueError("images must have shape [N, H, W], [N, H, W, 1] or "
                     f"[N, H, W, 3], got {images.shape}.")
  num = images.shape[0]
  if num == 0:
    raise ValueError("image_grid needs at least one image.")
  if labels is not None and len(labels) != num:
    raise ValueError(f"Got {len(labels)} labels for {num} images.")
  images = np.clip(images, 0.0, 1.0)

  ncols = min(ncols, num)
  nrows = math.ceil(num / ncols)
  caption_height = 0.3 if labels is not None else 0.0
  fig = _new_figure(1.6 * ncols, (1.6 + caption_height) * nrows)
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for i, ax in enumerate(axes):
    ax.axis("off")
    if i >= num:
      continue
    # Fixed vmin/vmax: grayscale images keep their absolute intensity instead
    # of being stretched to the full colour range one by one.
    ax.imshow(images[i], cmap="gray", vmin=0.0, vmax=1.0,
              interpolation="nearest")
    if labels is not None:
      ax.set_title(str(labels[i]), fontsize=8)
  if title is not None:
    fig.suptitle(title)
  return _save(fig, path)


def work_precision(lines: Mapping[str, tuple[Sequence[float], Sequence[float]]], path, *,
                   xlabel: str, ylabel: str, title: str = "", log_y: bool = True) -> str:
  """One marked line per named series of (cost, error) points, log-scaled cost axis.

  The solver benchmark's diagrams (`sgc_jax.solver_bench`): error against
  seconds, or decision agreement against network evaluations.
  """
  fig = _new_figure(7.0, 4.5)
  ax = fig.add_subplot(1, 1, 1)
  for name, (xs, ys) in lines.items():
    order = np.argsort(xs)
    ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], marker="o", markersize=3, label=name)
  ax.set_xscale("log")
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  return _save(fig, path)
