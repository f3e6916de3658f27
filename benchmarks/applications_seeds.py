r"""STD vs CSG on the shapes applications over several seeds: mean ± sd per run and the paired
CSG − STD difference with its 95 % Student-t interval, from the side-by-side reports that
benchmarks/applications_shapes.sh writes (one OUT folder per seed).

  for s in 0 1 2; do SEED=$s benchmarks/applications_shapes.sh workdirs/applications_shapes_s$s; done
  python benchmarks/applications_seeds.py workdirs/applications_shapes_s0 \
      workdirs/applications_shapes_s1 workdirs/applications_shapes_s2

Prints markdown tables (runs, localization, detection ROC-AUC per attack and ε); the last line
printed is a JSON object with every figure.
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from csg_jax.experiments import statistics  # pylint: disable=g-import-not-at-top,wrong-import-position

RUN_ROWS = (("test accuracy", ("accuracy",)), ("MIS", ("mis",)))
LOCALIZATION_ROWS = (("GradMap IoU", ("localization", "gradmap", "iou")),
                     ("GradMap AP@20", ("localization", "gradmap", "ap")),
                     ("CAM IoU", ("localization", "cam", "iou")),
                     ("CAM AP", ("localization", "cam", "ap")),
                     ("ActivMap IoU", ("localization", "activmap", "iou")),
                     ("ActivMap AP", ("localization", "activmap", "ap")))


def _get(report, path):
  for key in path:
    report = report[key]
  return report


def _detection_rows(std, csg):
  """[(label, getter)]: per attack row, the accuracy under attack and every detector's AUC that
  either run has (the gate's: CSG only)."""
  rows = []
  for row in csg["adversarial"]:
    attack, eps = row["attack"], row["epsilon"]
    pick = lambda r, a=attack, e=eps: next(x for x in r["adversarial"]
                                           if x["attack"] == a and x["epsilon"] == e)
    name = f"{attack.upper()} {eps * 255:.0f}/255"
    rows.append((f"{name} accuracy", lambda r, p=pick: p(r)["accuracy"]))
    detectors = list(row["detection"]) + [d for d in pick(std)["detection"]
                                          if d not in row["detection"]]
    for det in detectors:
      rows.append((f"{name} AUC {det.replace('_', ' ')}",
                   lambda r, p=pick, d=det: p(r)["detection"].get(d, {}).get("auc")))
  return rows


def _cell(stat):
  if stat is None:
    return "–"
  return f"{stat['mean']:.4f} ± {stat['sd']:.4f}" if stat["sd"] is not None else \
      f"{stat['mean']:.4f}"


def _diff_cell(diff):
  if diff is None or diff["low"] is None:
    return "–"
  return f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("outs", nargs="+", help="applications_shapes.sh OUT folders, one a seed")
  args = parser.parse_args(argv)
  reports = []
  for out in args.outs:
    path = os.path.join(out, "report", "applications_std_vs_csg.json")
    if not os.path.exists(path):
      print(f"error: {path} does not exist: run benchmarks/applications_shapes.sh {out} first",
            file=sys.stderr)
      return 2
    with open(path) as f:
      reports.append(json.load(f))

  table_rows = [(label, lambda r, p=path: _get(r, p)) for label, path in RUN_ROWS]
  table_rows += [(label, lambda r, p=path: _get(r, p)) for label, path in LOCALIZATION_ROWS
                 if all("localization" in x["STD"] and "localization" in x["CSG"]
                        for x in reports)]
  if all("adversarial" in x["STD"] and "adversarial" in x["CSG"] for x in reports):
    table_rows += _detection_rows(reports[0]["STD"], reports[0]["CSG"])
  result = {"seeds": len(reports), "outs": args.outs, "rows": {}}
  print(f"{len(reports)} seeds; mean ± sd over seeds; CSG − STD: mean of the per-seed "
        "differences [95 % Student-t interval]")
  print("")
  print("| | STD | CSG | CSG − STD |")
  print("|---|---|---|---|")
  for label, get in table_rows:
    values = {m: [get(r[m]) if _has(r[m], get) else None for r in reports]
              for m in ("STD", "CSG")}
    stats = {m: (statistics.mean_sd(v) if None not in v else None) for m, v in values.items()}
    diff = (statistics.paired_difference(values["CSG"], values["STD"])
            if stats["STD"] and stats["CSG"] else None)
    result["rows"][label] = {"std": values["STD"], "csg": values["CSG"], "difference": diff}
    print(f"| {label} | {_cell(stats['STD'])} | {_cell(stats['CSG'])} | {_diff_cell(diff)} |")
  print(json.dumps(result), flush=True)
  return 0


def _has(report, get):
  try:
    return get(report) is not None
  except (KeyError, StopIteration):
    return False


if __name__ == "__main__":
  sys.exit(main())
