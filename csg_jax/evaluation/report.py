"""After training: the evaluation report of one run and the STD-vs-CSG comparison.

`evaluate_workdir(W)` restores W's newest checkpoint, runs the test split through the STD path,
and writes W/eval/report.json (accuracy, MIS, density, per-class accuracy, filters per class),
W/eval/mi_matrix.npy and three figures. `compare(std_report, csg_report)` renders the paper's
Table 1 form.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import numpy as np

from csg_jax import fileio
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


def evaluate_workdir(workdir: str, *, split: str = "test") -> Evaluation:
  """Evaluates a trained run and writes its report and figures under <workdir>/eval."""
  run = run_lib.load_run(workdir)
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
