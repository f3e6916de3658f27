"""After training: the evaluation report of one run, the STD-vs-CSG comparison, and a run's
explanations and filter atlas.

`evaluate_workdir(W)` restores W's newest checkpoint, runs the test split through the STD path,
and writes W/eval/report.json (accuracy, MIS, density, per-class accuracy, filters per class),
W/eval/mi_matrix.npy and three figures. `comparison_markdown` renders the paper's Table 1 form;
over several seeds, `seed_summary` gives mean ± sd per method and the paired CSG − STD
differences with their Student-t intervals (`train_and_compare(config, root, seeds)`).
`explain_workdir(W, ...)` writes per-image explanations and the filter atlas (computed by
explain.py) to W/explain.
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
  path = {name: fileio.join(workdir, rel) for name, rel in figures.items()}
  plots.matrix_figure(path["mi_matrix"], mi, names, vmax=ceiling, colorbar_label="nats",
                      title=f"{title}: MI(filter; class), MIS {summary['mis']:.3f}")
  plots.max_mi_histogram(path["max_mi_histogram"], {run.config.method.upper(): mi.max(0)},
                         mi_ceiling=ceiling, title=title)
  if gate is not None:
    plots.matrix_figure(path["gate"], gate, names, vmax=1.0, colorbar_label="gate value",
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


def _train_pair(config, root: str) -> Dict[str, Evaluation]:
  """Trains (or reuses) `config` as STD in <root>/std and as CSG in <root>/csg, evaluates both,
  and writes <root>/compare.md and compare.png."""
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
  return evaluations


def train_and_compare(config, root: str, seeds: Optional[Sequence[int]] = None) -> str:
  """Trains `config` as STD and as CSG and compares them; returns the path of compare.md.

  Without `seeds`: one pair with config.seed in <root>/std and <root>/csg. With seeds: a pair
  per seed k in <root>/seed<k>/{std,csg} (each with its own compare.md), and in <root>
  compare.md and compare.json with the per-seed rows, mean ± sd and the paired CSG − STD
  differences with their confidence intervals.
  """
  if seeds is None:
    _train_pair(config, root)
    return fileio.join(root, "compare.md")
  reports = {}
  for seed in seeds:
    seed_config = config.copy_and_resolve_references()
    seed_config.unlock()
    seed_config.seed = seed
    log(f"=== seed {seed}")
    pair = _train_pair(seed_config, fileio.join(root, f"seed{seed}"))
    reports[seed] = {method: e.report for method, e in pair.items()}
  path = write_seed_comparison(root, reports)
  for metric, d in seed_summary(reports)["difference"].items():
    ci = "" if d["low"] is None else f", 95 % CI [{d['low']:+.4f}, {d['high']:+.4f}]"
    log(f"CSG − STD {_LABELS[metric]} over {d['n']} seeds: {d['mean']:+.4f}{ci}")
  log(f"table in {path}")
  return path


# ---------------------------------------------------------------------------------------------
# Several seeds: mean ± sd per method and the paired CSG − STD difference.
# ---------------------------------------------------------------------------------------------

SEED_METRICS = ("accuracy", "mis", "gate_density")  # per run, as in report.json
CONFIDENCE = 0.95


def mean_sd(values: Sequence[float]) -> Dict[str, Optional[float]]:
  """Mean and sample standard deviation (n - 1 in the denominator; None below 2 values)."""
  x = np.asarray(values, np.float64)
  return {"n": len(x), "mean": float(x.mean()),
          "sd": float(x.std(ddof=1)) if len(x) > 1 else None}


def t_quantile(probability: float, df: int) -> float:
  """The `probability` quantile of Student's t with `df` degrees of freedom."""
  from scipy import special  # pylint: disable=g-import-not-at-top  (scikit-learn's dependency)
  return float(special.stdtrit(df, probability))


