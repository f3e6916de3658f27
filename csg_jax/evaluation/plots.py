"""Every figure csg_jax draws: the gate, the mutual-information matrix, the spread of filter MI,
the applications' localization maps, per-class IoU bars and detection ROC curves, per-image
explanations and the filter atlas.

Every figure takes its colour or axis range as an argument, so STD and CSG runs are drawn on the
same scale and can be compared by eye. Files are PNGs written with matplotlib's Agg backend (no
display needed), selected here once for the whole package.
"""

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import ticker  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from csg_jax import fileio  # pylint: disable=wrong-import-position


def _save(fig, path: str, *, dpi: int) -> None:
  """Writes the figure in one step (locally or to an object store) and frees it."""
  with fileio.atomic_file(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=dpi, format="png")
  plt.close(fig)


# How the matrix figures order their filters, as their axis says.
def matrix_title(label: str, density: float | None, suffix: str = "") -> str:
  """E.g. "gate G at step 40, L1 density 0.100" or "softmax(Θ) over classes"."""
  return " ".join(p for p in (label, suffix) if p) + (
      "" if density is None else f", L1 density {density:.3f}")


BY_GATE = "gate class (argmax of its column; closed filters last)"


def by_matrix(label: str) -> str:
  """The axis text of filters grouped by a method's class matrix ("gate", "Θ")."""
  return BY_GATE.replace("gate", label, 1)
BY_MI = "MI class (argmax of its column)"


def filter_order(assigned: np.ndarray, strength: np.ndarray) -> np.ndarray:
  """Filters grouped by assigned class, strongest first within a class."""
  return np.lexsort((-strength, assigned))


def matrix_order(matrix: np.ndarray) -> np.ndarray:
  """Filters grouped by their class in `matrix` (argmax over classes), strongest first; columns
  that are all zero (a closed gate filter) last."""
  top = matrix.max(0)
  return filter_order(np.where(top > 0, matrix.argmax(0), matrix.shape[0]), top)


def _matrix_axes(ax, matrix, order, class_names, vmax, title, cmap, sorted_by):
  image = ax.imshow(matrix[:, order], aspect="auto", interpolation="nearest", cmap=cmap,
                    vmin=0.0, vmax=vmax)
  ax.set_title(title)
  ax.set_xlabel(f"filter, grouped by {sorted_by}, K = {matrix.shape[1]}")
  ax.set_ylabel("class")
  if len(class_names) <= 30:
    ax.set_yticks(range(len(class_names)))
    ax.set_yticklabels(class_names, fontsize=7)
  return image


def _matrix_fig(matrix, class_names, title, vmax, colorbar_label, sorted_by, cmap):
  fig, ax = plt.subplots(figsize=(10, 3.5))
  image = _matrix_axes(ax, matrix, matrix_order(matrix), class_names, vmax, title, cmap,
                       sorted_by)
  fig.colorbar(image, ax=ax, label=colorbar_label)
  fig.tight_layout()
  return fig


def matrix_figure(path: str, matrix: np.ndarray, class_names: Sequence[str], *, title: str,
                  vmax: float, colorbar_label: str, sorted_by: str,
                  cmap: str = "viridis") -> None:
  """A [C, K] matrix (gate or MI) as a heat map, filters grouped by their class in it
  (`matrix_order`); `sorted_by` names that class on the axis, e.g. "gate class (closed last)"."""
  _save(_matrix_fig(matrix, class_names, title, vmax, colorbar_label, sorted_by, cmap), path,
        dpi=100)


def _pixels(fig, *, dpi: int) -> np.ndarray:
  """The figure drawn as uint8 RGB [H, W, 3] (for TensorBoard), then freed."""
  fig.set_dpi(dpi)
  fig.canvas.draw()
  pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return pixels


