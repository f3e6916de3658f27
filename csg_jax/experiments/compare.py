"""Methods against each other: one run per method of one config (STD, CSG, PICNN, ...), trained
(or reused), evaluated and compared in the paper's Table 1 form; over several seeds, a set per
seed and their statistics (every pair of methods, paired by seed).

`train_and_compare(config, root, seeds, methods=...)` is what csg-compare runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from csg_jax import fileio
from csg_jax import methods
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
  title = " vs ".join(name.upper() for name in reports)
  lines = [f"# {title}: {any_report['model']} on {any_report['dataset']}", "",
           "| training | accuracy | MIS | L1 density | step | workdir |",
           "|---|---|---|---|---|---|"]
  for name, r in reports.items():
    lines.append(f"| {name.upper()} | {number(r['accuracy'])} | {number(r['mis'])} | "
                 f"{number(r['gate_density'])} | {r['step']} | `{workdirs[name]}` |")
  if configs:
    lines += ["", "Configs: " + "; ".join(f"{name.upper()}: {text}"
                                          for name, text in configs.items()) + "."]
  lines += ["", f"Test split, each network's own logits, {any_report['num_examples']} examples. "
            "MIS: mean over filters of the largest mutual information (nats) between a filter's "
            "pooled activation and a class indicator; higher is more class-specific. L1 "
            "density: of CSG's gate (not defined for the other methods).", "",
            f"![{title}]({figure})", ""]
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
      figure, {k.upper(): {"mi_matrix": e.mi_matrix, "gate": e.gate,
                           **_labels(methods.get(e.report["method"]))}
               for k, e in evaluations.items()},
      next(iter(evaluations.values())).class_names, mi_ceiling=ceiling)
  path = fileio.join(root, "compare.md")
  fileio.write_text_atomic(
      path, comparison_markdown({k: e.report for k, e in evaluations.items()}, "compare.png",
                                workdirs, configs))
  return path


def _labels(method) -> dict[str, str]:
  return {"matrix_label": method.matrix_label, "class_label": method.class_label,
          "value_label": method.value_label}


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


def method_configs(config, names: Sequence[str], std_config=None) -> dict[str, Any]:
  """{method: the config its run trains}: `std_config` (default std_baseline(config)) for std,
  `config` with method=<name> for the others."""
  std_config = std_config if std_config is not None else std_baseline(config)
  return {name: std_config if name == "std" else _with(config, method=name) for name in names}


def _train_methods(run_configs: Mapping[str, Any], root: str,
                   configs: Mapping[str, str] | None = None) -> dict[str, Evaluation]:
  """Trains (or reuses) each method's config in <root>/<method>, evaluates each, and writes
  <root>/compare.md and compare.png (naming `configs` when given)."""
  evaluations = {}
  for method, run_config in run_configs.items():
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
  log(" | ".join(f"{m.upper()}: accuracy {e.report['accuracy']:.4f}, MIS {e.report['mis']:.4f}"
                 + ("" if e.report["gate_density"] is None
                    else f", density {e.report['gate_density']:.4f}")
                 for m, e in evaluations.items()) + f"; table in {path}")
  return evaluations


def train_and_compare(config, root: str, seeds: Sequence[int] | None = None, *,
                      methods: Sequence[str] = ("std", "csg"), std_config=None,
                      configs: Mapping[str, str] | None = None) -> str:
  """Trains `config` once per method of `methods` (std: `std_config`, default
  std_baseline(config)) and compares them; returns the path of compare.md. `configs` says in
  compare.md what each side used.

  Without `seeds`: one run per method with config.seed in <root>/<method>. With seeds: a set per
  seed k in <root>/seed<k>/<method> (each with its own compare.md), and in <root> compare.md and
  compare.json with the per-seed rows, mean ± sd and the paired differences of every pair of
  methods (later − earlier in `methods`) with their confidence intervals.
  """
  if seeds is None:
    _train_methods(method_configs(config, methods, std_config), root, configs)
    return fileio.join(root, "compare.md")
  reports = {}
  for seed in seeds:
    log(f"=== seed {seed}")
    std_seed = None if std_config is None else _with(std_config, seed=seed)
    evaluations = _train_methods(method_configs(_with(config, seed=seed), methods, std_seed),
                                 fileio.join(root, f"seed{seed}"), configs)
    # Each run's folder relative to <root>, as compare.md and compare.json show it.
    reports[seed] = {method: {**e.report, "workdir": f"seed{seed}/{method}"}
                     for method, e in evaluations.items()}
  path = statistics.write_seed_comparison(root, reports)
  for pair, metrics in statistics.seed_summary(reports)["differences"].items():
    for metric, d in metrics.items():
      ci = "" if d["low"] is None else f", 95 % CI [{d['low']:+.4f}, {d['high']:+.4f}]"
      log(f"{pair.replace('-', ' − ').upper()} {statistics.LABELS[metric]} over {d['n']} "
          f"seeds: {d['mean']:+.4f}{ci}")
  log(f"table in {path}")
  return path