def paired_difference(csg: Sequence[float], std: Sequence[float],
                      confidence: float = CONFIDENCE) -> Dict[str, Optional[float]]:
  """Mean of the per-seed differences csg - std with a Student-t confidence interval.

  Pairing by seed removes what the two runs of a seed share (initialisation, data order), so the
  interval is that of the differences, with n - 1 degrees of freedom; None below 2 seeds.
  """
  diff = np.asarray(csg, np.float64) - np.asarray(std, np.float64)
  out = {**mean_sd(diff), "confidence": confidence, "t": None, "low": None, "high": None}
  if out["sd"] is not None:
    out["t"] = t_quantile(0.5 + confidence / 2, len(diff) - 1)
    half = out["t"] * out["sd"] / float(np.sqrt(len(diff)))
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
  return out


def seed_summary(reports: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> Dict[str, Any]:
  """What compare.json holds: {seed: {"std": report, "csg": report}} -> per-seed rows,
  mean ± sd per method and metric, and the paired CSG − STD difference per metric both have."""
  seeds = list(reports)
  first = reports[seeds[0]]["csg"]
  runs = [{"seed": s, **{m: {k: reports[s][m][k] for k in SEED_METRICS + ("step", "workdir")}
                         for m in ("std", "csg")}} for s in seeds]
  values = {m: {k: [r[m][k] for r in runs] for k in SEED_METRICS} for m in ("std", "csg")}
  summary = {m: {k: mean_sd(v) for k, v in per.items() if None not in v}
             for m, per in values.items()}
  difference = {k: paired_difference(values["csg"][k], values["std"][k]) for k in SEED_METRICS
                if None not in values["std"][k] + values["csg"][k]}
  return {"model": first["model"], "dataset": first["dataset"],
          "num_examples": first["num_examples"], "seeds": seeds, "runs": runs,
          "summary": summary, "difference": difference}


_LABELS = {"accuracy": "accuracy", "mis": "MIS", "gate_density": "L1 density"}


def _mean_sd_text(stat: Optional[Mapping[str, Any]]) -> str:
  if stat is None:
    return "–"
  return f"{stat['mean']:.4f}" + ("" if stat["sd"] is None else f" ± {stat['sd']:.4f}")


def seed_markdown(summary: Mapping[str, Any],
                  footer: str = "Per-seed tables and figures: seed<k>/compare.md.") -> str:
  """compare.md over several seeds: per-seed rows, mean ± sd, paired differences with CIs;
  `footer` says where each seed's details are."""
  columns = [(m, k) for m in ("std", "csg") for k in SEED_METRICS
             if not (m == "std" and k == "gate_density")]
  head = " | ".join(f"{m.upper()} {_LABELS[k]}" for m, k in columns)
  n = len(summary["seeds"])
  lines = [f"# STD vs CSG over {n} seed(s): {summary['model']} on {summary['dataset']}", "",
           f"| seed | {head} |", "|---|" + "---|" * len(columns)]
  for run in summary["runs"]:
    lines.append(f"| {run['seed']} | "
                 + " | ".join(_fmt(run[m][k]) for m, k in columns) + " |")
  lines.append("| mean ± sd | " + " | ".join(
      _mean_sd_text(summary["summary"][m].get(k)) for m, k in columns) + " |")
  lines += ["", "Paired CSG − STD difference per seed (same seed: same initialisation and data "
            f"order); interval: Student t with n − 1 = {n - 1} degrees of freedom.", "",
            "| metric | mean difference | sd | 95 % CI |", "|---|---|---|---|"]
  for k, d in summary["difference"].items():
    ci = "–" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
    sd = "–" if d["sd"] is None else f"{d['sd']:.4f}"
    lines.append(f"| {_LABELS[k]} | {d['mean']:+.4f} | {sd} | {ci} |")
  lines += ["", f"Test split, STD path, {summary['num_examples']} examples; sd: sample standard "
            f"deviation over seeds. {footer}", ""]
  return "\n".join(lines)


def write_seed_comparison(root: str, reports: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> str:
  """<root>/compare.json and <root>/compare.md from {seed: {"std": report, "csg": report}};
  returns the .md path."""
  summary = seed_summary(reports)
  fileio.write_json_atomic(fileio.join(root, "compare.json"), summary)
  path = fileio.join(root, "compare.md")
  fileio.write_text_atomic(path, seed_markdown(summary))
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


def _atlas_pages(run, classes, scan, title, filters, filters_per_page):
  """(rows, notes, assigned classes, title) of each page of the atlas of `filters` (in atlas
  order): a note per filter with its class, value and purity."""
  class_names = list(run.dataset.class_names)
  by = {"gate": "gate", "mi": "MI"}[classes.assigned_by]
  value = "{:.2f}" if by == "gate" else "{:.3f} nats"
  assigned, strength = classes.assigned, classes.strength
  hits = (scan.top_labels == assigned[:, None]).sum(axis=1)
  top_k = scan.top_labels.shape[1]
  shown = "" if len(filters) == len(assigned) else f" shown (of {len(assigned)})"
  for start in range(0, len(filters), filters_per_page):
    page = filters[start:start + filters_per_page]
    notes = [f"filter {k}\n" + ("gate: closed" if assigned[k] == explain.CLOSED else
                                f"{by}: {class_names[assigned[k]]} ({value.format(strength[k])})"
                                f"\npurity {hits[k]}/{top_k}") for k in page]
    yield (explain.atlas_rows(run, scan, page), notes, assigned[page],
           f"{title}: filters {start + 1}-{start + len(page)} of {len(filters)}{shown} by "
           f"{by} class,\neach with its top {top_k} {scan.split} images (label green: the "
           "filter's class)")


def _write_atlas(run, workdir, out, classes, scan, title, filters_per_page) -> Dict[str, Any]:
  class_names = list(run.dataset.class_names)
  pages = []
  for rows, notes, assigned, page_title in _atlas_pages(
      run, classes, scan, title, explain.atlas_order(classes), filters_per_page):
    name = f"atlas_{len(pages) + 1}.png"
    plots.atlas_page(fileio.join(out, name), rows, notes, assigned, class_names,
                     title=page_title)
    pages.append(name)
  record = explain.atlas_record(scan, classes, class_names)
  fileio.write_json_atomic(fileio.join(out, "atlas.json"), {
      "workdir": fileio.absolute(workdir), "method": run.config.method, "step": run.step,
      "pages": pages, **record})
  return {"pages": len(pages), "mean_purity": record["mean_purity"]}


def final_figures_to_tensorboard(run: run_lib.TrainedRun, writer, mi_matrix: np.ndarray, *,
                                 atlas_filters: int, filters_per_page: int = 16) -> None:
  """At the end of training, csg-evaluate's histogram and csg-explain's atlas as TensorBoard
  images at the run's step: `test/max_mi_histogram`, and `atlas/page_<n>` for `atlas_filters`
  filters (every class's strongest first; 0: no atlas, which saves one pass over the test
  split). Called by process 0 only: a run of several processes gets no atlas here."""
  names = list(run.dataset.class_names)
  ceiling = mis_lib.mi_ceiling(np.asarray(run.dataset.splits["test"].labels), len(names))
  title = f"{run.config.method.upper()} {run.config.model.name} on {run.dataset.name}"
  writer.write_image(run.step, "test/max_mi_histogram", plots.max_mi_histogram_image(
      {run.config.method.upper(): mi_matrix.max(0)}, mi_ceiling=ceiling,
      title=f"{title}, step {run.step}"))
  if atlas_filters <= 0:
    return
  if jax.process_count() > 1:  # only process 0 writes, and the atlas's passes are one process's
    log("TensorBoard atlas left out: a run of several processes draws it afterwards with "
        "`csg-explain --atlas`")
    return
  classes = explain.FilterClasses(run.state.host_gate(), mi_matrix)
  scan = explain.scan_split(run, "test")
  filters = explain.atlas_selection(classes, atlas_filters)
  for page, (rows, notes, assigned, page_title) in enumerate(_atlas_pages(
      run, classes, scan, f"{title}, step {run.step}", filters, filters_per_page), 1):
    writer.write_image(run.step, f"atlas/page_{page}",
                       plots.atlas_image(rows, notes, assigned, names, title=page_title))


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
