"""After training: the evaluation report of one run, the STD-vs-CSG comparison, and a run's
explanations and filter atlas.

`evaluate_workdir(W)` restores W's newest checkpoint, runs the test split through the STD path,
and writes W/eval/report.json (accuracy, MIS, density, per-class accuracy, filters per class),
W/eval/mi_matrix.npy and three figures. `compare(std_report, csg_report)` renders the paper's
Table 1 form. `explain_workdir(W, ...)` writes per-image explanations and the filter atlas
(computed by explain.py) to W/explain.
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import numpy as np

from csg_jax import fileio
from csg_jax.errors import CSGError
from csg_jax.evaluation import explain
from csg_jax.evaluation import mis as mis_lib
from csg_jax.evaluation import plots
from csg_jax.evaluation import predict
from csg_jax.log import log
from csg_jax.training import loop
from csg_jax.training import run as run_lib


def _per_class(values, class_names) -> Dict[str, Any]:
  return {name: (None if v is None else (int(v) if isinstance(v, (np.integer, int)) else v))
          for name, v in zip(class_names, values)}


@dataclasses.dataclass
class Evaluation:
  report: Dict[str, Any]  # what report.json holds
  mi_matrix: np.ndarray  # [C, K]
  gate: Optional[np.ndarray]  # [C, K], None for STD
  class_names: Sequence[str]


def evaluate_workdir(workdir: str, *, split: str = "test",
                     run: Optional[run_lib.TrainedRun] = None) -> Evaluation:
  """Evaluates a trained run and writes its report and figures under <workdir>/eval.

  `run`: the workdir's run when the caller has restored it already (not restored twice).
  """
  run = run or run_lib.load_run(workdir)
  eval_fn = predict.make_eval_fn(run.model, run.mesh)
  result = predict.evaluate(eval_fn, run.state, run.dataset, run.config, run.mesh, split)
  gate = run.state.host_gate()
  summary = predict.summarize_eval(result, run.dataset.num_classes, gate, run.config.seed)
  mi = summary["mi_matrix"]
  names = list(run.dataset.class_names)
  num_classes = run.dataset.num_classes
  ceiling = mis_lib.mi_ceiling(result["label"], num_classes)
  by_mi = mis_lib.filters_per_class(mis_lib.assigned_class_from_mi(mi), num_classes)
  by_gate = (None if gate is None else mis_lib.filters_per_class(
      mis_lib.assigned_class_from_gate(gate), num_classes))

  out_dir = fileio.join(workdir, "eval")
  fileio.makedirs(out_dir)
  figures = {"mi_matrix": "eval/mi_matrix.png", "max_mi_histogram": "eval/max_mi_histogram.png"}
  if gate is not None:
    figures["gate"] = "eval/gate.png"
  title = f"{run.config.method.upper()} {run.config.model.name} on {run.dataset.name}"
  plots.matrix_figure(fileio.join(workdir, figures["mi_matrix"]), mi, names, vmax=ceiling, colorbar_label="nats",
                      title=f"{title}: MI(filter; class), MIS {summary['mis']:.3f}")
  plots.max_mi_histogram(fileio.join(workdir, figures["max_mi_histogram"]), {run.config.method.upper(): mi.max(0)},
                         mi_ceiling=ceiling, title=title)
  if gate is not None:
    plots.matrix_figure(fileio.join(workdir, figures["gate"]), gate, names, vmax=1.0, colorbar_label="gate value",
                        title=f"{title}: gate G, L1 density {summary['gate_density']:.3f}",
                        cmap="magma")
  with fileio.atomic_file(fileio.join(out_dir, "mi_matrix.npy"), suffix=".npy") as tmp:
    np.save(tmp, mi)
  report = {
      "workdir": fileio.absolute(workdir),
      "method": run.config.method, "dataset": run.dataset.name, "model": run.config.model.name,
      "step": run.step, "split": split, "num_examples": summary["num_examples"],
      "accuracy": summary["accuracy"], "mis": summary["mis"],
      "gate_density": summary["gate_density"],
      "per_class_accuracy": _per_class(summary["per_class_accuracy"], names),
      "filters_per_class": {"by_gate": None if by_gate is None else _per_class(by_gate, names),
                            "by_mi": _per_class(by_mi, names)},
      "mi_ceiling": ceiling,
      "figures": figures,
  }
  if jax.process_index() == 0:
    fileio.write_json_atomic(fileio.join(out_dir, "report.json"), report)
  return Evaluation(report, mi, gate, names)


def _fmt(value: Optional[float], digits: int = 4) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def comparison_markdown(reports: Mapping[str, Mapping[str, Any]], figure: str) -> str:
  """The paper's Table 1 form (accuracy, MIS, L1 density per training) plus the figure."""
  any_report = next(iter(reports.values()))
  lines = [f"# STD vs CSG: {any_report['model']} on {any_report['dataset']}", "",
           "| training | accuracy | MIS | L1 density | step | workdir |",
           "|---|---|---|---|---|---|"]
  for name, r in reports.items():
    lines.append(f"| {name.upper()} | {_fmt(r['accuracy'])} | {_fmt(r['mis'])} | "
                 f"{_fmt(r['gate_density'])} | {r['step']} | `{r['workdir']}` |")
  lines += ["", f"Test split, STD path, {any_report['num_examples']} examples. MIS: mean over "
            "filters of the largest mutual information (nats) between a filter's pooled "
            "activation and a class indicator; higher is more class-specific.", "",
            f"![STD vs CSG]({figure})", ""]
  return "\n".join(lines)


