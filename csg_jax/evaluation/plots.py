"""Every figure csg_jax draws: the gate, the mutual-information matrix, the spread of filter MI,
and the applications' localization maps, per-class IoU bars and detection ROC curves.

Every figure takes its colour or axis range as an argument, so STD and CSG runs are drawn on the
same scale and can be compared by eye. Files are PNGs written with matplotlib's Agg backend (no
display needed), selected here once for the whole package.
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from csg_jax import fileio  # pylint: disable=wrong-import-position


def _save(fig, path: str, *, dpi: int) -> None:
  """Writes the figure in one step (locally or to an object store) and frees it."""
  with fileio.atomic_file(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=dpi, format="png")
  plt.close(fig)


def filter_order(assigned: np.ndarray, strength: np.ndarray) -> np.ndarray:
  """Filters grouped by assigned class, strongest first within a class."""
  return np.lexsort((-strength, assigned))


def _matrix_axes(ax, matrix, order, class_names, vmax, title, cmap):
  image = ax.imshow(matrix[:, order], aspect="auto", interpolation="nearest", cmap=cmap,
                    vmin=0.0, vmax=vmax)
  ax.set_title(title)
  ax.set_xlabel(f"filter (sorted by assigned class), K = {matrix.shape[1]}")
  ax.set_ylabel("class")
  if len(class_names) <= 30:
    ax.set_yticks(range(len(class_names)))
    ax.set_yticklabels(class_names, fontsize=7)
  return image


def matrix_figure(path: str, matrix: np.ndarray, class_names: Sequence[str], *, title: str,
                  vmax: float, colorbar_label: str, order: Optional[np.ndarray] = None,
                  cmap: str = "viridis") -> None:
  """A [C, K] matrix (gate or MI) as a heat map, filters sorted by their assigned class."""
  if order is None:
    order = filter_order(matrix.argmax(0), matrix.max(0))
  fig, ax = plt.subplots(figsize=(10, 3.5))
  image = _matrix_axes(ax, matrix, order, class_names, vmax, title, cmap)
  fig.colorbar(image, ax=ax, label=colorbar_label)
  fig.tight_layout()
  _save(fig, path, dpi=100)


def max_mi_histogram(path: str, max_mi: dict, *, mi_ceiling: float, title: str) -> None:
  """Histogram of each filter's largest MI over classes; one series per run, shared bins."""
  bins = np.linspace(0.0, mi_ceiling, 31)
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, values in max_mi.items():
    ax.hist(np.clip(values, 0, mi_ceiling), bins=bins, alpha=0.6,
            label=f"{name} (MIS {np.mean(values):.3f})")
  ax.set_xlim(0, mi_ceiling)
  ax.set_xlabel("largest MI of a filter over classes (nats)")
  ax.set_ylabel("filters")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  _save(fig, path, dpi=100)


def comparison_figure(path: str, runs: dict, class_names: Sequence[str], *,
                      mi_ceiling: float) -> None:
  """Side by side, one column per run: its gate (if any) above its MI matrix; shared scales."""
  names = list(runs)
  bins = np.linspace(0, mi_ceiling, 31)
  top = max(np.histogram(np.clip(r["mi_matrix"].max(0), 0, mi_ceiling), bins)[0].max()
            for r in runs.values())
  fig, axes = plt.subplots(3, len(names), figsize=(7 * len(names), 9), squeeze=False)
  for col, name in enumerate(names):
    run = runs[name]
    mi = run["mi_matrix"]
    order = filter_order(mi.argmax(0), mi.max(0))
    if run.get("gate") is not None:
      gate = run["gate"]
      g_order = filter_order(gate.argmax(0), gate.max(0))
      image = _matrix_axes(axes[0, col], gate, g_order, class_names, 1.0, f"{name}: gate G",
                           "magma")
      fig.colorbar(image, ax=axes[0, col])
    else:
      axes[0, col].axis("off")
      axes[0, col].text(0.5, 0.5, f"{name}: no gate", ha="center", va="center")
    image = _matrix_axes(axes[1, col], mi, order, class_names, mi_ceiling,
                         f"{name}: MI(filter; class), MIS {mi.max(0).mean():.3f}", "viridis")
    fig.colorbar(image, ax=axes[1, col], label="nats")
    axes[2, col].hist(np.clip(mi.max(0), 0, mi_ceiling), bins=bins)
    axes[2, col].set_xlim(0, mi_ceiling)
    axes[2, col].set_ylim(0, top + 1)
    axes[2, col].set_xlabel("largest MI of a filter over classes (nats)")
    axes[2, col].set_ylabel("filters")
  fig.tight_layout()
  _save(fig, path, dpi=90)


