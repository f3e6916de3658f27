"""Figures of a trained run: the gate, the mutual-information matrix, the spread of filter MI.

Every figure takes its colour or axis range as an argument, so STD and CSG runs are drawn on the
same scale and can be compared by eye. Files are PNGs written with matplotlib's Agg backend (no
display needed).
"""

from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


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
  fig.savefig(path, dpi=100)
  plt.close(fig)


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
  fig.savefig(path, dpi=100)
  plt.close(fig)


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
  fig.savefig(path, dpi=90)
  plt.close(fig)