def write_comparison(root: str, evaluations: Mapping[str, Evaluation]) -> str:
  """<root>/compare.md and <root>/compare.png from per-run evaluations; returns the .md path."""
  figure = fileio.join(root, "compare.png")
  ceiling = max(e.report["mi_ceiling"] for e in evaluations.values())
  plots.comparison_figure(
      figure, {k.upper(): {"mi_matrix": e.mi_matrix, "gate": e.gate}
               for k, e in evaluations.items()},
      next(iter(evaluations.values())).class_names, mi_ceiling=ceiling)
  path = fileio.join(root, "compare.md")
  fileio.write_text_atomic(
      path, comparison_markdown({k: e.report for k, e in evaluations.items()}, "compare.png"))
  return path


def train_and_compare(config, root: str) -> str:
  """Trains `config` as STD in <root>/std and as CSG in <root>/csg (same seed), evaluates both,
  and writes <root>/compare.md and compare.png; returns the .md path."""
  evaluations = {}
  for method in ("std", "csg"):
    run_config = config.copy_and_resolve_references()
    run_config.unlock()
    run_config.method = method
    workdir = fileio.join(root, method)
    results = loop.finished_run(workdir, run_config)
    if results is None:
      log(f"== {method.upper()} run in {workdir}")
      results = loop.train_and_evaluate(run_config, workdir)
    else:  # a rerun after an interruption keeps the runs that finished
      log(f"== {method.upper()} run in {workdir}: finished before, evaluating it")
    log(loop.summary_line(results, workdir))
    evaluations[method] = evaluate_workdir(workdir)
  path = write_comparison(root, evaluations)
  std, csg = evaluations["std"].report, evaluations["csg"].report
  log(f"STD: accuracy {std['accuracy']:.4f}, MIS {std['mis']:.4f} | CSG: accuracy "
      f"{csg['accuracy']:.4f}, MIS {csg['mis']:.4f}, density {csg['gate_density']:.4f}; "
      f"table in {path}")
  return path


def _filter_note(classes: explain.FilterClasses, k: int, class_names: Sequence[str]) -> str:
  """Filter k's classes, a line each: 'gate: 3 (1.00)', 'MI: 3'."""
  d = classes.describe(k, class_names)
  parts = []
  if "gate_class" in d:
    parts.append("gate: closed" if d["gate_class"] is None else
                 f"gate: {d['gate_class_name']} ({d['gate_value']:.2f})")
  if "mi_class" in d:
    parts.append(f"MI: {d['mi_class_name']}")
  return "\n".join(parts)


def _output_names(indices: Sequence[int], files: Sequence[str]) -> List[str]:
  """test_<index> for test images, the file's stem for files; made unique."""
  names: List[str] = []
  for stem in [f"test_{i}" for i in indices] + [
      os.path.splitext(fileio.basename(f))[0] for f in files]:
    name, n = stem, 1
    while name in names:
      n += 1
      name = f"{stem}-{n}"
    names.append(name)
  return names


