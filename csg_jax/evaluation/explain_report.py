"""A run's explanations and filter atlas, written to <workdir>/explain (csg-explain).

`explain_workdir(W, ...)` explains test images (by index) and image files with a trained run,
one PNG each and explanations.json, and draws its filter atlas (atlas_<page>.png, atlas.json).
The numbers come from explain.py; `atlas_pages` lays out the atlas for the PNG pages and for the
TensorBoard images at the end of training (evaluators.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from csg_jax import fileio
from csg_jax import methods
from csg_jax.errors import CSGError
from csg_jax.evaluation import explain
from csg_jax.evaluation import plots
from csg_jax.evaluation import report
from csg_jax.log import log
from csg_jax.runs import load_run


def _filter_note(classes: explain.FilterClasses, k: int, class_names: Sequence[str]) -> str:
  """Filter k's classes, a line each: 'gate: 3 (1.00)', 'MI: 3'."""
  d = classes.describe(k, class_names)
  parts = []
  if "gate_class" in d:
    parts.append(f"{classes.label}: closed" if d["gate_class"] is None else
                 f"{classes.label}: {d['gate_class_name']} ({d['gate_value']:.2f})")
  if "mi_class" in d:
    parts.append(f"MI: {d['mi_class_name']}")
  return "\n".join(parts)


def _output_names(indices: Sequence[int], files: Sequence[str]) -> list[str]:
  """test_<index> for test images, the file's stem for files; made unique."""
  names: list[str] = []
  for stem in [f"test_{i}" for i in indices] + [
      os.path.splitext(fileio.basename(f))[0] for f in files]:
    name, n = stem, 1
    while name in names:
      n += 1
      name = f"{stem}-{n}"
    names.append(name)
  return names


def _write_explanations(run, workdir, out, classes, scan, indices, files, title,
                        num_filters) -> dict[str, Any]:
  images = [explain.load_image_file(f, run.dataset.image_shape) for f in files]
  labels: list[int | None] = [None] * len(files)
  if indices:
    test_images, test_labels = run.dataset.splits["test"].read(np.asarray(indices, np.int64))
    images, labels = list(test_images) + images, list(test_labels) + labels
  # Image files relative to the output folder, so explanations.json names no machine's folders.
  sources = [f"test[{i}]" for i in indices] + [
      f if fileio.is_remote(f) or fileio.is_remote(out) else
      os.path.relpath(fileio.absolute(f), fileio.absolute(out)) for f in files]
  class_names = list(run.dataset.class_names)
  records, shares = [], {"gate": [], "mi": []}
  for e, name in zip(explain.explain_images(run, np.stack(images), sources, labels,
                                            num_filters=num_filters),
                     _output_names(indices, files)):
    plots.explanation_figure(
        fileio.join(out, f"{name}.png"), e, class_names,
        filter_notes=[_filter_note(classes, k, class_names) for k in e.top_filters],
        serves_predicted=classes.assigned[e.top_filters] == e.predicted,
        filter_max=scan.filter_max, cam_max=float(scan.cam_max[e.predicted]),
        title=f"{title}: '{class_names[e.predicted]}' ({e.probabilities[e.predicted]:.3f})")
    for by, assigned in (("gate", classes.gate_class), ("mi", classes.mi_class)):
      if assigned is not None:
        shares[by].append(explain.top_filters_of_predicted_class(e, assigned, 3))
    records.append({"figure": f"{name}.png", **explain.explanation_record(e, classes,
                                                                          class_names)})
  summary = {by: float(np.mean(v)) for by, v in shares.items() if v}
  fileio.write_json_atomic(fileio.join(out, "explanations.json"), {
      "workdir": fileio.name(workdir), "method": run.config.method, "step": run.step,
      "class_names": class_names,
      "top3_filters_of_predicted_class": summary, "images": records})
  return summary


