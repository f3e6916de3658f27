"""Statistics over seeds: mean ± sd per method and metric, and the paired difference of every
pair of methods with its Student-t interval (what compare.json and compare.md hold for
`csg-compare --seeds`).
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
  """Mean of the per-seed differences csg - std (any method against another) with a Student-t
  confidence interval.

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


def method_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
  """(later, earlier) for every pair of methods in `names`' order: what compare differences.
  For std, csg, picnn: csg − std, picnn − std, picnn − csg."""
  return [(b, a) for i, a in enumerate(names) for b in names[i + 1:]]


def pair_name(pair: tuple[str, str]) -> str:
  return f"{pair[0]}-{pair[1]}"


def seed_summary(reports: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
  """What compare.json holds: {seed: {method: report}} (every seed the same methods, in the
  order compared) -> per-seed rows, mean ± sd per method and metric, and for every pair of
  methods (later − earlier, `method_pairs`) the paired difference of each metric both have,
  under "differences" keyed "csg-std", "picnn-std", "picnn-csg"."""
  seeds = list(reports)
  names = list(reports[seeds[0]])
  first = reports[seeds[0]][names[-1]]
  runs = [{"seed": s, **{m: {k: reports[s][m][k] for k in SEED_METRICS + ("step", "workdir")}
                         for m in names}} for s in seeds]
  values = {m: {k: [r[m][k] for r in runs] for k in SEED_METRICS} for m in names}
  summary = {m: {k: mean_sd(v) for k, v in per.items() if None not in v}
             for m, per in values.items()}
  differences = {pair_name((b, a)): {
      k: paired_difference(values[b][k], values[a][k]) for k in SEED_METRICS
      if None not in values[a][k] + values[b][k]} for b, a in method_pairs(names)}
  return {"model": first["model"], "dataset": first["dataset"],
          "num_examples": first["num_examples"], "seeds": seeds, "methods": names,
          "runs": runs, "summary": summary, "differences": differences}


LABELS = {"accuracy": "accuracy", "mis": "MIS", "gate_density": "L1 density"}


def _mean_sd_text(stat: Mapping[str, Any] | None) -> str:
  if stat is None:
    return "–"
  return f"{stat['mean']:.4f}" + ("" if stat["sd"] is None else f" ± {stat['sd']:.4f}")


def seed_markdown(summary: Mapping[str, Any],
                  footer: str = "Per-seed tables and figures: seed<k>/compare.md.") -> str:
  """compare.md over several seeds: per-seed rows, mean ± sd, paired differences with CIs;
  `footer` says where each seed's details are."""
  names = summary["methods"]
  columns = [(m, k) for m in names for k in SEED_METRICS
             if any(run[m][k] is not None for run in summary["runs"])]
  head = " | ".join(f"{m.upper()} {LABELS[k]}" for m, k in columns)
  n = len(summary["seeds"])
  lines = [f"# {' vs '.join(m.upper() for m in names)} over {n} seed(s): {summary['model']} "
           f"on {summary['dataset']}", "",
           f"| seed | {head} |", "|---|" + "---|" * len(columns)]
  for run in summary["runs"]:
    lines.append(f"| {run['seed']} | "
                 + " | ".join(number(run[m][k]) for m, k in columns) + " |")
  lines.append("| mean ± sd | " + " | ".join(
      _mean_sd_text(summary["summary"][m].get(k)) for m, k in columns) + " |")
  lines += ["", "Paired differences per seed (same seed: same initialisation and data order); "
            f"interval: Student t with n − 1 = {n - 1} degrees of freedom. An interval that "
            "holds 0 is not a difference these seeds can tell from noise.", "",
            "| difference | metric | mean | sd | 95 % CI |", "|---|---|---|---|---|"]
  for pair, metrics in summary["differences"].items():
    label = " − ".join(m.upper() for m in pair.split("-"))
    for k, d in metrics.items():
      ci = "–" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
      sd = "–" if d["sd"] is None else f"{d['sd']:.4f}"
      lines.append(f"| {label} | {LABELS[k]} | {d['mean']:+.4f} | {sd} | {ci} |")
  lines += ["", f"Test split, {summary['num_examples']} examples (each network's own logits); "
            f"sd: sample standard deviation over seeds. {footer}", ""]
  return "\n".join(lines)


def write_seed_comparison(root: str, reports: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> str:
  """<root>/compare.json and <root>/compare.md from {seed: {method: report}};
  returns the .md path."""
  summary = seed_summary(reports)
  fileio.write_json_atomic(fileio.join(root, "compare.json"), summary)
  path = fileio.join(root, "compare.md")
  fileio.write_text_atomic(path, seed_markdown(summary))
  return path