def _write_explanations(run, workdir, out, classes, scan, indices, files, title,
                        num_filters) -> Dict[str, Any]:
  images = [explain.load_image_file(f, run.dataset.image_shape) for f in files]
  labels: List[Optional[int]] = [None] * len(files)
  if indices:
    test_images, test_labels = run.dataset.splits["test"].read(np.asarray(indices, np.int64))
    images, labels = list(test_images) + images, list(test_labels) + labels
  sources = [f"test[{i}]" for i in indices] + list(files)
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
      "workdir": fileio.absolute(workdir), "method": run.config.method, "step": run.step,
      "class_names": class_names,
      "top3_filters_of_predicted_class": summary, "images": records})
  return summary


def _write_atlas(run, workdir, out, classes, scan, title, filters_per_page) -> Dict[str, Any]:
  class_names = list(run.dataset.class_names)
  by = {"gate": "gate", "mi": "MI"}[classes.assigned_by]
  value = "{:.2f}" if by == "gate" else "{:.3f} nats"
  assigned, strength = classes.assigned, classes.strength
  hits = (scan.top_labels == assigned[:, None]).sum(axis=1)
  top_k = scan.top_labels.shape[1]
  order = explain.atlas_order(classes)
  pages = []
  for start in range(0, len(order), filters_per_page):
    filters = order[start:start + filters_per_page]
    name = f"atlas_{len(pages) + 1}.png"
    notes = [f"filter {k}\n" + ("gate: closed" if assigned[k] == explain.CLOSED else
                                f"{by}: {class_names[assigned[k]]} ({value.format(strength[k])})"
                                f"\npurity {hits[k]}/{top_k}") for k in filters]
    plots.atlas_page(fileio.join(out, name), explain.atlas_rows(run, scan, filters), notes,
                     assigned[filters], class_names,
                     title=f"{title}: filters {start + 1}-{start + len(filters)} of "
                           f"{len(order)} by {by} class,\neach with its top {top_k} test "
                           "images (label green: the filter's class)")
    pages.append(name)
  record = explain.atlas_record(scan, classes, class_names)
  fileio.write_json_atomic(fileio.join(out, "atlas.json"), {
      "workdir": fileio.absolute(workdir), "method": run.config.method, "step": run.step,
      "pages": pages, **record})
  return {"pages": len(pages), "mean_purity": record["mean_purity"]}


def explain_workdir(workdir: str, *, indices: Sequence[int] = (), files: Sequence[str] = (),
                    atlas: bool = False, out: Optional[str] = None, top_k: int = 8,
                    filters_per_page: int = 16, num_filters: int = 5) -> Dict[str, Any]:
  """Explains test images (by index) and image files with a trained run, and with `atlas`
  draws its filter atlas, under `out` (default <workdir>/explain).

  Writes one PNG per image and explanations.json; atlas_<page>.png and atlas.json. The MI
  classes need <workdir>/eval of the checkpoint: the run is evaluated first when it is missing.
  Returns what was written: the output folder, the share of top-3 filters serving the
  predicted class by gate and by MI, the atlas's pages and mean purities.
  """
  run = run_lib.load_run(workdir)
  size = len(run.dataset.splits["test"])
  bad = [i for i in indices if not 0 <= i < size]
  if bad:
    raise CSGError(f"test-split index {bad[0]} is out of range: the test split has {size} "
                   f"images (0 to {size - 1})")
  mi = explain.load_mi_matrix(workdir, run.step)
  if mi is None:
    log(f"{fileio.join(workdir, 'eval')} has no evaluation of step {run.step}: evaluating the "
        "run first (csg-evaluate), for the filters' MI classes")
    mi = evaluate_workdir(workdir, run=run).mi_matrix
  classes = explain.FilterClasses(run.state.host_gate(), mi)
  scan = explain.scan_split(run, "test", top_k=top_k)
  out = out or fileio.join(workdir, "explain")
  fileio.makedirs(out)
  title = (f"{run.config.method.upper()} {run.config.model.name} on {run.dataset.name}, "
           f"step {run.step}")
  written: Dict[str, Any] = {"out": out, "title": title}
  if indices or files:
    written["explanations"] = len(indices) + len(files)
    written["top3_filters_of_predicted_class"] = _write_explanations(
        run, workdir, out, classes, scan, indices, files, title, num_filters)
  if atlas:
    written["atlas"] = _write_atlas(run, workdir, out, classes, scan, title, filters_per_page)
  return written
