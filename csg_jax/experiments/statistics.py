"""Statistics over seeds: mean ± sd per method and metric, and the paired CSG − STD difference
with its Student-t interval (what compare.json and compare.md hold for `csg-compare --seeds`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special

from csg_jax import fileio
from csg_jax.text import number

SEED_METRICS = ("accuracy", "mis", "gate_density")  # per run, as in report.json
CONFIDENCE = 0.95


def mean_sd(values: Sequence[float]) -> dict[str, float | None]:
  """Mean and sample standard deviation (n - 1 in the denominator; None below 2 values)."""
  x = np.asarray(values, np.float64)
  return {"n": len(x), "mean": float(x.mean()),
          "sd": float(x.std(ddof=1)) if len(x) > 1 else None}


def t_quantile(probability: float, df: int) -> float:
  """The `probability` quantile of Student's t with `df` degrees of freedom."""
  return float(special.stdtrit(df, probability))


def paired_difference(csg: Sequence[float], std: Sequence[float],
                      confidence: float = CONFIDENCE) -> dict[str, float | None]:
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


def seed_summary(reports: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
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


LABELS = {"accuracy": "accuracy", "mis": "MIS", "gate_density": "L1 density"}


def _mean_sd_text(stat: Mapping[str, Any] | None) -> str:
  if stat is None:
    return "–"
  return f"{stat['mean']:.4f}" + ("" if stat["sd"] is None else f" ± {stat['sd']:.4f}")


def seed_markdown(summary: Mapping[str, Any],
                  footer: str = "Per-seed tables and figures: seed<k>/compare.md.") -> str:
  """compare.md over several seeds: per-seed rows, mean ± sd, paired differences with CIs;
  `footer` says where each seed's details are."""
  columns = [(m, k) for m in ("std", "csg") for k in SEED_METRICS
             if not (m == "std" and k == "gate_density")]
  head = " | ".join(f"{m.upper()} {LABELS[k]}" for m, k in columns)
  n = len(summary["seeds"])
  lines = [f"# STD vs CSG over {n} seed(s): {summary['model']} on {summary['dataset']}", "",
           f"| seed | {head} |", "|---|" + "---|" * len(columns)]
  for run in summary["runs"]:
    lines.append(f"| {run['seed']} | "
                 + " | ".join(number(run[m][k]) for m, k in columns) + " |")
  lines.append("| mean ± sd | " + " | ".join(
      _mean_sd_text(summary["summary"][m].get(k)) for m, k in columns) + " |")
  lines += ["", "Paired CSG − STD difference per seed (same seed: same initialisation and data "
            f"order); interval: Student t with n − 1 = {n - 1} degrees of freedom.", "",
            "| metric | mean difference | sd | 95 % CI |", "|---|---|---|---|"]
  for k, d in summary["difference"].items():
    ci = "–" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
    sd = "–" if d["sd"] is None else f"{d['sd']:.4f}"
    lines.append(f"| {LABELS[k]} | {d['mean']:+.4f} | {sd} | {ci} |")
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