def matrix_image(matrix: np.ndarray, class_names: Sequence[str], *, title: str, vmax: float,
                 colorbar_label: str, sorted_by: str, cmap: str = "viridis") -> np.ndarray:
  """matrix_figure's drawing as uint8 RGB [H, W, 3], for TensorBoard."""
  return _pixels(_matrix_fig(matrix, class_names, title, vmax, colorbar_label, sorted_by, cmap),
                 dpi=100)


def max_mi_histogram(path: str, max_mi: dict, *, mi_ceiling: float, title: str) -> None:
  """Histogram of each filter's largest MI over classes; one series per run, shared bins."""
  _save(_max_mi_histogram_fig(max_mi, mi_ceiling, title), path, dpi=100)


def max_mi_histogram_image(max_mi: dict, *, mi_ceiling: float, title: str) -> np.ndarray:
  """max_mi_histogram's drawing as uint8 RGB [H, W, 3], for TensorBoard."""
  return _pixels(_max_mi_histogram_fig(max_mi, mi_ceiling, title), dpi=100)


def _max_mi_histogram_fig(max_mi, mi_ceiling, title):
  bins = np.linspace(0.0, mi_ceiling, 31)
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, values in max_mi.items():
    ax.hist(np.clip(values, 0, mi_ceiling), bins=bins, alpha=0.6,
            label=f"{name} (MIS {np.mean(values):.3f})")
  ax.set_xlim(0, mi_ceiling)
  ax.set_xlabel("largest MI of a filter over classes (nats)")
  ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # counts
  ax.set_ylabel("filters")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  return fig


def comparison_figure(path: str, runs: dict, class_names: Sequence[str], *,
                      mi_ceiling: float) -> None:
  """One column per run: its MI matrix above its max-MI histogram, on shared scales; above
  them, one row with the gate of each run that has one (across the whole width)."""
  names = list(runs)
  gated = [name for name in names if runs[name].get("gate") is not None]
  bins = np.linspace(0, mi_ceiling, 31)
  top = max(np.histogram(np.clip(r["mi_matrix"].max(0), 0, mi_ceiling), bins)[0].max()
            for r in runs.values())
  fig = plt.figure(figsize=(7 * len(names), 7 + 3 * bool(gated)), layout="constrained")
  grid = fig.add_gridspec(2 if gated else 1, 1, height_ratios=[1, 2] if gated else None)
  if gated:
    gate_row = grid[0].subgridspec(1, len(gated))
    for i, name in enumerate(gated):
      ax = fig.add_subplot(gate_row[0, i])
      gate = runs[name]["gate"]
      label = runs[name].get("matrix_label", "gate G")
      image = _matrix_axes(ax, gate, matrix_order(gate), class_names, 1.0, f"{name}: {label}",
                           "magma", by_matrix(runs[name].get("class_label", "gate")))
      fig.colorbar(image, ax=ax, label=runs[name].get("value_label", "gate value"))
  rows = grid[-1].subgridspec(2, len(names))
  for col, name in enumerate(names):
    mi = runs[name]["mi_matrix"]
    ax = fig.add_subplot(rows[0, col])
    image = _matrix_axes(ax, mi, matrix_order(mi), class_names, mi_ceiling,
                         f"{name}: MI(filter; class), MIS {mi.max(0).mean():.3f}", "viridis",
                         BY_MI)
    fig.colorbar(image, ax=ax, label="nats")
    ax = fig.add_subplot(rows[1, col])
    ax.hist(np.clip(mi.max(0), 0, mi_ceiling), bins=bins)
    ax.set_xlim(0, mi_ceiling)
    ax.set_ylim(0, top + 1)
    ax.set_title(f"{name}: largest MI of each filter")
    ax.set_xlabel("largest MI of a filter over classes (nats)")
    ax.set_ylabel("filters")
  _save(fig, path, dpi=90)


def roc_figure(path: str, panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, float]]],
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