def atlas_pages(run, classes, scan, title, filters, filters_per_page):
  """(rows, notes, assigned classes, title) of each page of the atlas of `filters` (in atlas
  order): a note per filter with its class, value and purity."""
  class_names = list(run.dataset.class_names)
  by = {"gate": classes.label, "mi": "MI"}[classes.assigned_by]
  value = "{:.3f} nats" if by == "MI" else "{:.2f}"
  assigned, strength = classes.assigned, classes.strength
  hits = (scan.top_labels == assigned[:, None]).sum(axis=1)
  top_k = scan.top_labels.shape[1]
  shown = "" if len(filters) == len(assigned) else f" shown (of {len(assigned)})"
  for start in range(0, len(filters), filters_per_page):
    page = filters[start:start + filters_per_page]
    notes = [f"filter {k}\n" + (f"{by}: closed" if assigned[k] == explain.CLOSED else
                                f"{by}: {class_names[assigned[k]]} ({value.format(strength[k])})"
                                f"\npurity {hits[k]}/{top_k}") for k in page]
    yield (explain.atlas_rows(run, scan, page), notes, assigned[page],
           f"{title}: filters {start + 1}-{start + len(page)} of {len(filters)}{shown} by "
           f"{by} class,\neach with its top {top_k} {scan.split} images (label green: the "
           "filter's class)")


def _write_atlas(run, workdir, out, classes, scan, title, filters_per_page) -> dict[str, Any]:
  class_names = list(run.dataset.class_names)
  pages = []
  for rows, notes, assigned, page_title in atlas_pages(
      run, classes, scan, title, explain.atlas_order(classes), filters_per_page):
    name = f"atlas_{len(pages) + 1}.png"
    plots.atlas_page(fileio.join(out, name), rows, notes, assigned, class_names,
                     title=page_title)
    pages.append(name)
  record = explain.atlas_record(scan, classes, class_names)
  fileio.write_json_atomic(fileio.join(out, "atlas.json"), {
      "workdir": fileio.name(workdir), "method": run.config.method, "step": run.step,
      "pages": pages, **record})
  return {"pages": len(pages), "mean_purity": record["mean_purity"]}


def explain_workdir(workdir: str, *, indices: Sequence[int] = (), files: Sequence[str] = (),
                    atlas: bool = False, out: str | None = None, top_k: int = 8,
                    filters_per_page: int = 16, num_filters: int = 5) -> dict[str, Any]:
  """Explains test images (by index) and image files with a trained run, and with `atlas`
  draws its filter atlas, under `out` (default <workdir>/explain).

  Writes one PNG per image and explanations.json; atlas_<page>.png and atlas.json. The MI
  classes need <workdir>/eval of the checkpoint: the run is evaluated first when it is missing.
  Returns what was written: the output folder, the share of top-3 filters serving the
  predicted class by gate and by MI, the atlas's pages and mean purities.
  """
  run = load_run(workdir)
  size = len(run.dataset.splits["test"])
  bad = [i for i in indices if not 0 <= i < size]
  if bad:
    raise CSGError(f"test-split index {bad[0]} is out of range: the test split has {size} "
                   f"images (0 to {size - 1})")
  mi = explain.load_mi_matrix(workdir, run.step)
  if mi is None:
    log(f"{fileio.join(workdir, 'eval')} has no evaluation of step {run.step}: evaluating the "
        "run first (csg-evaluate), for the filters' MI classes")
    mi = report.evaluate_workdir(workdir, run=run).mi_matrix
  method = methods.for_config(run.config)
  classes = explain.FilterClasses(method.class_matrix(run.state.gates), mi, method.class_label)
  scan = explain.scan_split(run, "test", top_k=top_k)
  out = out or fileio.join(workdir, "explain")
  fileio.makedirs(out)
  title = (f"{run.config.method.upper()} {run.config.model.name} on {run.dataset.name}, "
           f"step {run.step}")
  written: dict[str, Any] = {"out": out, "title": title, "class_label": method.class_label}
  if indices or files:
    written["explanations"] = len(indices) + len(files)
    written["top3_filters_of_predicted_class"] = _write_explanations(
        run, workdir, out, classes, scan, indices, files, title, num_filters)
  if atlas:
    written["atlas"] = _write_atlas(run, workdir, out, classes, scan, title, filters_per_page)
  return written