def roc_figure(path: str, panels: Mapping[str, Mapping[str, Tuple[np.ndarray, np.ndarray, float]]],
               *, title: str = "") -> None:
  """One ROC panel per key of `panels` ({curve label: (fpr, tpr, auc)})."""
  names = list(panels)
  cols = min(3, max(1, len(names)))
  rows = (len(names) + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
  for ax, name in zip(axes.ravel(), names):
    curves = [(label, c) for label, c in panels[name].items() if len(c[0])]
    for label, (fpr, tpr, auc) in curves:
      ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(title=name, xlabel="false positive rate", ylabel="true positive rate",
           xlim=(0, 1), ylim=(0, 1.01))
    if curves:
      ax.legend(fontsize=7, loc="lower right")
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path, dpi=110)


def localization_examples_figure(path: str, examples: Dict[str, np.ndarray],
                                 class_names: Sequence[str], *, title: str = "") -> None:
  """Rows of image | object mask | CAM | GradMap | ActivMap, each map outlined where kept.

  `examples` is localization.example_maps' output; the maps it lacks get no column.
  """
  cols = [("object mask", "object_mask", None), ("CAM (top 30 %)", "cam", "cam_mask"),
          ("GradMap (top filter)", "gradmap", "gradmap_mask"),
          ("ActivMap (top filter)", "activmap", "activmap_mask")]
  cols = [c for c in cols if c[1] in examples]
  n = len(examples["label"])
  fig, axes = plt.subplots(n, 1 + len(cols), figsize=(1.9 * (1 + len(cols)), 1.9 * n),
                           squeeze=False)
  for i in range(n):
    axes[i, 0].imshow(examples["image"][i])
    axes[i, 0].set_ylabel(class_names[examples["label"][i]], fontsize=8)
    for j, (name, key, mask_key) in enumerate(cols, start=1):
      ax = axes[i, j]
      ax.imshow(examples[key][i], cmap="gray" if mask_key is None else "viridis")
      if mask_key is not None:
        ax.contour(examples[mask_key][i].astype(float), levels=[0.5], colors="red",
                   linewidths=0.8)
        ax.contour(examples["object_mask"][i].astype(float), levels=[0.5], colors="white",
                   linewidths=0.6, linestyles="dashed")
      if i == 0:
        ax.set_title(name, fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path, dpi=100)


def localization_iou_figure(path: str, reports: Mapping[str, Mapping]) -> None:
  """Per-class IoU bars, one panel per localization method, one bar colour per run.

  `reports` maps a run label to its applications report (with a "localization" entry).
  """
  runs = list(reports)
  names = reports[runs[0]]["class_names"]
  methods = [m for m in ("gradmap", "cam", "activmap")
             if all(m in reports[r]["localization"] for r in runs)]
  fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.6), squeeze=False)
  width = 0.8 / len(runs)
  for ax, method in zip(axes[0], methods):
    for i, r in enumerate(runs):
      per = reports[r]["localization"][method]["per_class"]
      # A class no ActivMap filter relates to has no IoU: no bar (NaN), not a zero bar.
      vals = [per[n]["iou"] if per[n]["iou"] is not None else np.nan for n in names]
      total = reports[r]["localization"][method]["iou"]
      x = np.arange(len(names) + 1) + i * width
      ax.bar(x, vals + [total], width, label=f"{r} ({total:.3f})")
      if method == "activmap":  # how many filters each bar averages
        counts = [per[n]["num_filters"] for n in names]
        counts.append(reports[r]["localization"][method]["num_filters"])
        for xi, v, c in zip(x, vals + [total], counts):
          ax.text(xi, (0 if np.isnan(v) else v) + 0.02, str(c), ha="center", fontsize=6)
    ax.set_xticks(np.arange(len(names) + 1) + 0.4 - width / 2)
    ax.set_xticklabels(names + ["all"], rotation=45, ha="right", fontsize=8)
    ax.set(title={"gradmap": "GradMap IoU", "cam": "CAM IoU",
                  "activmap": "ActivMap IoU (number of related filters)"}[method], ylim=(0, 1))
    ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path, dpi=110)
