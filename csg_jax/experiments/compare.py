"""STD against CSG: a pair of runs of one config, trained (or reused), evaluated and compared in
the paper's Table 1 form; over several seeds, a pair per seed and their statistics.

`train_and_compare(config, root, seeds)` is what csg-compare runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from csg_jax import fileio
from csg_jax.evaluation import plots
from csg_jax.evaluation.report import Evaluation, evaluate_workdir
from csg_jax.experiments import statistics
from csg_jax.log import log
from csg_jax.runs import finished_run, summary_line
from csg_jax.text import number
from csg_jax.training import train_and_evaluate


def comparison_markdown(reports: Mapping[str, Mapping[str, Any]], figure: str) -> str:
  """The paper's Table 1 form (accuracy, MIS, L1 density per training) plus the figure."""
  any_report = next(iter(reports.values()))
  lines = [f"# STD vs CSG: {any_report['model']} on {any_report['dataset']}", "",
           "| training | accuracy | MIS | L1 density | step | workdir |",
           "|---|---|---|---|---|---|"]
  for name, r in reports.items():
    lines.append(f"| {name.upper()} | {number(r['accuracy'])} | {number(r['mis'])} | "
                 f"{number(r['gate_density'])} | {r['step']} | `{r['workdir']}` |")
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


def _train_pair(config, root: str) -> dict[str, Evaluation]:
  """Trains (or reuses) `config` as STD in <root>/std and as CSG in <root>/csg, evaluates both,
  and writes <root>/compare.md and compare.png."""
  evaluations = {}
  for method in ("std", "csg"):
    run_config = config.copy_and_resolve_references()
    run_config.unlock()
    run_config.method = method
    workdir = fileio.join(root, method)
    results = finished_run(workdir, run_config)
    if results is None:
      log(f"== {method.upper()} run in {workdir}")
      results = train_and_evaluate(run_config, workdir)
    else:  # a rerun after an interruption keeps the runs that finished
      log(f"== {method.upper()} run in {workdir}: finished before, evaluating it")
    log(summary_line(results, workdir))
    evaluations[method] = evaluate_workdir(workdir)
  path = write_comparison(root, evaluations)
  std, csg = evaluations["std"].report, evaluations["csg"].report
  log(f"STD: accuracy {std['accuracy']:.4f}, MIS {std['mis']:.4f} | CSG: accuracy "
      f"{csg['accuracy']:.4f}, MIS {csg['mis']:.4f}, density {csg['gate_density']:.4f}; "
      f"table in {path}")
  return evaluations


def train_and_compare(config, root: str, seeds: Sequence[int] | None = None) -> str:
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
  path = statistics.write_seed_comparison(root, reports)
  for metric, d in statistics.seed_summary(reports)["difference"].items():
    ci = "" if d["low"] is None else f", 95 % CI [{d['low']:+.4f}, {d['high']:+.4f}]"
    log(f"CSG − STD {statistics.LABELS[metric]} over {d['n']} seeds: {d['mean']:+.4f}{ci}")
  log(f"table in {path}")
  return path


