"""STD against CSG: a pair of runs of one config, trained (or reused), evaluated and compared in
the paper's Table 1 form; over several seeds, a pair per seed and their statistics.

`train_and_compare(config, root, seeds)` is what csg-compare runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from csg_jax import fileio
from csg_jax.config import load_config_file
from csg_jax.evaluation import plots
from csg_jax.evaluation.report import Evaluation, evaluate_workdir
from csg_jax.experiments import statistics
from csg_jax.log import log
from csg_jax.runs import finished_run, summary_line
from csg_jax.text import number
from csg_jax.training import train_and_evaluate


def comparison_markdown(reports: Mapping[str, Mapping[str, Any]], figure: str,
                        workdirs: Mapping[str, str] | None = None,
                        configs: Mapping[str, str] | None = None) -> str:
  """The paper's Table 1 form (accuracy, MIS, L1 density per training) plus the figure.

  workdirs: each run's folder as the table shows it (relative to the table's folder); default:
  the workdir's name from its report. configs: which config each run was trained with.
  """
  workdirs = workdirs or {name: r["workdir"] for name, r in reports.items()}
  any_report = next(iter(reports.values()))
  lines = [f"# STD vs CSG: {any_report['model']} on {any_report['dataset']}", "",
           "| training | accuracy | MIS | L1 density | step | workdir |",
           "|---|---|---|---|---|---|"]
  for name, r in reports.items():
    lines.append(f"| {name.upper()} | {number(r['accuracy'])} | {number(r['mis'])} | "
                 f"{number(r['gate_density'])} | {r['step']} | `{workdirs[name]}` |")
  if configs:
    lines += ["", "Configs: " + "; ".join(f"{name.upper()}: {text}"
                                          for name, text in configs.items()) + "."]
  lines += ["", f"Test split, STD path, {any_report['num_examples']} examples. MIS: mean over "
            "filters of the largest mutual information (nats) between a filter's pooled "
            "activation and a class indicator; higher is more class-specific.", "",
            f"![STD vs CSG]({figure})", ""]
  return "\n".join(lines)


def write_comparison(root: str, evaluations: Mapping[str, Evaluation],
                     workdirs: Mapping[str, str] | None = None,
                     configs: Mapping[str, str] | None = None) -> str:
  """<root>/compare.md and <root>/compare.png from per-run evaluations; returns the .md path.
  workdirs: each run's folder relative to <root>, as compare.md shows it; configs: what each
  run was trained with, in words."""
  figure = fileio.join(root, "compare.png")
  ceiling = max(e.report["mi_ceiling"] for e in evaluations.values())
  plots.comparison_figure(
      figure, {k.upper(): {"mi_matrix": e.mi_matrix, "gate": e.gate}
               for k, e in evaluations.items()},
      next(iter(evaluations.values())).class_names, mi_ceiling=ceiling)
  path = fileio.join(root, "compare.md")
  fileio.write_text_atomic(
      path, comparison_markdown({k: e.report for k, e in evaluations.items()}, "compare.png",
                                workdirs, configs))
  return path


def std_baseline(config, overrides: Mapping[str, Any] | None = None):
  """The config of `config`'s STD run: the file config.std_config names (its released STD
  baseline, e.g. voc_part_resnet152_std) with the same command-line `overrides` applied
  ({dotted field: value}); without one, `config` itself. method = "std" either way."""
  if config.std_config:
    std = load_config_file(config.std_config)
    std.unlock()
    std.update_from_flattened_dict({k: v for k, v in (overrides or {}).items()
                                    if k not in ("method", "std_config")})
  else:
    std = config.copy_and_resolve_references()
    std.unlock()
  std.method = "std"
  return std


def _with(config, **fields):
  out = config.copy_and_resolve_references()
  out.unlock()
  out.update(fields)
  return out


def _train_pair(config, std_config, root: str,
                configs: Mapping[str, str] | None = None) -> dict[str, Evaluation]:
  """Trains (or reuses) `std_config` in <root>/std and `config` as CSG in <root>/csg, evaluates
  both, and writes <root>/compare.md and compare.png (naming `configs` when given)."""
  evaluations = {}
  for method in ("std", "csg"):
    run_config = std_config if method == "std" else _with(config, method="csg")
    workdir = fileio.join(root, method)
    results = finished_run(workdir, run_config)
    if results is None:
      log(f"== {method.upper()} run in {workdir}")
      results = train_and_evaluate(run_config, workdir)
    else:  # a rerun after an interruption keeps the runs that finished
      log(f"== {method.upper()} run in {workdir}: finished before, evaluating it")
    log(summary_line(results, workdir))
    evaluations[method] = evaluate_workdir(workdir)
  path = write_comparison(root, evaluations, {method: method for method in evaluations}, configs)
  std, csg = evaluations["std"].report, evaluations["csg"].report
  log(f"STD: accuracy {std['accuracy']:.4f}, MIS {std['mis']:.4f} | CSG: accuracy "
      f"{csg['accuracy']:.4f}, MIS {csg['mis']:.4f}, density {csg['gate_density']:.4f}; "
      f"table in {path}")
  return evaluations


def train_and_compare(config, root: str, seeds: Sequence[int] | None = None, *,
                      std_config=None, configs: Mapping[str, str] | None = None) -> str:
  """Trains `config` as CSG and `std_config` (default: std_baseline(config)) as STD and compares
  them; returns the path of compare.md. `configs` says in compare.md what each side used.

  Without `seeds`: one pair with config.seed in <root>/std and <root>/csg. With seeds: a pair
  per seed k in <root>/seed<k>/{std,csg} (each with its own compare.md), and in <root>
  compare.md and compare.json with the per-seed rows, mean ± sd and the paired CSG − STD
  differences with their confidence intervals.
  """
  std_config = std_config if std_config is not None else std_baseline(config)
  if seeds is None:
    _train_pair(config, std_config, root, configs)
    return fileio.join(root, "compare.md")
  reports = {}
  for seed in seeds:
    log(f"=== seed {seed}")
    pair = _train_pair(_with(config, seed=seed), _with(std_config, seed=seed),
                       fileio.join(root, f"seed{seed}"), configs)
    # Each run's folder relative to <root>, as compare.md and compare.json show it.
    reports[seed] = {method: {**e.report, "workdir": f"seed{seed}/{method}"}
                     for method, e in pair.items()}
  path = statistics.write_seed_comparison(root, reports)
  for metric, d in statistics.seed_summary(reports)["difference"].items():
    ci = "" if d["low"] is None else f", 95 % CI [{d['low']:+.4f}, {d['high']:+.4f}]"
    log(f"CSG − STD {statistics.LABELS[metric]} over {d['n']} seeds: {d['mean']:+.4f}{ci}")
  log(f"table in {path}")
  return path