def localization_examples_figure(path: str, examples: dict[str, np.ndarray],
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


# Per-image explanations and the filter atlas. Activation maps are drawn as a share of the
# filter's largest activation on the test split, and CAMs as a share of the class's largest |CAM|
# there: fixed scales, so the same filter's maps, and STD and CSG figures, compare by eye.
_SERVES = "tab:green"  # a filter that serves the predicted (or the row's) class
_OTHER = "tab:gray"
_ACTIVATION_CMAP = "inferno"


def _show_image(ax, image: np.ndarray) -> None:
  """A uint8 [H, W, C] image, one-channel images in grey; no ticks."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  else:
    ax.imshow(image, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def _overlay(ax, image: np.ndarray, heat: np.ndarray, *, cmap: str, vmin: float, vmax: float):
  _show_image(ax, image)
  return ax.imshow(heat, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.6, interpolation="bilinear")


def explanation_figure(path: str, e, class_names: Sequence[str], *, filter_notes: Sequence[str],
                       serves_predicted: Sequence[bool], filter_max: np.ndarray, cam_max: float,
                       title: str) -> None:
  """One image taken apart (an explain.Explanation): the image, the CAM of the predicted class,
  the top class probabilities, the contributions to the predicted logit, and the activation maps
  of the filters that gave most, each with its class (`filter_notes`)."""
  n = len(e.top_filters)
  predicted = class_names[e.predicted]
  fig = plt.figure(figsize=(max(2.4 * n, 12.0), 6.6))
  grid = fig.add_gridspec(2, 1, height_ratios=[1.0, 1.0], hspace=0.35, top=0.88, bottom=0.04,
                          left=0.04, right=0.96)
  top = grid[0].subgridspec(1, 4, width_ratios=[1, 1, 1.3, 2.4], wspace=0.45)
  ax = fig.add_subplot(top[0])
  _show_image(ax, e.image)
  ax.set_title(f"{e.source.rsplit('/', 1)[-1]}\n"  # a file by its name: the JSON has the path
               f"label: {'?' if e.label is None else class_names[e.label]}", fontsize=9)
  ax = fig.add_subplot(top[1])
  heat = _overlay(ax, e.image, e.cam / (cam_max if cam_max > 0 else 1.0), cmap="RdBu_r",
                  vmin=-1.0, vmax=1.0)
  ax.set_title(f"CAM of '{predicted}'", fontsize=9)
  bar = fig.colorbar(heat, ax=ax, orientation="horizontal", fraction=0.08, pad=0.04)
  bar.set_label(f"CAM / largest |CAM| of '{predicted}' (test split)", fontsize=7)
  bar.ax.tick_params(labelsize=7)

  ax = fig.add_subplot(top[2])
  ranked = np.argsort(-e.probabilities, kind="stable")[:3][::-1]
  bars = ax.barh([class_names[c] for c in ranked], e.probabilities[ranked],
                 color=[_SERVES if c == e.predicted else _OTHER for c in ranked])
  ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
  ax.set(xlim=(0, 1.25), xticks=[0, 0.5, 1])
  ax.set_title("prediction", fontsize=9)
  ax.set_xlabel("probability", fontsize=8)
  ax.tick_params(labelsize=8)

  ax = fig.add_subplot(top[3])
  shown = e.contributions[e.top_filters]
  rest = float(e.contributions.sum() - shown.sum())
  names = [f"filter {k}" for k in e.top_filters] + [
      f"{len(e.contributions) - n} others", "bias"]
  values = list(shown) + [rest, e.bias]
  colors = [_SERVES if s else _OTHER for s in serves_predicted] + ["black", "black"]
  bars = ax.barh(names[::-1], values[::-1], color=colors[::-1])
  ax.bar_label(bars, fmt="%+.2f", fontsize=8, padding=2)
  ax.axvline(0, color="black", linewidth=0.6)
  low, high = min(0.0, *values), max(0.0, *values)
  margin = 0.3 * (high - low or 1.0)
  ax.set_xlim(low - (margin if low < 0 else 0), high + margin)
  ax.set_title(f"logit of '{predicted}' = {e.logit:.2f}: contributions W·f + bias", fontsize=9)
  ax.set_xlabel("logit units (green: the filter serves the predicted class)", fontsize=8)
  ax.tick_params(labelsize=8)

  bottom = grid[1].subgridspec(1, n + 1, width_ratios=[1] * n + [0.08], wspace=0.25)
  for j, k in enumerate(e.top_filters):
    ax = fig.add_subplot(bottom[j])
    scale = filter_max[k] if filter_max[k] > 0 else 1.0
    heat = _overlay(ax, e.image, e.filter_maps[j] / scale, cmap=_ACTIVATION_CMAP, vmin=0.0,
                    vmax=1.0)
    ax.set_title(f"filter {k}: {e.contributions[k]:+.2f}\n{filter_notes[j]}", fontsize=8,
                 color="darkgreen" if serves_predicted[j] else "black")
  bar = fig.colorbar(heat, cax=fig.add_subplot(bottom[n]))
  bar.set_label("activation / filter's largest on the test split", fontsize=7)
  bar.ax.tick_params(labelsize=7)
  fig.suptitle(title, fontsize=10)
  _save(fig, path, dpi=100)


def atlas_page(path: str, rows, row_notes: Sequence[str], row_classes: Sequence[int],
               class_names: Sequence[str], *, title: str) -> None:
  """Atlas rows (explain.AtlasRow): each filter's top images with its activation overlaid, on
  the filter's own fixed scale; every image is labelled with its class, green where it is the
  filter's assigned class (`row_classes`), and a rule separates the classes' groups."""
  _save(_atlas_fig(rows, row_notes, row_classes, class_names, title), path, dpi=90)


def atlas_image(rows, row_notes: Sequence[str], row_classes: Sequence[int],
                class_names: Sequence[str], *, title: str) -> np.ndarray:
  """atlas_page's drawing as uint8 RGB [H, W, 3], for TensorBoard."""
  return _pixels(_atlas_fig(rows, row_notes, row_classes, class_names, title), dpi=90)


def _atlas_fig(rows, row_notes, row_classes, class_names, title):
  n, k = len(rows), max(len(r.images) for r in rows)
  fig, axes = plt.subplots(n, k, figsize=(max(7.5, 2.2 + 1.05 * k), 1.0 + 1.1 * n),
                           squeeze=False)
  heat = None
  for r, (row, note, assigned) in enumerate(zip(rows, row_notes, row_classes)):
    for j in range(k):
      ax = axes[r, j]
      if j >= len(row.images):
        ax.axis("off")
        continue
      heat = _overlay(ax, row.images[j], row.maps[j], cmap=_ACTIVATION_CMAP, vmin=0.0, vmax=1.0)
      label = int(row.labels[j])
      ax.text(0.03, 0.97, class_names[label], transform=ax.transAxes, ha="left", va="top",
              fontsize=7, color="white",
              bbox={"facecolor": _SERVES if label == assigned else "tab:red", "pad": 1.0,
                    "linewidth": 0})
    axes[r, 0].set_ylabel(note, rotation=0, ha="right", va="center", fontsize=8, labelpad=6)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0, 0.9, 1 - 0.5 / fig.get_figheight()))
  for r in range(1, n):  # a rule between class groups
    if row_classes[r] != row_classes[r - 1]:
      y = (axes[r - 1, 0].get_position().y0 + axes[r, 0].get_position().y1) / 2
      fig.add_artist(plt.Line2D([0.01, 0.9], [y, y], color="black", linewidth=0.8))
  bar = fig.colorbar(heat, cax=fig.add_axes((0.915, 0.3, 0.015, 0.4)))
  bar.set_label("activation / filter's largest on the split", fontsize=7)
  bar.ax.tick_params(labelsize=7)
  return fig
